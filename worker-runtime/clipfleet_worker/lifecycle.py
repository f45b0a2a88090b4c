"""What every rank process shares, whether it runs a built-in task or the user's own script.

A rank dies with the process that launched it, dumps every thread's stack
on SIGUSR2 (the orchestrator asks before killing a hung gang), turns SIGTERM
into a request for a graceful stop of the whole gang and the preemption
signal (preempt.py) into a request for a preemption (checkpoint at one
step, exit, restart), and reports a Python
error with its traceback and a fingerprint, so that the orchestrator can
tell the same bug at the same place twice from bad luck. No torch here:
`import clipfleet_worker` stays cheap for scripts that only use the API.
"""

from __future__ import annotations

import ctypes
import faulthandler
import hashlib
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .agent import Agent
from .errors import ClipfleetWorkerError, ConfigError
from .gen.clipfleet.v1 import worker_pb2 as pb

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the launching process dies (no orphans pinning devices)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


# SIGUSR1 is the preemption signal (preempt.py: Slurm's --signal, scancel --signal=USR1); stacks moved to SIGUSR2.
STACK_DUMP_SIGNAL = signal.SIGUSR2
def dump_stacks_on_sigusr2() -> None:
    """SIGUSR2 prints every thread's stack on stderr: the orchestrator asks for it before killing a hung gang."""
    faulthandler.enable()
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)


def request_preemption(agent: Agent, reason: str) -> None:
    """Asks the orchestrator for a preemption (PreemptionWatch calls it from its thread, never from the handler)."""
    c = agent.commands
    with c.lock:
        stopping = c.fenced is not None or c.stop_at is not None
    if stopping:
        print("clipfleet worker: preemption signal while already stopping: nothing more to do", file=sys.stderr, flush=True)
        return
    print(f"clipfleet worker: {reason}: asking the orchestrator to checkpoint and stop the gang (preemption)", file=sys.stderr, flush=True)
    agent.send(pb.WorkerMessage(preempt_requested=pb.PreemptRequested(reason=reason)))


def stop_gang_on_sigterm(agent: Agent, rank: int) -> None:
    """SIGTERM asks the orchestrator to stop the gang; installed once the session is open.

    The orchestrator answers a StopRequested with a StopAt for every rank (a
    checkpoint first when the spec allows), so one rank's SIGTERM does not
    tear the gang down mid-step. A second SIGTERM while a stop is already
    under way exits at once.
    """

    def on_sigterm(signum: int, frame: Any) -> None:
        c = agent.commands
        # Read without the lock: the handler may interrupt the very frame that holds it (the step's command check).
        stopping = c.fenced is not None or c.stop_at is not None
        if stopping:
            raise SystemExit(143)
        print("clipfleet worker: SIGTERM: asking the orchestrator to checkpoint and stop the gang", file=sys.stderr, flush=True)
        agent.send(pb.WorkerMessage(stop_requested=pb.StopRequested(reason="SIGTERM on rank %d" % rank)))

    signal.signal(signal.SIGTERM, on_sigterm)


def failure_fingerprint(err: BaseException) -> str:
    """Type, message and the frames of the exception: the same bug at the same place gives the same print."""
    frames = traceback.extract_tb(err.__traceback__)
    parts = [type(err).__qualname__, str(err)] + [f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in frames]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# What torch.distributed raises in a rank whose peer died or vanished: the failure is the
# peer's, not this rank's code (and must not count as a repeated user error).
_COLLECTIVE_MARKERS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "NCCL", "Broken pipe", "ProcessGroup", "Socket Timeout", "timed out after")


def is_collective_failure(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}"
    return isinstance(err, RuntimeError) and any(m in text for m in _COLLECTIVE_MARKERS)


def failure_kind(err: BaseException) -> str:
    """WorkerFailure.kind of an error that ends a rank: ours name themselves; a peer's death is "collective"."""
    if isinstance(err, ClipfleetWorkerError):
        return err.failure_kind
    return "collective" if is_collective_failure(err) else "exception"


# The orchestrator keeps a failure's message and traceback at most this long (domain/limits.ts);
# a real exception can carry megabytes (str() of a huge tensor), so they are cut here first.
MAX_FAILURE_MESSAGE_BYTES = 4 * 1024
MAX_TRACEBACK_BYTES = 16 * 1024


def _head(text: str, limit: int) -> str:
    """The first `limit` bytes of `text` as UTF-8, marked when cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 15].decode("utf-8", "ignore") + " [...truncated]"


def _tail(text: str, limit: int) -> str:
    """The last `limit` bytes of `text` as UTF-8 (a traceback's end names the error), marked when cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return "[...truncated] " + data[len(data) - (limit - 15):].decode("utf-8", "ignore")


def report_failure(agent: Agent, err: BaseException) -> None:
    """Prints the traceback to stderr (the rank's log) and sends it to the orchestrator as a WorkerFailure."""
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    # The step being run when it failed (the agent knows the last completed one).
    failed_step = agent._step + 1 if agent._phase == "training" else agent._step
    sys.stderr.write(tb)
    sys.stderr.flush()
    agent.send(
        pb.WorkerMessage(
            failure=pb.WorkerFailure(
                kind=failure_kind(err),
                message=_head(f"{type(err).__name__}: {err}", MAX_FAILURE_MESSAGE_BYTES),
                traceback=_tail(tb, MAX_TRACEBACK_BYTES),
                step=failed_step,
                fingerprint=failure_fingerprint(err),
            )
        )
    )


class _Hook:
    """One CLIPFLEET_FAULT hook: a kind, the step (or shard count) it fires at, and a gate file."""

    def __init__(self, kind: str, step: int, gate_file: str) -> None:
        self.kind = kind
        self.step = step
        self.gate_file = gate_file


def _wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.05)  # a test hook polling a file it is told about; no event to wait on across processes


class FaultInjection:
    """Test hooks from CLIPFLEET_FAULT, e.g. "raise@5" or "raise@5:rank=1" or "hang@3:rank=0:attempt=1".

    Kinds: raise (a RuntimeError in the training loop, as a user bug would),
    nan (a NaN loss), hang (block the training thread; heartbeats go on, as in a
    stuck collective), gate (`gate@5:file=/tmp/go`: wait before step 5 until the
    file exists, so a test acts while a job is surely still training, whatever
    the machine's load), commitgate (`commitgate@2:file=/tmp/go`, task recaption:
    wait after the rank's 2nd output shard is renamed into place, before it is
    checked and reported; a recaption "step" is a captioned batch). Several hooks
    are separated by commas ("gate@40:file=/tmp/a:attempt=1,gate@55:file=/tmp/b:attempt=2"),
    so a test can hold the first attempt and the restarted one.
    Used by the fault-injection tests; inert when unset.
    Built-in tasks fire it before a step's update, the script API when the
    script reports the step.
    """

    def __init__(self, spec: str, rank: int, attempt: int) -> None:
        self.hooks: list[_Hook] = []
        for part in filter(None, spec.split(",")):
            head, *opts = part.split(":")
            kind, _, step = head.partition("@")
            conds = dict(o.split("=", 1) for o in opts if "=" in o)
            if kind not in ("raise", "nan", "hang", "gate", "commitgate"):
                raise ConfigError(f"CLIPFLEET_FAULT: unknown kind {kind!r} (raise, nan, hang, gate, commitgate)")
            if kind in ("gate", "commitgate") and not conds.get("file"):
                raise ConfigError("CLIPFLEET_FAULT: gate needs file=PATH (the step waits until it exists)")
            if "rank" in conds and int(conds["rank"]) != rank:
                continue
            if "attempt" in conds and int(conds["attempt"]) != attempt:
                continue
            self.hooks.append(_Hook(kind, int(step), conds.get("file", "")))

    def before_update(self, step: int) -> None:
        """Called with the 1-based step about to complete."""
        for hook in self.hooks:
            if step != hook.step:
                continue
            if hook.kind == "raise":
                raise RuntimeError(f"injected fault at step {step}")
            if hook.kind == "hang":
                print(f"clipfleet worker: injected hang at step {step}", flush=True)
                threading.Event().wait()
            if hook.kind == "gate":
                print(f"clipfleet worker: gate at step {step}: waiting for {hook.gate_file}", flush=True)
                _wait_for_file(hook.gate_file)

    def before_commit(self, shard: int) -> None:
        """task recaption: called with the rank's 1-based count of output shards written, before the commit."""
        for hook in self.hooks:
            if hook.kind == "commitgate" and shard == hook.step:
                print(f"clipfleet worker: commit gate at shard {shard}: waiting for {hook.gate_file}", flush=True)
                _wait_for_file(hook.gate_file)

    def loss(self, step: int, value: Any) -> Any:
        """`value` times NaN at the nan fault's step (a tensor stays a tensor)."""
        return value * float("nan") if any(h.kind == "nan" and h.step == step for h in self.hooks) else value
