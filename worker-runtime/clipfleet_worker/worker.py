"""A worker rank's life: register, join the process group, run the task, report how it ended.

Started by the orchestrator's launcher as `python -m clipfleet_worker run`
with torchrun's environment plus CLIPFLEET_* variables. Python errors are
reported to the orchestrator with a traceback and a fingerprint (so a
repeated bug is not retried forever); SIGUSR2 prints every thread's stack
(the orchestrator asks for it before killing a hung rank); SIGTERM asks the
orchestrator for a graceful stop of the whole gang; the preemption signal
(SIGUSR1, or CLIPFLEET_PREEMPT_SIGNAL) for a preemption (preempt.py).
"""

from __future__ import annotations

import os
import sys
import time

import torch

from . import checkpoint as ckpt
from . import distributed as D
from .accel import deterministic_setup
from .agent import EXIT_CONFIG, EXIT_ERROR, EXIT_FENCED, EXIT_OK, Agent, SessionLost, WorkerEnv
from .errors import ClipfleetWorkerError, ConfigError
from .lifecycle import FaultInjection, die_with_parent, dump_stacks_on_sigusr2, report_failure, request_preemption, stop_gang_on_sigterm
from .preempt import PreemptionWatch
from .tasks.common import TaskContext, json_config, set_threads


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
    elif task == "recaption":
        from .tasks import recaption

        recaption.run(ctx)
    elif task == "train-captioner":
        from .tasks import train_captioner

        train_captioner.run(ctx)
    else:
        raise ConfigError(f"unknown task {task!r}", "task")


def main(preemption: PreemptionWatch | None = None) -> int:
    """Runs one rank; `preemption`: the watch __main__ installed before the heavy imports."""
    if preemption is None:
        preemption = PreemptionWatch(os.environ)
        preemption.install()
    # Start-up phases with wall-clock times, so the cost of a restart can be broken down (bench/recovery.ts).
    print(f"clipfleet worker: phase imported at {time.time():.3f}", flush=True)
    dump_stacks_on_sigusr2()
    die_with_parent()
    env = WorkerEnv.from_environ()
    agent = Agent(env)
    assignment = agent.register(torch.__version__, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    agent.start_session()
    cfg = json_config(assignment)
    set_threads(max(1, (os.cpu_count() or 1) // max(1, assignment.local_world_size)))
    deterministic_setup(bool(cfg["train"].get("deterministic", True)))

    stop_gang_on_sigterm(agent, env.rank)
    step = int(assignment.start_step)
    try:
        preemption.attach(env.rank, lambda reason: request_preemption(agent, reason))
        agent.set_progress(step, "rendezvous")
        # The rank's GPU is selected before NCCL starts, so its communicator is built on it.
        device = D.device_for(assignment.backend, assignment.local_rank)
        D.init_process_group(assignment.backend, assignment.master_addr, assignment.master_port, assignment.rank, assignment.world_size)
        print(f"clipfleet worker: phase rendezvous at {time.time():.3f}", flush=True)
        if torch.cuda.is_available() and device.type == "cuda":
            agent.gpu_stats = D.cuda_stats(device)
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
        report_failure(agent, err)
        code = EXIT_CONFIG if isinstance(err, ConfigError) else EXIT_ERROR
    except SystemExit as err:
        code = int(err.code) if isinstance(err.code, int) else EXIT_ERROR
    except BaseException as err:  # the user's bug (or ours): report it with its traceback
        report_failure(agent, err)
        code = EXIT_ERROR
    agent.close()
    D.destroy()
    return code
