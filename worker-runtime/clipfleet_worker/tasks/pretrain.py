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
from typing import Any

import torch

from .. import openclip
from ..data.loader import Batch
from ..losses import ClipLoss, clip_loss_both
from ..models import build_clip
from ..optim import clamp_logit_scale
from ..tokenizers import build_tokenizer
from .common import TaskContext, load_init_weights, start_trainer
from .evaluate import evaluate_clip
from .loop import compiled_forward, run_training


def run(ctx: TaskContext) -> None:
    cfg, a = ctx.cfg, ctx.assignment
    train = cfg["train"]
    device = ctx.device
    torch.manual_seed(int(cfg["seed"]))
    tokenizer = build_tokenizer(cfg["model"]["tokenizer"])
    context_length = int(cfg["model"]["text"]["context_length"])
    model = build_clip(cfg["model"], tokenizer.vocab_size).to(device)
    loss_fn = ClipLoss(rank=ctx.rank, world_size=ctx.world_size)

    def init_fresh() -> None:
        if (cfg.get("init") or {}).get("kind") == "checkpoint":
            # Continue from a CLIP: an earlier stage's, another job's, or open_clip weights imported at submit.
            model.load_state_dict(openclip.fit_state(load_init_weights(a), model.state_dict(), a.init.dir))

    optimizer, scaler = start_trainer(ctx, model, init_fresh)
    print(f"clipfleet worker: phase restored at {time.time():.3f}", flush=True)

    micro = int(train.get("micro_batch") or int(a.per_rank_batch))
    both = cfg["data"].get("caption_mode") == "both"
    eval_cfg = cfg.get("eval")
    forward = compiled_forward(ctx, model)

    def forward_backward(batch: Batch, step: int) -> torch.Tensor:
        tokens_b = batch.tokens_b if both else None
        return _forward_backward(model, forward, loss_fn, batch.images, batch.tokens, tokens_b, batch.valid, micro, scaler, ctx, step)

    def temperature(batch: Batch) -> tuple[dict[str, Any], str]:
        t = float(model.logit_scale.detach().exp())
        return {"temperature": t}, f" logit_scale {t:.2f}"

    at_end = eval_cfg and eval_cfg.get("at_end", True)
    run_training(ctx, model, optimizer, scaler, "pretrain", lambda texts: tokenizer(texts, context_length), forward_backward,
                 evaluate=lambda s: evaluate_clip(ctx, model, tokenizer, s),
                 evaluate_at_end=(lambda s: _evaluate(ctx, model, tokenizer, s)) if at_end else None,
                 after_step=lambda: clamp_logit_scale(model), step_extra=temperature)


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
