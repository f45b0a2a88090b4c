"""A worker rank's life: register, join the process group, run the task, report how it ended.

Started by the orchestrator's launcher as `python -m clipfleet_worker run`
with torchrun's environment plus CLIPFLEET_* variables. Python errors are
reported to the orchestrator with a traceback and a fingerprint (so a
repeated bug is not retried forever); SIGUSR1 prints every thread's stack
(the orchestrator asks for it before killing a hung rank); SIGTERM asks the
orchestrator for a graceful stop of the whole gang.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import time
import traceback
from typing import Callable

import torch

from . import checkpoint as ckpt
from . import distributed as D
from .agent import EXIT_CONFIG, EXIT_ERROR, EXIT_FENCED, EXIT_OK, Agent, SessionLost, WorkerEnv
from .errors import ClipfleetWorkerError, ConfigError
from .gen.clipfleet.v1 import worker_pb2 as pb
from .tasks.common import FaultInjection, TaskContext, failure_fingerprint, json_config, set_threads

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the launching process dies (no orphans pinning devices)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def _run_task(ctx: TaskContext) -> None:
    task = ctx.cfg["task"]
    if task == "pretrain":
        from .tasks import pretrain

        pretrain.run(ctx)
    elif task in ("finetune-seg", "finetune-depth"):
        from .tasks import finetune_dense

        finetune_dense.run(ctx)
    elif task == "eval":
        from .tasks import evaluate

        evaluate.run(ctx)
    else:
        raise ConfigError(f"unknown task {task!r}", "task")


def main() -> int:
    # Start-up phases with wall-clock times, so the cost of a restart can be broken down (bench/recovery.ts).
    print(f"clipfleet worker: phase imported at {time.time():.3f}", flush=True)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    _die_with_parent()
    env = WorkerEnv.from_environ()
    agent = Agent(env)
    assignment = agent.register(torch.__version__, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    agent.start_session()
    cfg = json_config(assignment)
    set_threads(max(1, (os.cpu_count() or 1) // max(1, assignment.local_world_size)))
    if cfg["train"].get("deterministic", True):
        torch.use_deterministic_algorithms(True, warn_only=True)

    def on_sigterm(signum, frame) -> None:
        c = agent.commands
        with c.lock:
            stopping = c.fenced is not None or c.stop_at is not None
        if stopping:
            raise SystemExit(143)
        print("clipfleet worker: SIGTERM: asking the orchestrator to checkpoint and stop the gang", file=sys.stderr, flush=True)
        agent.send(pb.WorkerMessage(stop_requested=pb.StopRequested(reason="SIGTERM on rank %d" % env.rank)))

    signal.signal(signal.SIGTERM, on_sigterm)
    step = int(assignment.start_step)
    try:
        agent.set_progress(step, "rendezvous")
        D.init_process_group(assignment.backend, assignment.master_addr, assignment.master_port, assignment.rank, assignment.world_size)
        print(f"clipfleet worker: phase rendezvous at {time.time():.3f}", flush=True)
        device = D.device_for(assignment.backend, assignment.local_rank)
        if torch.cuda.is_available() and device.type == "cuda":
            agent.gpu_stats = _cuda_stats(device)
        ctx = TaskContext(
            agent=agent,
            assignment=assignment,
            cfg=cfg,
            rank=assignment.rank,
            world_size=assignment.world_size,
            device=device,
            writer=ckpt.CheckpointWriter(assignment.checkpoint_root, assignment.attempt, assignment.rank, bool(cfg["checkpoint"].get("async"))),
            fault=FaultInjection(os.environ.get("CLIPFLEET_FAULT", ""), assignment.rank, assignment.attempt),
        )
        _run_task(ctx)
        code = EXIT_OK
    except SessionLost as err:
        print(f"clipfleet worker: {err}", file=sys.stderr, flush=True)
        code = EXIT_FENCED
    except ClipfleetWorkerError as err:
        _report(agent, err, err.failure_kind, step)
        code = EXIT_CONFIG if isinstance(err, ConfigError) else EXIT_ERROR
    except SystemExit as err:
        code = int(err.code) if isinstance(err.code, int) else EXIT_ERROR
    except BaseException as err:  # the user's bug (or ours): report it with its traceback
        _report(agent, err, "collective" if _is_collective_failure(err) else "exception", step)
        code = EXIT_ERROR
    agent.close()
    D.destroy()
    return code


def _cuda_stats(device: torch.device) -> Callable[[], tuple[float, int]]:
    """Heartbeat hook: (utilisation 0-1, bytes allocated) of the rank's GPU; utilisation needs pynvml, else 0."""

    def stats() -> tuple[float, int]:
        try:
            util = float(torch.cuda.utilization(device)) / 100.0
        except Exception:  # pynvml missing or NVML unavailable: memory is still worth reporting
            util = 0.0
        return util, int(torch.cuda.memory_allocated(device))

    return stats


# What torch.distributed raises in a rank whose peer died or vanished: the failure is the
# peer's, not this rank's code (and must not count as a repeated user error).
_COLLECTIVE_MARKERS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "NCCL", "Broken pipe", "ProcessGroup", "Socket Timeout", "timed out after")


def _is_collective_failure(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}"
    return isinstance(err, RuntimeError) and any(m in text for m in _COLLECTIVE_MARKERS)


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


def _report(agent: Agent, err: BaseException, kind: str, step: int) -> None:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    # The step being run when it failed (the agent knows the last completed one).
    failed_step = agent._step + 1 if agent._phase == "training" else agent._step
    sys.stderr.write(tb)
    sys.stderr.flush()
    agent.send(
        pb.WorkerMessage(
            failure=pb.WorkerFailure(
                kind=kind,
                message=_head(f"{type(err).__name__}: {err}", MAX_FAILURE_MESSAGE_BYTES),
                traceback=_tail(tb, MAX_TRACEBACK_BYTES),
                step=failed_step,
                fingerprint=failure_fingerprint(err),
            )
        )
    )
