"""The CLIP model: an image tower and a text tower projected into one embedding space, plus a temperature.

State-dict layout is open_clip's CustomTextCLIP: `visual.*`, `text.*`,
`logit_scale`. Built from the spec's ModelSpec dict; initialisation draws
only from torch's global RNG, so torch.manual_seed(s) before build_clip
gives bit-identical weights on every rank and every restart.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .config import MciConfig, TextConfig, VitConfig, image_family
from .mci import MCi
from .text import TextTransformer
from .vit import VisionTransformer

# open_clip's initial temperature: logits are multiplied by exp(logit_scale) = 1/0.07.
INIT_LOGIT_SCALE = math.log(1 / 0.07)


def build_image_tower(image_cfg: Mapping[str, Any], embed_dim: int | None) -> nn.Module:
    """A ViT or MCi tower from an ImageTowerSpec dict; embed_dim=None builds a dense backbone (no pooling head)."""
    if image_family(image_cfg) == "vit":
        return VisionTransformer(VitConfig.from_spec(image_cfg), embed_dim)
    return MCi(MciConfig.from_spec(image_cfg), embed_dim)


def build_text_tower(text_cfg: Mapping[str, Any], vocab_size: int, embed_dim: int) -> TextTransformer:
    """A text transformer from a TextTowerSpec dict, sized for the tokenizer's vocabulary."""
    return TextTransformer(TextConfig.from_spec(text_cfg), vocab_size, embed_dim)


class CLIP(nn.Module):
    """Two towers and a learnable log-temperature `logit_scale` (init log(1/0.07), clamp it after each step)."""

    def __init__(self, visual: nn.Module, text: TextTransformer, init_logit_scale: float = INIT_LOGIT_SCALE) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)

    @property
    def context_length(self) -> int:
        """Token sequence length the text tower accepts."""
        return self.text.context_length

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for activation memory in both towers (ViT and text; MCi does not support it)."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Images [B, 3, H, W] -> embeddings [B, D], L2-normalised unless normalize=False."""
        feats = self.visual(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """Token ids [B, L] -> embeddings [B, D], L2-normalised unless normalize=False."""
        feats = self.text(tokens)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images: Tensor | None, tokens: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """(normalised image feats, normalised text feats, exp(logit_scale)), as open_clip; either input may be None."""
        img = self.encode_image(images) if images is not None else None
        txt = self.encode_text(tokens) if tokens is not None else None
        return img, txt, self.logit_scale.exp()

    def image_tower_state_dict(self) -> dict[str, Tensor]:
        """Only the image tower's tensors, keys kept as `visual.*` (what dense fine-tuning loads)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("visual.")}


def build_clip(model_cfg: Mapping[str, Any], vocab_size: int) -> CLIP:
    """A CLIP from a ModelSpec dict (model.image, model.text, model.embed_dim) and the tokenizer's vocab size."""
    embed_dim = model_cfg.get("embed_dim")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0:
        raise ConfigError(f"expected a positive integer, got {embed_dim!r}", "model.embed_dim")
    for key in ("image", "text"):
        if not isinstance(model_cfg.get(key), Mapping):
            raise ConfigError("required section is missing", f"model.{key}")
    visual = build_image_tower(model_cfg["image"], embed_dim)
    text = build_text_tower(model_cfg["text"], vocab_size, embed_dim)
    return CLIP(visual, text)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar `.module`) wrapper, else the model itself."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def params_sha256(model: nn.Module | Mapping[str, Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every state-dict tensor in sorted key order.

    Proves bit-exact restarts: equal hashes mean equal weights and buffers,
    whatever device or DDP wrapper they came from.
    """
    state = unwrap_model(model).state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def count_params(module: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
