"""What every task shares: the rank's context, step reports, coordinated control, checkpoints.

Control decisions (checkpoint now, stop) must be taken by every rank at the
same step. Commands reach ranks at slightly different times, so each step
ends with one small all-reduce that carries the loss sums and the ranks'
flags; a flag raised by any rank is acted on by all of them at that step.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .. import checkpoint as ckpt
from .. import distributed as D
from ..accel import cuda_memory_line, grad_scaler, refit_fused
from .. import openclip
from ..agent import Agent, PlanCache
from ..data.loader import PlanLoader, StepSlice
from ..data.remote import STATS as SHARD_STATS
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..gen.clipfleet.v1 import common_pb2 as cpb
from ..gen.clipfleet.v1 import worker_pb2 as pb
from ..lifecycle import FaultInjection
from ..models import params_sha256
from ..optim import build_optimizer


@dataclass
class TaskContext:
    """One rank of one attempt: its assignment, config, device, and channel to the orchestrator."""

    agent: Agent
    assignment: pb.Assignment
    cfg: dict[str, Any]
    rank: int
    world_size: int
    device: torch.device
    writer: ckpt.CheckpointWriter
    fault: "FaultInjection"
    committed_steps: list[int] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return self.assignment.stage

    def phase(self, step: int, name: str) -> None:
        self.agent.set_progress(step, name)

    def report_step(self, **fields: Any) -> None:
        samples = fields.pop("samples", None) or []
        extra = fields.pop("extra", None) or {}
        reasons = fields.pop("skipped_by_reason", None) or {}
        msg = pb.StepReport(**fields)
        for k, n in reasons.items():
            msg.skipped_by_reason[k] = int(n)
        fetched, hits, misses, seconds = SHARD_STATS.delta()
        msg.shard_bytes_fetched, msg.shard_cache_hits, msg.shard_cache_misses, msg.shard_fetch_seconds = fetched, hits, misses, seconds
        msg.samples.extend(int(s) for s in samples)
        for k, v in extra.items():
            msg.extra[k] = float(v)
        self.agent.send(pb.WorkerMessage(step=msg))

    def report_eval(
        self,
        step: int,
        metrics: dict[str, float],
        split: str = "val",
        skipped_by_reason: dict[str, int] | None = None,
        warnings: list[str] | tuple[str, ...] = (),
    ) -> None:
        if self.rank != 0:
            return
        msg = pb.EvalResult(step=step, split=split)
        for k, v in metrics.items():
            msg.metrics[k] = float(v)
        for k, n in (skipped_by_reason or {}).items():
            msg.skipped_by_reason[k] = int(n)
        msg.warnings.extend(warnings)
        self.agent.send(pb.WorkerMessage(eval=msg))
        print(f"clipfleet worker: evaluation at step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())), flush=True)

    def report_finished(self, step: int, params_sha256: str, metrics: dict[str, float]) -> None:
        msg = pb.Finished(step=step, final_params_sha256=params_sha256)
        for k, v in metrics.items():
            msg.metrics[k] = float(v)
        self.agent.send(pb.WorkerMessage(finished=msg))

    def save_checkpoint(self, step: int, payload: dict[str, Any], cursor: tuple[int, int], defer: Iterable[torch.Tensor] = ()) -> float:
        """Phase one: write this rank's files for `step` and report their digests; returns the stall in seconds
        (so far: an asynchronous save copies the `defer` tensors until writer.settle(), see CheckpointWriter)."""
        self.phase(step, "checkpointing")
        epoch, sample_in_epoch = cursor

        def on_written(directory: str, files: list[ckpt.WrittenFile], save_seconds: float, write_seconds: float) -> None:
            msg = pb.CheckpointWritten(
                step=step,
                dir=directory,
                save_seconds=save_seconds,
                write_seconds=write_seconds,
                cursor=cpb.DataCursor(epoch=epoch, sample_in_epoch=sample_in_epoch),
            )
            msg.files.extend(cpb.FileDigest(path=f.path, sha256=f.sha256, size=f.size) for f in files)
            self.agent.send(pb.WorkerMessage(checkpoint=msg))

        stalled = self.writer.save(step, payload, on_written, defer)
        self.phase(step, "training")
        return stalled


@dataclass(frozen=True)
class StepSync:
    """The outcome of the end-of-step all-reduce, identical on every rank."""

    loss: float
    valid: int
    checkpoint: bool
    stop: bool
    stop_checkpoint: bool
    nonfinite: bool


def sync_step(ctx: TaskContext, step: int, loss_sum: float, valid: int) -> StepSync:
    """One collective per step: sums of the loss and valid counts, maxima of the control flags."""
    want_ckpt, want_stop, stop_ckpt = ctx.agent.commands.due(step)
    nonfinite = 0.0 if math.isfinite(loss_sum) else 1.0
    loss_sum = loss_sum if math.isfinite(loss_sum) else 0.0
    sums = D.all_reduce_sum([loss_sum, float(valid), float(want_ckpt), float(want_stop), float(stop_ckpt), nonfinite], ctx.device)
    return StepSync(
        loss=sums[0] / max(1.0, float(ctx.world_size)),
        valid=int(sums[1]),
        checkpoint=sums[2] > 0,
        stop=sums[3] > 0,
        stop_checkpoint=sums[4] > 0,
        nonfinite=sums[5] > 0,
    )


def load_resume(assignment: pb.Assignment) -> ckpt.VerifiedCheckpoint | None:
    """The checkpoint to resume from, every file verified; None to start fresh."""
    ref = assignment.resume
    if not ref.dir:
        return None
    return ckpt.VerifiedCheckpoint.of(ref)


def load_init_weights(assignment: pb.Assignment) -> dict[str, torch.Tensor]:
    """The model state dict of the init checkpoint (a committed pretraining checkpoint, or imported open_clip weights), verified."""
    ref = assignment.init
    if not ref.dir:
        raise ConfigError("the stage has no init checkpoint", "init")
    checkpoint = ckpt.VerifiedCheckpoint.of(ref)
    if not checkpoint.has(ckpt.MODEL_FILE) and len(checkpoint.files) == 1:
        # open_clip weights (an export directory or a weights file), hashed at submit (docs/open_clip.md).
        name = next(iter(checkpoint.files))
        path = os.path.join(ref.dir, name)
        return openclip.from_openclip_state(openclip.load_weights_bytes(checkpoint.read(name), path), path)
    state = checkpoint.load(ckpt.MODEL_FILE)
    if not isinstance(state, dict):
        raise CheckpointError("model file does not hold a state dict", os.path.join(ref.dir, ckpt.MODEL_FILE))
    return state


def set_threads(default: int) -> None:
    """torch intra-op threads: CLIPFLEET_THREADS (set by the launcher) or `default`."""
    n = int(os.environ.get("CLIPFLEET_THREADS", default) or default)
    torch.set_num_threads(max(1, n))


def json_config(assignment: pb.Assignment) -> dict[str, Any]:
    return json.loads(assignment.config_json)


@dataclass(frozen=True)
class Update:
    """What one optimizer step did, identical on every rank."""

    sync: StepSync
    grad_norm: float
    nan_skipped: bool


def apply_update(ctx: TaskContext, step: int, loss: float, valid: int, params: list, optimizer, scaler, train: dict[str, Any], after_step=None) -> Update:
    """The common end of a training step, after backward: one all-reduce of the loss and the
    control flags, gradients averaged over ranks in a fixed order, clipping, the NaN policy
    (train.on_nan), the optimizer step and `after_step` (e.g. clamping the temperature)."""
    ctx.fault.before_update(step)
    sync = sync_step(ctx, step, loss, valid)
    D.average_gradients(params, ctx.world_size)
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    gnorm = grad_norm(params, train.get("grad_clip"))
    if sync.nonfinite or not math.isfinite(gnorm):
        if train["on_nan"] == "fail":
            raise NonFiniteError(f"non-finite loss or gradient at step {step} (train.on_nan: fail)")
        optimizer.zero_grad(set_to_none=True)
        print(f"clipfleet worker: non-finite loss/gradient at step {step}: update skipped (train.on_nan: skip)", flush=True)
        return Update(sync, gnorm, True)
    # An asynchronous save may still be copying the parameters and optimizer state (deferred
    # past the forward and backward, which only read them): the update waits for that copy.
    ctx.writer.settle()
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if after_step is not None:
        after_step()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    return Update(sync, gnorm, False)


def maybe_checkpoint(ctx: TaskContext, step: int, total: int, sync: StepSync, payload, batch,
                     defer: Callable[[], Iterable[torch.Tensor]] | None = None) -> None:
    """Saves when the cadence (checkpoint.every_steps), the end (checkpoint.final), an on-demand
    request or a stop with checkpoint says so; every rank decides the same from `sync`. `defer()`:
    the tensors only the update changes, whose copy an asynchronous save may defer until
    apply_update's settle()."""
    ck = ctx.cfg["checkpoint"]
    periodic = bool(ck.get("every_steps")) and step % int(ck["every_steps"]) == 0
    final = step == total and bool(ck.get("final", True))
    if periodic or final or sync.checkpoint or (sync.stop and sync.stop_checkpoint):
        ctx.save_checkpoint(step, payload(step), cursor_after(ctx.assignment, batch), defer() if defer is not None else ())
        ctx.agent.commands.checkpoint_done(step)


def grad_norm(params, clip: float | None) -> float:
    """Global L2 norm of the (averaged) gradients; clips to `clip` when set."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if clip:
        return float(torch.nn.utils.clip_grad_norm_(params, float(clip)))
    return float(torch.norm(torch.stack([g.detach().norm(2) for g in grads]), 2))


def cursor_after(a, batch) -> tuple[int, int]:
    """Data cursor after `batch`: the next step's first sample (epoch rolls over at the end)."""
    return ckpt.cursor_after(batch.epoch, batch.sample_in_epoch, int(a.global_batch), int(a.steps_per_epoch))


def restore_trainer(ctx: TaskContext, resume: ckpt.VerifiedCheckpoint, model: torch.nn.Module, optimizer, scaler) -> None:
    """Loads model, optimizer, grad scaler and this rank's RNG states from a committed checkpoint."""
    ctx.phase(int(ctx.assignment.start_step), "loading")
    model.load_state_dict(resume.load(ckpt.MODEL_FILE))
    trainer = resume.load(ckpt.TRAINER_FILE)
    optimizer.load_state_dict(trainer["optimizer"])
    refit_fused(optimizer, ctx.device.type)
    if "scaler" in trainer:
        scaler.load_state_dict(trainer["scaler"])
    # A rank the checkpoint had no file for (the world grew) keeps its fresh RNG state; a file
    # of that name in the directory but not in the manifest is never read.
    if resume.has(ckpt.rank_file(ctx.rank)):
        ckpt.set_rng_state(resume.load(ckpt.rank_file(ctx.rank))["rng"])
    print(f"clipfleet worker: resumed from {resume.directory} at step {int(ctx.assignment.start_step)}", flush=True)


def checkpoint_payload(ctx: TaskContext, model: torch.nn.Module, optimizer, scaler):
    """The files of a checkpoint at a step: every rank its RNG states; rank 0 the model and trainer state."""

    def payload(step: int) -> dict[str, Any]:
        files: dict[str, Any] = {ckpt.rank_file(ctx.rank): {"rng": ckpt.rng_state(), "step": step}}
        if ctx.rank == 0:
            files[ckpt.MODEL_FILE] = model.state_dict()
            trainer = {"optimizer": optimizer.state_dict(), "step": step, "config_sha256": ctx.assignment.config_sha256}
            if scaler.is_enabled():
                trainer["scaler"] = scaler.state_dict()
            files[ckpt.TRAINER_FILE] = trainer
        return files

    return payload


# Steps of plan one GetPlan fetches for the built-in loader, and the most sample indices it may
# carry: the loader asks for its prefetch (4 steps) at a time, but every call costs the orchestrator a
# unary RPC (headers, authentication, trailers), more than the steps' reports do.
PLAN_STEPS = 64
PLAN_SAMPLES = 16384


def plan_steps_per_fetch(per_rank_batch: int) -> int:
    return max(1, min(PLAN_STEPS, PLAN_SAMPLES // max(1, per_rank_batch)))


def plan_loader(ctx: TaskContext, task: str, tokenize) -> PlanLoader:
    """This rank's loader over the orchestrator's data plan, from the assignment's start step to its end."""
    cfg, a = ctx.cfg, ctx.assignment
    plans = PlanCache(ctx.agent.plan, int(a.total_steps), plan_steps_per_fetch(int(a.per_rank_batch)))

    def fetch(from_step: int, count: int) -> list[StepSlice]:
        out = []
        for i in range(from_step, min(from_step + count, int(a.total_steps))):
            p = plans.get(i)
            out.append(StepSlice(step=p.step, epoch=p.epoch, sample_in_epoch=p.sample_in_epoch, shards=list(p.shards), indices=list(p.indices), sample_ids=list(p.sample_ids)))
        return out

    return PlanLoader(
        shards=ctx.agent.shards("train"),
        fetch_plan=fetch,
        start_step=int(a.start_step),
        end_step=int(a.total_steps),
        task=task,
        cfg=cfg,
        tokenize=tokenize,
        image_size=int(cfg["model"]["image"]["image_size"]),
        threads=int(cfg["data"].get("loader_threads") or 2),
        prefetch_steps=int(cfg["data"].get("prefetch_steps") or 4),
        pin_memory=ctx.device.type == "cuda",
    )


def report_train_step(ctx: TaskContext, batch, step: int, upd: Update, optimizer, step_seconds: float, compute_seconds: float,
                      audit: bool, **extra: Any) -> None:
    """The step report of a built-in training task (every step: the orchestrator's hang detection counts on it).

    `extra`: the task's own StepReport fields (a temperature, out-of-range labels)."""
    a = ctx.assignment
    ctx.report_step(
        step=step,
        epoch=batch.epoch,
        sample_in_epoch=batch.sample_in_epoch + int(a.global_batch),
        loss=upd.sync.loss,
        lr=optimizer.param_groups[0]["lr"],
        grad_norm=upd.grad_norm,
        samples_per_second=int(a.global_batch) / max(step_seconds, 1e-9),
        step_seconds=step_seconds,
        data_wait_seconds=batch.data_wait,
        compute_seconds=compute_seconds,
        skipped_samples=batch.skipped,
        skipped_by_reason=batch.skip_reasons,
        nan_skipped=upd.nan_skipped,
        samples=[sid for sid, ok in zip(batch.sample_ids, batch.valid.tolist()) if ok] if audit else None,
        **extra,
    )


def finish_training(ctx: TaskContext, model: torch.nn.Module, step: int, stopped: bool, evaluate_at_end, metrics: dict[str, float]) -> None:
    """The end of a built-in training task: the GPU memory line, then either the stop notice (a stop
    before the last step: no evaluation, no Finished) or the final evaluation (`evaluate_at_end(step)`,
    None: none) and the Finished report with the parameters' sha256."""
    memory = cuda_memory_line(ctx.device)
    if memory is not None:
        print(memory, flush=True)
    if stopped:
        print(f"clipfleet worker: stopped after step {step} as asked ({ctx.agent.commands.stop_reason or 'stop'})", flush=True)
        return
    if evaluate_at_end is not None:
        metrics = evaluate_at_end(step)
    ctx.report_finished(step, params_sha256(model), metrics)


def start_trainer(ctx: TaskContext, model: torch.nn.Module, init_fresh) -> tuple[Any, Any]:
    """The optimizer and grad scaler of `model`: restored with the model from the resume checkpoint,
    else `init_fresh()` (weights from an init checkpoint, or nothing) and rank 0's parameters broadcast."""
    train = ctx.cfg["train"]
    optimizer = build_optimizer(model, train, ctx.device.type)
    scaler = grad_scaler(train["precision"], ctx.device)
    resume = load_resume(ctx.assignment)
    if resume is not None:
        restore_trainer(ctx, resume, model, optimizer, scaler)
    else:
        init_fresh()
        D.broadcast_parameters(model)
    return optimizer, scaler
