"""task: finetune-seg and finetune-depth. A CLIP image tower plus a UperNet decoder, trained on label maps.

The loop is pretrain's (tasks/loop.py): the orchestrator's plan feeds the batches, every step
ends with sync_step (loss, control flags), gradients are averaged across
ranks in a fixed order, checkpoints and stops happen at the same step on
every rank, and a resumed run is bit-exact. What differs: the model
(models.build_dense_model), its initialisation (random from the seed, or
only the image tower of a committed CLIP checkpoint), the per-pixel losses,
and the evaluation (mIoU / pixel accuracy, RMSE / AbsRel / delta) on the
whole held-out split, always at the end.

Loss across ranks: each rank's loss is the mean over its own labelled
pixels; gradients and the reported loss are the mean over ranks. With
micro-batches the gradient is exactly the whole slice's: segmentation
weights each micro-batch by its share of labelled pixels, depth re-forwards
each micro-batch against the cached predictions of the others (the
scale-invariant loss does not split into a sum).

Depth pixels count (in the loss and the metrics) when the target is in
(0, dense.max_depth]: the head cannot predict beyond max_depth, and 0 marks
a missing measurement (the NYUv2 protocol caps at 10 m the same way).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .. import distributed as D
from ..accel import autocast_for
from ..data.loader import Batch, iterate_split, resolve_num_classes, seg_class_names, skip_counts, skips_by_reason
from ..data.sources import ShardSource
from ..evaluation import DEPTH_KEYS, add_sums, depth_metric_sums, depth_metrics_from_sums, seg_class_iou, seg_confusion, seg_metrics
from ..losses import depth_loss, seg_loss
from ..models import DenseModel, TowerLoadReport, build_dense_model, load_image_tower
from .common import TaskContext, load_init_weights, start_trainer
from .loop import compiled_forward, evaluating, run_training

# The label map each dense task trains on (the loader's and iterate_split's `dense` argument).
DENSE_KIND = {"finetune-seg": "seg", "finetune-depth": "depth"}


def build_model(ctx: TaskContext) -> tuple[DenseModel, int | None]:
    """The stage's dense model with random weights drawn from cfg.seed, and its class count (seg only)."""
    cfg, a = ctx.cfg, ctx.assignment
    task = cfg["task"]
    num_classes = None
    if task == "finetune-seg":
        num_classes = resolve_num_classes(cfg, [u for u, _ in ctx.agent.shards("train")] or [u for u, _ in ctx.agent.shards("val")])
    torch.manual_seed(int(cfg["seed"]))
    model = build_dense_model(cfg["model"], task, cfg["dense"], num_classes, freeze_backbone=bool(cfg["freeze_backbone"]))
    return model.to(ctx.device), num_classes


def init_backbone(ctx: TaskContext, model: DenseModel) -> TowerLoadReport | None:
    """init: checkpoint: load only the image tower of the assignment's verified CLIP checkpoint; None for random.

    A tower that does not match raises ConfigError (the stage fails before training).
    """
    init = ctx.cfg.get("init") or {"kind": "random"}
    if init["kind"] != "checkpoint":
        return None
    ctx.phase(int(ctx.assignment.start_step), "loading")
    report = load_image_tower(model, load_init_weights(ctx.assignment))
    if ctx.rank == 0:
        extra = f", resampled {', '.join(report.resampled)}" if report.resampled else ""
        print(f"clipfleet worker: image tower initialised from {ctx.assignment.init.dir} ({init['ref']}): "
              f"{report.loaded} tensors loaded, {len(report.dropped)} left out (text tower, temperature, pooling head){extra}",
              flush=True)
    return report


def run(ctx: TaskContext) -> None:
    """Fine-tune a dense model on the plan's batches, checkpointing and stopping as coordinated; evaluate at the end."""
    cfg, a = ctx.cfg, ctx.assignment
    task = cfg["task"]
    kind = DENSE_KIND[task]
    train, dense = cfg["train"], cfg["dense"]
    model, num_classes = build_model(ctx)
    optimizer, scaler = start_trainer(ctx, model, lambda: init_backbone(ctx, model))

    micro = int(train.get("micro_batch") or int(a.per_rank_batch))
    eval_cfg = cfg.get("eval") or {}
    max_depth = float(dense["max_depth"])
    warned_out_of_range = False
    forward = compiled_forward(ctx, model)

    def measure(step: int) -> dict[str, float]:
        metrics, skipped = evaluate_dense(ctx, model, num_classes)
        ctx.report_eval(step, metrics, skipped_by_reason=skipped)
        return metrics

    def forward_backward(batch: Batch, step: int) -> Tensor:
        nonlocal warned_out_of_range
        if kind == "seg":
            assert batch.seg is not None
            target, mask = batch.seg, None
        else:
            assert batch.depth is not None
            target = batch.depth
            mask = depth_mask(target, batch.valid, max_depth)
        if batch.seg_out_of_range and not warned_out_of_range:
            warned_out_of_range = True
            print(f"clipfleet worker: warning: rank {ctx.rank}: {batch.seg_out_of_range} label pixels at step {step} have a class id "
                  f">= dense.num_classes ({num_classes}); they are ignored and counted in out_of_range_labels (reported once)", flush=True)
        return _forward_backward(forward, kind, dense, batch.images, target, mask, micro, scaler, ctx, step)

    # Dense stages always measure the held-out split at the end unless eval.at_end is explicitly off.
    run_training(ctx, model, optimizer, scaler, task, None, forward_backward, loss_name=f"{kind} loss",
                 evaluate=measure, evaluate_at_end=evaluating(ctx, measure) if eval_cfg.get("at_end", True) else None,
                 step_extra=lambda batch: ({"out_of_range_labels": batch.seg_out_of_range}, ""))


def depth_mask(target: Tensor, valid: Tensor, max_depth: float) -> Tensor:
    """Pixels that count for depth: a decoded sample, a measured depth (> 0), not beyond what the head can predict."""
    return valid.reshape(-1, 1, 1).to(torch.bool) & (target > 0) & (target <= max_depth)


def _forward_backward(model: Callable[[Tensor], Tensor], kind: str, dense: dict[str, Any], images: Tensor, target: Tensor, mask: Tensor | None,
                      micro: int, scaler: Any, ctx: TaskContext, step: int) -> Tensor:
    """This rank's loss (mean over its labelled pixels), with its gradient accumulated; exact with micro-batches."""
    ignore_index = int(dense["ignore_index"])

    def backward(loss: Tensor) -> None:
        scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()

    def loss_of(out: Tensor, tgt: Tensor, msk: Tensor | None) -> Tensor:
        if kind == "seg":
            return seg_loss(out.float(), tgt, ignore_index)
        return depth_loss(dense["depth_loss"], out.float(), tgt, msk)

    n = images.shape[0]
    if micro >= n:
        loss = ctx.fault.loss(step, loss_of(model(images), target, mask))
        backward(loss)
        return loss.detach()
    parts = [slice(i, i + micro) for i in range(0, n, micro)]
    if kind == "seg":
        # Cross-entropy is a mean over labelled pixels: weight each micro-batch by its share of them.
        labelled = (target != ignore_index).sum(dim=(1, 2))
        total = max(1, int(labelled.sum()))
        value = torch.zeros((), device=images.device)
        for sl in parts:
            loss = ctx.fault.loss(step, loss_of(model(images[sl]), target[sl], None) * (int(labelled[sl].sum()) / total))
            backward(loss)
            value = value + loss.detach()
        return value
    assert mask is not None
    # The depth losses do not split into per-micro-batch sums (silog is a root of a variance): predict
    # the whole slice without gradient, then re-forward each micro-batch with gradient against the rest.
    with torch.no_grad():
        cached = [model(images[sl]).float() for sl in parts]
        value = loss_of(torch.cat(cached), target, mask)
    torch.clear_autocast_cache()  # no_grad casts of the weights must not serve the passes with gradient (see pretrain)
    for j, sl in enumerate(parts):
        pred = torch.cat(cached[:j] + [model(images[sl]).float()] + cached[j + 1:])
        backward(ctx.fault.loss(step, loss_of(pred, target, mask)))
    return ctx.fault.loss(step, value)


def _sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, so every rank evaluates the same model.

    Ranks normalise with their own batch statistics while training, so their
    running averages drift apart; only rank 0's are checkpointed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for b in model.buffers():
        dist.broadcast(b, src=0)


@torch.no_grad()
def evaluate_dense(ctx: TaskContext, model: DenseModel, num_classes: int | None) -> tuple[dict[str, float], dict[str, int]]:
    """Dense metrics over the whole val split (every rank a block; sums reduced), identical on every rank,
    and the val samples skipped (all ranks) by reason.

    seg: "seg/mIoU", "seg/mAcc", "seg/pixel_acc" from one confusion matrix;
    depth: "depth/rmse", "depth/abs_rel", "depth/delta1..3" averaged over images.
    Empty when the stage has no val shards.
    """
    cfg, a = ctx.cfg, ctx.assignment
    shards = ctx.agent.shards("val")
    if not shards:
        if ctx.rank == 0:
            print("clipfleet worker: no val shards: dense evaluation skipped", flush=True)
        return {}, {}
    kind = DENSE_KIND[cfg["task"]]
    dense, device = cfg["dense"], ctx.device
    ignore_index, max_depth = int(dense["ignore_index"]), float(dense["max_depth"])
    batch_size = int((cfg.get("eval") or {}).get("batch_size") or max(1, int(a.per_rank_batch)))
    was_training = model.training
    _sync_buffers(model)
    model.eval()
    confusion = torch.zeros((num_classes or 0, num_classes or 0), dtype=torch.int64)
    sums: dict[str, float] = {k: 0.0 for k in (*DEPTH_KEYS, "count")}
    out_of_range = 0
    reasons: dict[str, int] = {}
    for b in iterate_split(
        shards,
        batch_size,
        int(cfg["model"]["image"]["image_size"]),
        dense=kind,
        num_classes=num_classes,
        ignore_index=ignore_index,
        rank=ctx.rank,
        world_size=ctx.world_size,
        threads=int(cfg["data"].get("loader_threads") or 2),
        source=ShardSource.from_cfg(cfg),
    ):
        for r, n in b.skip_reasons.items():
            reasons[r] = reasons.get(r, 0) + n
        out_of_range += b.seg_out_of_range
        if not bool(b.valid.any()):
            continue
        with autocast_for(cfg["train"]["precision"], device):
            out = model(b.images.to(device)).float()
        if kind == "seg":
            assert b.seg is not None and num_classes is not None
            confusion += seg_confusion(out, b.seg.to(device), num_classes, ignore_index)
        else:
            assert b.depth is not None
            target = b.depth.to(device)
            sums = add_sums(sums, depth_metric_sums(out, target, depth_mask(target, b.valid.to(device), max_depth)))
    counts = D.all_reduce_sum([float(out_of_range), *skip_counts(reasons)], device)
    skipped = skips_by_reason(counts[1:])
    metrics: dict[str, float] = {}
    if kind == "seg":
        confusion = confusion.to(device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(confusion)
        metrics = {f"seg/{k}": v for k, v in seg_metrics(confusion.cpu()).items()}
        # Per-class IoU: a mean over 9 classes hides whether a model found the objects at all.
        names = seg_class_names(shards[0][0], len(confusion))
        for name, iou in zip(names, seg_class_iou(confusion.cpu())):
            if math.isfinite(iou):  # a class in neither target nor prediction has no IoU, as in mmseg's mean
                metrics[f"seg/IoU.{name}"] = iou
        if counts[0]:
            metrics["seg/out_of_range_labels"] = counts[0]
    else:
        keys = sorted(sums)
        reduced = dict(zip(keys, D.all_reduce_sum([sums[k] for k in keys], device)))
        metrics = {f"depth/{k}": v for k, v in depth_metrics_from_sums(reduced).items()}
    undefined = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if ctx.rank == 0 and (undefined or counts[0] or skipped):
        print(f"clipfleet worker: dense evaluation: {sum(skipped.values())} val samples skipped, {int(counts[0])} out-of-range label pixels ignored"
              + (f"; undefined (no labelled pixels): {', '.join(undefined)}" if undefined else ""), flush=True)
    if was_training:
        model.train()
    return {k: v for k, v in metrics.items() if k not in undefined}, skipped
