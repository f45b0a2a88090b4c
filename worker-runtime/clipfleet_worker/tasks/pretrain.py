"""task: pretrain. Contrastive image-text training on the orchestrator's data plan.

One step = one global batch (constant across world sizes): this rank's
slice, split into micro-batches when train.micro_batch is smaller. With
micro-batches the contrastive batch stays whole as in open_clip: features of
the whole slice are computed without gradient first, then each micro-batch
is re-forwarded with gradient against the cached features of the others.
Gradients are averaged across ranks in a fixed order (bit-exact restarts).
"""

from __future__ import annotations

import time

import torch

from ..accel import DeviceFeeder, autocast_for, maybe_compile, path_line
from .. import openclip
from ..losses import ClipLoss, clip_loss_both
from ..models import build_clip
from ..models.attention import sdpa_in_use
from ..optim import clamp_logit_scale, lr_at, set_lr
from ..tokenizers import build_tokenizer
from .common import TaskContext, apply_update, checkpoint_payload, finish_training, load_init_weights, maybe_checkpoint, plan_loader, report_train_step, start_trainer
from .evaluate import evaluate_clip


def run(ctx: TaskContext) -> None:
    cfg, a = ctx.cfg, ctx.assignment
    train = cfg["train"]
    device = ctx.device
    torch.manual_seed(int(cfg["seed"]))
    tokenizer = build_tokenizer(cfg["model"]["tokenizer"])
    context_length = int(cfg["model"]["text"]["context_length"])
    model = build_clip(cfg["model"], tokenizer.vocab_size).to(device)
    loss_fn = ClipLoss(rank=ctx.rank, world_size=ctx.world_size)
    total = int(a.total_steps)
    start = int(a.start_step)

    def init_fresh() -> None:
        if (cfg.get("init") or {}).get("kind") == "checkpoint":
            # Continue from a CLIP: an earlier stage's, another job's, or open_clip weights imported at submit.
            model.load_state_dict(openclip.fit_state(load_init_weights(a), model.state_dict(), a.init.dir))

    optimizer, scaler = start_trainer(ctx, model, init_fresh)
    print(f"clipfleet worker: phase restored at {time.time():.3f}", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    per_rank = int(a.per_rank_batch)
    micro = int(train.get("micro_batch") or per_rank)
    audit = bool(cfg["data"].get("audit"))
    both = cfg["data"].get("caption_mode") == "both"
    every = train.get("log_every") or 1
    eval_cfg = cfg.get("eval")

    payload = checkpoint_payload(ctx, model, optimizer, scaler)
    # The forward through torch.compile when train.compile (torch >= 2); checkpoints and the
    # other methods use `model` itself.
    forward = maybe_compile(model, bool(train.get("compile")))
    print(path_line(device, train, sdpa_in_use(device.type)), flush=True)

    loader = plan_loader(ctx, "pretrain", lambda texts: tokenizer(texts, context_length))
    ctx.phase(start, "training")
    step = start
    last_metrics: dict[str, float] = {}
    stopped = False
    t_last = time.perf_counter()
    try:
        for batch in DeviceFeeder(loader, device):
            t_compute = time.perf_counter()
            step = batch.step + 1  # steps completed after this one
            set_lr(optimizer, lr_at(batch.step, train, total))
            model.train()
            # On the device already (DeviceFeeder: pinned, copied on a side stream during the last step).
            images, tokens, valid = batch.images, batch.tokens, batch.valid
            tokens_b = batch.tokens_b if both else None
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(train["precision"], device):
                loss = _forward_backward(model, forward, loss_fn, images, tokens, tokens_b, valid, micro, scaler, ctx, step)
            upd = apply_update(ctx, step, float(loss), int(valid.sum()), params, optimizer, scaler, train, after_step=lambda: clamp_logit_scale(model))
            sync = upd.sync
            now = time.perf_counter()
            step_seconds = now - t_last
            t_last = now
            compute = now - t_compute
            temperature = float(model.logit_scale.detach().exp())
            report_train_step(ctx, batch, step, upd, optimizer, step_seconds, compute, audit, temperature=temperature)
            if ctx.rank == 0 and (step % every == 0 or step == total):
                print(f"step {step}/{total} epoch {batch.epoch} loss {sync.loss:.4f} lr {optimizer.param_groups[0]['lr']:.3g} "
                      f"logit_scale {temperature:.2f} {int(a.global_batch) / max(step_seconds, 1e-9):.1f} samples/s", flush=True)
            ctx.phase(step, "training")
            maybe_checkpoint(ctx, step, total, sync, payload, batch)
            if eval_cfg and eval_cfg.get("every_steps") and step % int(eval_cfg["every_steps"]) == 0 and step != total:
                ctx.phase(step, "evaluating")
                last_metrics = evaluate_clip(ctx, model, tokenizer, step)
                ctx.phase(step, "training")
                t_last = time.perf_counter()
            if sync.stop and step < total:
                stopped = True
                break
    finally:
        loader.close()
        ctx.writer.wait()

    at_end = eval_cfg and eval_cfg.get("at_end", True)
    finish_training(ctx, model, step, stopped, (lambda s: _evaluate(ctx, model, tokenizer, s)) if at_end else None, last_metrics)


def _evaluate(ctx: TaskContext, model, tokenizer, step: int) -> dict[str, float]:
    ctx.phase(step, "evaluating")
    return evaluate_clip(ctx, model, tokenizer, step)


def _forward_backward(model, forward, loss_fn: ClipLoss, images, tokens, tokens_b, valid, micro: int, scaler, ctx: TaskContext, step: int) -> torch.Tensor:
    """Loss of this rank's slice, with gradients accumulated; micro-batches re-forward against cached features.

    `forward` is model's forward, compiled or not (train.compile); encode_text runs eager."""
    n = images.shape[0]

    def loss_of(img, txt, txt_b, scale):
        if txt_b is not None:
            return clip_loss_both(loss_fn, img, txt, txt_b, scale, valid, valid)
        return loss_fn(img, txt, scale, valid)

    if micro >= n:
        img, txt, scale = forward(images, tokens)
        txt_b = model.encode_text(tokens_b) if tokens_b is not None else None
        loss = ctx.fault.loss(step, loss_of(img, txt, txt_b, scale))
        scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()
        return loss.detach()

    # Pass 1: every micro-batch's features without gradient (the contrastive batch stays whole).
    with torch.no_grad():
        parts = [forward(images[i : i + micro], tokens[i : i + micro]) for i in range(0, n, micro)]
        cached_img = [p[0] for p in parts]
        cached_txt = [p[1] for p in parts]
        cached_b = [model.encode_text(tokens_b[i : i + micro]) for i in range(0, n, micro)] if tokens_b is not None else None
        scale0 = parts[0][2]
        loss_value = loss_of(torch.cat(cached_img), torch.cat(cached_txt), torch.cat(cached_b) if cached_b else None, scale0)
    # Autocast caches its low-precision copies of the weights for the whole region, and the copies
    # made under no_grad carry no autograd history: pass 2 would reuse them and the towers would get
    # no gradient (pytorch/pytorch#112583, fixed only in recent torch). Drop them first.
    torch.clear_autocast_cache()
    # Pass 2: re-forward each micro-batch with gradient, the others from the cache. The
    # temperature enters every micro-batch's loss; only the first passes its gradient,
    # or it would be counted once per micro-batch (an open_clip quirk).
    for j, i in enumerate(range(0, n, micro)):
        img_j, txt_j, scale = forward(images[i : i + micro], tokens[i : i + micro])
        if j > 0:
            scale = scale.detach()
        img = torch.cat(cached_img[:j] + [img_j] + cached_img[j + 1 :])
        txt = torch.cat(cached_txt[:j] + [txt_j] + cached_txt[j + 1 :])
        txt_b = None
        if cached_b is not None:
            b_j = model.encode_text(tokens_b[i : i + micro])
            txt_b = torch.cat(cached_b[:j] + [b_j] + cached_b[j + 1 :])
        loss = ctx.fault.loss(step, loss_of(img, txt, txt_b, scale))
        scaler.scale(loss).backward() if scaler.is_enabled() else loss.backward()
    return ctx.fault.loss(step, loss_value.detach())
