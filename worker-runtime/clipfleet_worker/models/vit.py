"""ViT image tower, numerically the open_clip VisionTransformer (class-token pooling, ln_pre, no QuickGELU).

Parameter names match open_clip (conv1, class_embedding, positional_embedding,
ln_pre, transformer.resblocks.N.*, ln_post, proj) so its ViT checkpoints load
directly into `visual.`; init is open_clip's (which keeps PyTorch defaults
for the blocks and scale*randn for the embeddings and projection).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import VitConfig
from .transformer import LayerNorm, Transformer, resample_pos_embed


def evenly_spaced_layers(depth: int, n: int = 4) -> tuple[int, ...]:
    """Indices of n blocks ending at the last, evenly spaced (12 -> 2, 5, 8, 11), repeated when depth < n."""
    return tuple(max(0, -(-(i + 1) * depth // n) - 1) for i in range(n))


class VisionTransformer(nn.Module):
    """ViT: patch conv, class token, learned positions, pre-norm blocks; `forward` gives the pooled embedding.

    With embed_dim=None the tower is a dense backbone: no ln_post/proj (the
    pooling head), only `forward_features`.
    """

    # Top-level parameters used only by the pooled embedding; dense backbones omit them.
    HEAD_NAMES = ("ln_post", "proj")

    def __init__(self, cfg: VitConfig, embed_dim: int | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch
        scale = cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch, stride=cfg.patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid * self.grid + 1, cfg.width))
        self.ln_pre = LayerNorm(cfg.width)
        self.transformer = Transformer(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.embed_dim = embed_dim
        if embed_dim is not None:
            self.ln_post = LayerNorm(cfg.width)
            self.proj = nn.Parameter(scale * torch.randn(cfg.width, embed_dim))
        self.feature_layers = evenly_spaced_layers(cfg.depth)
        self.out_channels = [cfg.width] * 4
        self.out_strides = [cfg.patch] * 4

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory, about a third more compute."""
        self.transformer.grad_checkpointing = enable

    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.conv1(x)
        hw = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding
        if hw != (self.grid, self.grid):
            pos = resample_pos_embed(pos, hw)
        return self.ln_pre(x + pos.to(x.dtype)), hw

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> un-normalised embeddings [B, embed_dim] from the class token."""
        assert self.embed_dim is not None, "dense backbone has no pooling head; use forward_features"
        tokens, _ = self._embed(x)
        tokens, _ = self.transformer(tokens)
        return self.ln_post(tokens[:, 0]) @ self.proj

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Feature maps [B, width, H/patch, W/patch] after the blocks in `feature_layers` (for dense heads)."""
        tokens, (h, w) = self._embed(x)
        _, taken = self.transformer(tokens, return_layers=self.feature_layers)
        return [t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w) for t in taken]
