"""The preemption signal in a rank: real signals to this process, a real Agent whose outgoing queue is read.

A signal before the session is open is remembered and sent by attach(); one during a stop
changes nothing; CLIPFLEET_PREEMPT_SIGNAL is checked (a bad one is reported at attach()).
"""

import os
import queue
import signal
import subprocess
import sys
import time

import pytest

from clipfleet_worker.agent import Agent, WorkerEnv
from clipfleet_worker.errors import ConfigError
from clipfleet_worker.lifecycle import STACK_DUMP_SIGNAL, request_preemption
from clipfleet_worker.preempt import PreemptionWatch, preempt_signal


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _agent() -> Agent:
    # No call is made: the channel is only created, and what the rank would send stays in its queue.
    return Agent(WorkerEnv(address="127.0.0.1:9", token="t", job_id="j-1", stage="main", attempt=1, rank=1))


def _sent(agent: Agent, wait: float = 5.0) -> list:
    """The PreemptRequested messages the rank queued, waiting up to `wait` s for the first (a thread sends them)."""
    out = []
    try:
        out.append(agent._out.get(timeout=wait))
        while True:
            out.append(agent._out.get(timeout=0.2))
    except queue.Empty:
        pass
    return [m for m in out if m is not None and m.WhichOneof("body") == "preempt_requested"]


def test_signal_names():
    assert preempt_signal("") == signal.SIGUSR1
    assert preempt_signal("usr1") == signal.SIGUSR1
    assert preempt_signal("SIGHUP") == signal.SIGHUP
    assert STACK_DUMP_SIGNAL == signal.SIGUSR2
    for bad in ("USR2", "TERM", "KILL", "STOP", "10", "nonsense"):
        with pytest.raises(ConfigError, match=r"^CLIPFLEET_PREEMPT_SIGNAL: expected one of USR1, HUP"):
            preempt_signal(bad)


def test_a_signal_before_the_session_is_sent_once_attached(restore_handlers):
    watch = PreemptionWatch({})
    watch.install()
    os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs before os.kill returns (main thread)
    assert watch.pending.startswith("SIGUSR1 on rank ?")
    agent = _agent()
    watch.attach(1, lambda reason: request_preemption(agent, reason))
    [msg] = _sent(agent)
    assert msg.preempt_requested.reason.startswith("SIGUSR1 on rank ?")
    os.kill(os.getpid(), signal.SIGUSR1)
    [again] = _sent(agent)
    assert again.preempt_requested.reason.startswith("SIGUSR1 on rank 1 (")


def test_nothing_is_sent_while_stopping_or_fenced(restore_handlers):
    watch = PreemptionWatch({"CLIPFLEET_PREEMPT_SIGNAL": "HUP"})
    watch.install()
    agent = _agent()
    watch.attach(0, lambda reason: request_preemption(agent, reason))
    agent.commands.stop_at = 7
    os.kill(os.getpid(), signal.SIGHUP)
    assert _sent(agent, wait=1.0) == []
    agent.commands.stop_at = None
    agent.commands.fenced = "attempt over"
    os.kill(os.getpid(), signal.SIGHUP)
    assert _sent(agent, wait=1.0) == []
    agent.commands.fenced = None
    os.kill(os.getpid(), signal.SIGHUP)
    [msg] = _sent(agent)
    assert msg.preempt_requested.reason.startswith("SIGHUP on rank 0 (")


def test_a_bad_signal_name_installs_nothing_and_is_reported_at_attach(restore_handlers):
    before = signal.getsignal(signal.SIGUSR1)
    watch = PreemptionWatch({"CLIPFLEET_PREEMPT_SIGNAL": "TERM"})
    watch.install()
    assert signal.getsignal(signal.SIGUSR1) is before
    with pytest.raises(ConfigError, match="CLIPFLEET_PREEMPT_SIGNAL: expected one of"):
        watch.attach(0, lambda reason: None)


def test_a_signal_inside_the_lock_the_request_needs_does_not_deadlock():
    # The handler interrupts the main thread wherever it is, here inside the Commands lock (as the training
    # loop's step check is); run in a child so that a regression fails on the timeout instead of hanging pytest.
    script = """
import os, signal
from clipfleet_worker.agent import Agent, WorkerEnv
from clipfleet_worker.lifecycle import request_preemption
from clipfleet_worker.preempt import PreemptionWatch
watch = PreemptionWatch({})
watch.install()
agent = Agent(WorkerEnv(address="127.0.0.1:9", token="t", job_id="j-1", stage="main", attempt=1, rank=0))
watch.attach(0, lambda reason: request_preemption(agent, reason))
with agent.commands.lock:
    os.kill(os.getpid(), signal.SIGUSR1)
msg = agent._out.get(timeout=10)
print(msg.WhichOneof("body"))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "preempt_requested"


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (Linux: the SigCgt mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signum - 1)))


def test_a_rank_catches_the_signal_before_its_heavy_imports(tmp_path):
    # `python -m clipfleet_worker run` imports torch for seconds before it reads its environment; the handler
    # must be there first. Signalled as soon as it is: the rank lives on (here to exit 1 on its missing
    # environment), and it had not yet reached "phase started" (printed after those imports).
    out = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFLEET_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(out, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "clipfleet_worker", "run"], cwd=root, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not _catches(proc.pid, signal.SIGUSR1) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # polling /proc: nothing to wait on across processes
        early = out.read_text()
        os.kill(proc.pid, signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    assert "phase started" not in early, "the handler came only after the heavy imports"
    assert proc.returncode == 1, (proc.returncode, err)
    assert "SIGUSR1: preemption noted" in err
    assert "missing environment CLIPFLEET_ADDR" in err


def test_a_second_sigterm_inside_the_commands_lock_exits_at_once():
    # The SIGTERM handler (a stop under way: exit 143) used to take the Commands lock the interrupted
    # frame may hold, as the training loop's step check does: the rank then hung instead of exiting.
    script = """
import os, signal
from clipfleet_worker.agent import Agent, WorkerEnv
from clipfleet_worker.lifecycle import stop_gang_on_sigterm
agent = Agent(WorkerEnv(address="127.0.0.1:9", token="t", job_id="j-1", stage="main", attempt=1, rank=0))
stop_gang_on_sigterm(agent, 0)
agent.commands.stop_at = 7
with agent.commands.lock:
    os.kill(os.getpid(), signal.SIGTERM)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 143, r.stderr
