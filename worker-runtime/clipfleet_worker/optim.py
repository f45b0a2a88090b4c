"""Optimisation: weight-decay parameter groups, AdamW from the spec, a stateless LR schedule, temperature clamp.

The schedule is a pure function of the global step (as open_clip's
cosine_lr), so a run resumed at step s uses exactly the LR an uninterrupted
run would, whatever the world size.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .accel import build_adamw
from .errors import ConfigError

# exp(logit_scale) is capped at 100, as open_clip clamps after every step.
MAX_LOGIT_SCALE = math.log(100)

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
_EMBEDDING_NAMES = ("token_embedding", "positional_embedding", "class_embedding")


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if (
                p.ndim < 2
                or isinstance(mod, (nn.Embedding, *_NORM_TYPES))
                or p_name.endswith("bias")
                or p_name in _EMBEDDING_NAMES
                or p_name == "logit_scale"
            ):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and no decay for ndim<2, biases, norms, embeddings and logit_scale.

    open_clip exempts ndim<2, bias/norm names and logit_scale; we also exempt
    the token and positional embeddings (2-D, decayed by open_clip), as
    timm and the ViT recipes do. Frozen parameters are left out.
    """
    no_decay = _no_decay_names(model)
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rest if name in no_decay else decay).append(p)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": rest, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, train_cfg: Mapping[str, Any], device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW over param_groups with lr, betas, eps and weight_decay from the spec's train section;
    fused on CUDA with torch >= 2 (accel.use_fused_adamw)."""
    betas = tuple(train_cfg["betas"])
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"expected two numbers in [0, 1), got {list(betas)}", "train.betas")
    return build_adamw(
        param_groups(model, float(train_cfg["weight_decay"])),
        device_type,
        lr=float(train_cfg["lr"]),
        betas=(float(betas[0]), float(betas[1])),
        eps=float(train_cfg["eps"]),
    )


def lr_at(step: int, train_cfg: Mapping[str, Any], total_steps: int) -> float:
    """LR for 0-based global step: warmup, then cosine / linear decay to min_lr, or constant.

    Warmup is open_clip's: lr * (step + 1) / warmup_steps, so step warmup_steps - 1
    reaches the full lr. Decay runs over the remaining steps and ends at min_lr.
    """
    base, floor = float(train_cfg["lr"]), float(train_cfg["min_lr"])
    warmup = int(train_cfg["warmup_steps"])
    schedule = train_cfg["schedule"]
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (base - floor)
    if schedule == "linear":
        return base - (base - floor) * progress
    raise ConfigError(f'expected "cosine", "constant" or "linear", got {schedule!r}', "train.schedule")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply one LR to every parameter group (call with lr_at(step, ...) before each step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def clamp_logit_scale(model: nn.Module) -> None:
    """Clamp logit_scale to [0, log(100)] in place (after each optimizer step, as open_clip)."""
    inner = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    inner.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
