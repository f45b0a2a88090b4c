"""Dense fine-tuning models: a CLIP image tower as backbone plus a UperNet-style decoder.

For a ViT, the four intermediate-block maps (all at stride `patch`) are
turned into a stride patch/4 .. 2*patch pyramid by deconvolutions and
pooling (BEiT/ViTDet-style simple pyramid, as mmseg's UperNet-for-ViT
configs); an MCi tower already yields a stride 4..32 pyramid. The decoder is
mmseg's UPerHead (pyramid pooling on the top level, FPN top-down path, fused
at the finest level) with GroupNorm instead of SyncBN: its statistics do
not depend on the per-rank batch, so results do not change with world size,
and batch-1 inputs work. Dropout is omitted so that the only randomness of a
step is the data, which keeps restarts bit-exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .clip import build_image_tower, unwrap_model
from .mci import MCi
from .transformer import resample_pos_embed
from .vit import VisionTransformer

DENSE_TASKS = ("finetune-seg", "finetune-depth")


class GroupNorm(nn.GroupNorm):
    """GroupNorm in float32, cast back to the input dtype (works under bf16 autocast, also on CPU in torch 1.13)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _norm(ch: int) -> GroupNorm:
    # Up to 32 groups but at least 4 channels each: the 1x1 pyramid-pooling branch normalises
    # over channels only, and a 1-channel group would flatten it to a constant.
    return GroupNorm(math.gcd(32, max(1, ch // 4)), ch)


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> GroupNorm -> ReLU: mmseg's ConvModule with our norm."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _norm(cout), nn.ReLU(inplace=True))


class VitSimplePyramid(nn.Module):
    """Four stride-p ViT maps -> strides p/4, p/2, p, 2p (4x and 2x deconvs, identity, 2x max-pool)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(width, width, 2, 2), _norm(width), nn.GELU(),
                                  nn.ConvTranspose2d(width, width, 2, 2))
        self.fpn2 = nn.ConvTranspose2d(width, width, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats)]


class PyramidIdentity(nn.Module):
    """Neck for towers that already produce a multi-scale pyramid (MCi)."""

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return feats


def _resize(x: Tensor, size: tuple[int, ...]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UperNetDecoder(nn.Module):
    """mmseg UPerHead without the classifier: PPM on the coarsest map, FPN, fuse at the finest scale."""

    def __init__(self, in_channels: list[int], channels: int, pool_scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        top = in_channels[-1]
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(top, channels, 1))
                                 for s in pool_scales)
        self.bottleneck = ConvNormAct(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Pyramid (fine to coarse) -> [B, channels, h0, w0] at the finest level's resolution."""
        top = feats[-1]
        psp = [top] + [_resize(p(top), top.shape[2:]) for p in self.ppm]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self.bottleneck(torch.cat(psp, 1))]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        return self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], 1))


class DenseModel(nn.Module):
    """backbone.forward_features -> neck -> UperNet decoder -> 1x1 head, upsampled to the input size.

    Segmentation returns logits [B, num_classes, H, W]; depth returns
    sigmoid(.) * max_depth, a positive depth map [B, 1, H, W] in (0, max_depth).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, decoder: UperNetDecoder, head: nn.Conv2d, task: str,
                 max_depth: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.decoder = decoder
        self.head = head
        self.task = task
        self.max_depth = max_depth
        self.backbone_frozen = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.decoder(self.neck(self.backbone.forward_features(x))))
        y = _resize(y, x.shape[-2:])
        return torch.sigmoid(y) * self.max_depth if self.task == "finetune-depth" else y

    def train(self, mode: bool = True) -> "DenseModel":
        """As nn.Module.train, but a frozen backbone stays in eval mode (its BN statistics stay frozen too)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def set_backbone_frozen(model: DenseModel, frozen: bool = True) -> None:
    """Freeze (or unfreeze) the backbone: no gradients, eval-mode normalisation; the head still trains."""
    model.backbone_frozen = frozen
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    model.train(model.training)


def build_dense_model(model_cfg: Mapping[str, Any], task: str, dense_cfg: Mapping[str, Any],
                      num_classes: int | None = None, freeze_backbone: bool = False) -> DenseModel:
    """Image backbone (model.image) + neck + UperNet decoder + a segmentation or depth head.

    num_classes (segmentation) defaults to dense.num_classes; the caller passes the
    dataset's classes.json count when the spec leaves it null.
    """
    if task not in DENSE_TASKS:
        raise ConfigError(f"expected one of {list(DENSE_TASKS)} for a dense model, got {task!r}", "task")
    backbone = build_image_tower(model_cfg["image"], embed_dim=None)
    neck: nn.Module = VitSimplePyramid(backbone.out_channels[0]) if model_cfg["image"]["family"] == "vit" \
        else PyramidIdentity()
    channels = dense_cfg["head_width"]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
        raise ConfigError(f"expected a positive integer, got {channels!r}", "dense.head_width")
    decoder = UperNetDecoder(list(backbone.out_channels), channels)
    if task == "finetune-seg":
        n = num_classes if num_classes is not None else dense_cfg.get("num_classes")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError(f"segmentation needs at least 2 classes, got {n!r}", "dense.num_classes")
        head = nn.Conv2d(channels, n, 1)
        max_depth = 0.0
    else:
        max_depth = float(dense_cfg["max_depth"])
        if not max_depth > 0:
            raise ConfigError(f"expected a positive number, got {dense_cfg['max_depth']!r}", "dense.max_depth")
        head = nn.Conv2d(channels, 1, 1)
    model = DenseModel(backbone, neck, decoder, head, task, max_depth)
    if freeze_backbone:
        set_backbone_frozen(model, True)
    return model


@dataclass
class TowerLoadReport:
    """What load_image_tower did: tensors loaded, checkpoint keys ignored, tensors resampled to a new size."""

    loaded: int
    dropped: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)


# Top-level names of every tower's pooling head (a backbone drops whichever it does not have).
_HEAD_NAMES = VisionTransformer.HEAD_NAMES + MCi.HEAD_NAMES


def _is_head_key(key: str, head_names: tuple[str, ...]) -> bool:
    return key.split(".", 1)[0] in head_names


def _family(state: Mapping[str, Any]) -> str:
    return "vit" if "conv1.weight" in state else "mci" if any(k.startswith("stem.") for k in state) else "unknown"


def load_image_tower(model: nn.Module, clip_state_dict: Mapping[str, Tensor]) -> TowerLoadReport:
    """Load the `visual.*` tensors of a CLIP state dict into a dense model's backbone (or a CLIP's visual).

    Drops the text tower, logit_scale and the pooling head (a backbone has
    none), strips a DDP `module.` prefix, and bicubic-resamples a ViT's
    positional embedding to the backbone's grid. Any other mismatch raises a
    ConfigError naming the missing/unexpected keys and mismatching shapes.
    """
    model = unwrap_model(model)
    tower = model.backbone if hasattr(model, "backbone") else model.visual
    state = dict(clip_state_dict)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    dropped = sorted(k for k in state if not k.startswith("visual."))
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        raise ConfigError("the checkpoint has no image tower (no 'visual.*' keys); is it a CLIP checkpoint?",
                          "init.ref")
    own = tower.state_dict()
    for k in sorted(visual):
        if k not in own and _is_head_key(k, _HEAD_NAMES):
            dropped.append("visual." + k)
            del visual[k]
    resampled = []
    pos = "positional_embedding"
    if pos in visual and pos in own and visual[pos].shape != own[pos].shape \
            and visual[pos].shape[-1] == own[pos].shape[-1]:
        side = int(round((own[pos].shape[0] - 1) ** 0.5))
        visual[pos] = resample_pos_embed(visual[pos], (side, side))
        resampled.append("visual." + pos)
    missing = sorted(set(own) - set(visual))
    unexpected = sorted(set(visual) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(visual[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(visual) if visual[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
                parts.append(f"{label}: {', '.join(items[:6])}{more}")
        ours, theirs = _family(own), _family(visual)
        if ours != theirs:
            parts.insert(0, f"the checkpoint holds a {theirs} tower, the model is {ours}")
        raise ConfigError("does not match the checkpoint's image tower; " + "; ".join(parts), "model.image")
    tower.load_state_dict(visual, strict=True)
    return TowerLoadReport(loaded=len(visual), dropped=dropped, resampled=resampled)
