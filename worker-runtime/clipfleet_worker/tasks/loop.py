"""The training loop the built-in training tasks share (pretrain, finetune-seg/-depth, train-captioner).

A task brings its model, optimizer and grad scaler (start_trainer) and the
part of a step that is its own: the forward and backward of this rank's
slice. Everything around it is the same for every task and must stay so:
the learning-rate schedule, the end-of-step all-reduce that makes every rank
take the same checkpoint and stop decisions at the same step, the NaN policy,
the step reports the orchestrator's hang detection counts on, periodic and
final evaluation, and closing the loader and the checkpoint writer however
the loop ends.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..accel import DeviceFeeder, autocast_for, maybe_compile, path_line
from ..data.loader import Batch
from ..models.attention import sdpa_in_use
from ..optim import lr_at, set_lr
from ..snapshot import update_only_tensors
from .common import TaskContext, apply_update, checkpoint_payload, finish_training, maybe_checkpoint, plan_loader, report_train_step

# (batch, 1-based step about to complete) -> this rank's loss, detached, with its gradients accumulated.
StepFn = Callable[[Batch, int], torch.Tensor]
# step -> metrics.
EvalFn = Callable[[int], dict[str, float]]


def compiled_forward(ctx: TaskContext, model: torch.nn.Module) -> Callable[..., Any]:
    """The forward through torch.compile when train.compile (torch >= 2), and the path line `make gpu-check` reads.

    Checkpoints and the model's other methods use `model` itself, so they are the same either way."""
    train = ctx.cfg["train"]
    forward = maybe_compile(model, bool(train.get("compile")))
    print(path_line(ctx.device, train, sdpa_in_use(ctx.device.type)), flush=True)
    return forward


def evaluating(ctx: TaskContext, measure: EvalFn) -> EvalFn:
    """`measure` under the "evaluating" phase, back to "training" after it."""

    def evaluate(step: int) -> dict[str, float]:
        ctx.phase(step, "evaluating")
        metrics = measure(step)
        ctx.phase(step, "training")
        return metrics

    return evaluate


def run_training(
    ctx: TaskContext,
    model: torch.nn.Module,
    optimizer: Any,
    scaler: Any,
    task: str,
    tokenize: Callable[[list[str]], torch.Tensor] | None,
    forward_backward: StepFn,
    *,
    loss_name: str = "loss",
    evaluate: EvalFn | None = None,
    evaluate_at_end: EvalFn | None = None,
    after_step: Callable[[], None] | None = None,
    step_extra: Callable[[Batch], tuple[dict[str, Any], str]] | None = None,
) -> None:
    """Train from the assignment's start step to its end (or a coordinated stop), then finish.

    `task`, `tokenize`: the loader's (plan_loader). `forward_backward` runs under autocast
    after the gradients are cleared. `evaluate` measures at eval.every_steps (the loop
    sets the phases around it); `evaluate_at_end` is the final evaluation as
    finish_training calls it (None: none). `after_step` runs after each optimizer step
    that was not skipped (apply_update). `step_extra(batch)`: the task's own StepReport
    fields and its words in the log line after the learning rate. `loss_name` names the
    loss in that line.
    """
    cfg, a = ctx.cfg, ctx.assignment
    train = cfg["train"]
    total = int(a.total_steps)
    start = int(a.start_step)
    params = [p for p in model.parameters() if p.requires_grad]
    audit = bool(cfg["data"].get("audit"))
    every = train.get("log_every") or 1
    eval_cfg = cfg.get("eval") or {}
    payload = checkpoint_payload(ctx, model, optimizer, scaler)

    loader = plan_loader(ctx, task, tokenize)
    ctx.phase(start, "training")
    step = start
    last_metrics: dict[str, float] = {}
    stopped = False
    t_last = time.perf_counter()
    try:
        for batch in DeviceFeeder(loader, ctx.device):
            t_compute = time.perf_counter()
            step = batch.step + 1  # steps completed after this one
            set_lr(optimizer, lr_at(batch.step, train, total))
            model.train()
            # The batch is on the device already (DeviceFeeder: pinned, copied on a side stream during the last step).
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(train["precision"], ctx.device):
                loss = forward_backward(batch, step)
            upd = apply_update(ctx, step, float(loss), int(batch.valid.sum()), params, optimizer, scaler, train, after_step=after_step)
            sync = upd.sync
            now = time.perf_counter()
            step_seconds = now - t_last
            t_last = now
            compute = now - t_compute
            extra, words = step_extra(batch) if step_extra is not None else ({}, "")
            report_train_step(ctx, batch, step, upd, optimizer, step_seconds, compute, audit, **extra)
            if ctx.rank == 0 and (step % every == 0 or step == total):
                print(f"step {step}/{total} epoch {batch.epoch} {loss_name} {sync.loss:.4f} lr {optimizer.param_groups[0]['lr']:.3g}{words} "
                      f"{int(a.global_batch) / max(step_seconds, 1e-9):.1f} samples/s", flush=True)
            ctx.phase(step, "training")
            maybe_checkpoint(ctx, step, total, sync, payload, batch, defer=lambda: update_only_tensors(model, optimizer))
            if evaluate is not None and eval_cfg.get("every_steps") and step % int(eval_cfg["every_steps"]) == 0 and step != total:
                last_metrics = evaluating(ctx, evaluate)(step)
                # The evaluation's time is not the next step's.
                t_last = time.perf_counter()
            if sync.stop and step < total:
                stopped = True
                break
    finally:
        loader.close()
        ctx.writer.wait()

    finish_training(ctx, model, step, stopped, evaluate_at_end, last_metrics)
