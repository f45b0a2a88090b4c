"""What every rank process shares, whether it runs a built-in task or the user's own script.

A rank dies with the process that launched it, dumps every thread's stack
on SIGUSR2 (the orchestrator asks before killing a hung gang), turns SIGTERM
into a request for a graceful stop of the whole gang and the preemption
signal (SIGUSR1, or CLIPFLEET_PREEMPT_SIGNAL) into a request for a
preemption (checkpoint at one step, exit, restart), and reports a Python
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
import socket
import sys
import threading
import time
import traceback
from typing import Any, Mapping

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


# SIGUSR1 is the preemption signal (Slurm's --signal default, scancel --signal=USR1); stacks moved to SIGUSR2.
STACK_DUMP_SIGNAL = signal.SIGUSR2
DEFAULT_PREEMPT_SIGNAL = "USR1"
# Signals a launcher may name in CLIPFLEET_PREEMPT_SIGNAL: catchable, not fatal by nature, not taken by
# something else here (TERM is the graceful stop, USR2 the stack dump, CHLD/PIPE/... the runtime's own).
PREEMPT_SIGNALS = ("USR1", "HUP", "INT", "ALRM", "URG", "PWR", "XCPU")


def dump_stacks_on_sigusr2() -> None:
    """SIGUSR2 prints every thread's stack on stderr: the orchestrator asks for it before killing a hung gang."""
    faulthandler.enable()
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)


def preempt_signal(value: str) -> signal.Signals:
    """The signal CLIPFLEET_PREEMPT_SIGNAL names ("USR1", "SIGUSR1"; empty: SIGUSR1); ConfigError for any other."""
    name = (value.strip() or DEFAULT_PREEMPT_SIGNAL).upper()
    bare = name[3:] if name.startswith("SIG") else name
    if bare not in PREEMPT_SIGNALS:
        raise ConfigError(f"expected one of {', '.join(PREEMPT_SIGNALS)} (TERM is the graceful stop, USR2 the stack dump), got {value!r}", "CLIPFLEET_PREEMPT_SIGNAL")
    return signal.Signals["SIG" + bare]


def _say(line: str) -> None:
    """One line on stderr from a signal handler: os.write, since print() may be mid-write in the interrupted frame."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


class PreemptionWatch:
    """The preemption signal, turned into a PreemptRequested for the orchestrator.

    Installed as early as the process can (a rank that starts while its
    allocation is being preempted gets the signal at any moment: the default
    action would kill it); a signal that arrives before the session is open
    is remembered and sent once `attach` is called. The orchestrator answers
    with a StopAt (preempt) for every rank; a signal while a stop is already
    under way, or after the attempt was fenced, changes nothing. Every rank
    of a Slurm step gets the signal: the orchestrator acts on the first
    request and ignores the others.

    The handler takes no lock: it runs in the main thread between two
    bytecodes, possibly inside the very queue.put or Commands lock it would
    need. It only writes a byte to a pipe; a thread sends the request.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.error: ConfigError | None = None
        self.signum: signal.Signals | None = None
        self.pending = ""
        self._agent: Agent | None = None
        self._rank = -1
        self._wake = -1
        try:
            self.signum = preempt_signal(environ.get("CLIPFLEET_PREEMPT_SIGNAL", ""))
        except ConfigError as err:
            self.error = err  # raised by attach(), once the session can carry the report

    def install(self) -> None:
        if self.signum is not None:
            signal.signal(self.signum, self._on_signal)

    def attach(self, agent: Agent, rank: int) -> None:
        """The session is open: a bad CLIPFLEET_PREEMPT_SIGNAL is reported now, a remembered signal is sent."""
        if self.error is not None:
            raise self.error
        self._rank = rank
        self._agent = agent
        read, self._wake = os.pipe()
        threading.Thread(target=self._forward, args=(read,), name="clipfleet-preempt", daemon=True).start()
        if self.pending:
            self._request(self.pending)

    def _reason(self) -> str:
        assert self.signum is not None
        return f"{self.signum.name} on rank {self._rank if self._rank >= 0 else '?'} ({socket.gethostname()})"

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._wake < 0:
            self.pending = self._reason()
            _say(f"clipfleet worker: {self.signum.name if self.signum else signum}: preemption noted; asked for once the session is open")
            return
        try:
            os.write(self._wake, b"p")
        except OSError:
            pass

    def _forward(self, read: int) -> None:
        """The thread that sends a request for each signal the handler noted."""
        while os.read(read, 64):
            self._request(self._reason())

    def _request(self, reason: str) -> None:
        agent = self._agent
        assert agent is not None
        c = agent.commands
        with c.lock:
            stopping = c.fenced is not None or c.stop_at is not None
        if stopping:
            _say("clipfleet worker: preemption signal while already stopping: nothing more to do")
            return
        _say(f"clipfleet worker: {reason}: asking the orchestrator to checkpoint and stop the gang (preemption)")
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
        with c.lock:
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


class FaultInjection:
    """Test hooks from CLIPFLEET_FAULT, e.g. "raise@5" or "raise@5:rank=1" or "hang@3:rank=0:attempt=1".

    Kinds: raise (a RuntimeError in the training loop, as a user bug would),
    nan (a NaN loss), hang (block the training thread; heartbeats go on, as in a
    stuck collective), gate (`gate@5:file=/tmp/go`: wait before step 5 until the
    file exists, so a test acts while a job is surely still training, whatever
    the machine's load). Used by the fault-injection tests; inert when unset.
    Built-in tasks fire it before a step's update, the script API when the
    script reports the step.
    """

    def __init__(self, spec: str, rank: int, attempt: int) -> None:
        self.kind = ""
        self.step = -1
        self.gate_file = ""
        if not spec:
            return
        head, *opts = spec.split(":")
        kind, _, step = head.partition("@")
        conds = dict(o.split("=", 1) for o in opts if "=" in o)
        if "rank" in conds and int(conds["rank"]) != rank:
            return
        if "attempt" in conds and int(conds["attempt"]) != attempt:
            return
        if kind not in ("raise", "nan", "hang", "gate"):
            raise ConfigError(f"CLIPFLEET_FAULT: unknown kind {kind!r} (raise, nan, hang, gate)")
        if kind == "gate" and not conds.get("file"):
            raise ConfigError("CLIPFLEET_FAULT: gate needs file=PATH (the step waits until it exists)")
        self.kind = kind
        self.step = int(step)
        self.gate_file = conds.get("file", "")

    def before_update(self, step: int) -> None:
        """Called with the 1-based step about to complete."""
        if step != self.step:
            return
        if self.kind == "raise":
            raise RuntimeError(f"injected fault at step {step}")
        if self.kind == "hang":
            print(f"clipfleet worker: injected hang at step {step}", flush=True)
            threading.Event().wait()
        if self.kind == "gate":
            print(f"clipfleet worker: gate at step {step}: waiting for {self.gate_file}", flush=True)
            while not os.path.exists(self.gate_file):
                time.sleep(0.05)  # a test hook polling a file it is told about; no event to wait on across processes

    def loss(self, step: int, value: Any) -> Any:
        """`value` times NaN at the nan fault's step (a tensor stays a tensor)."""
        return value * float("nan") if self.kind == "nan" and step == self.step else value
