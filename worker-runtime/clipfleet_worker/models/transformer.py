"""Pre-norm transformer blocks shared by the ViT image tower and the text tower.

Module and parameter names follow open_clip's ResidualAttentionBlock
(ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj under transformer.resblocks.N), so
open_clip checkpoints map onto these towers key for key.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import KVCache, MultiheadSelfAttention


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (open_clip's LayerNormFp32).

    Stable under bf16/fp16 autocast, and on CPU autocast in torch 1.13, which
    otherwise refuses a bf16 input with float32 weights.
    """

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(x)): open_clip's block without layer scale or dropout."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, causal)
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, cache: KVCache) -> Tensor:
        """forward() for incremental decoding: x attends to the cached positions and itself (MultiheadSelfAttention.forward_cached)."""
        x = x + self.attn.forward_cached(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ResidualAttentionBlocks on batch-first [B, N, width] tokens."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        causal: bool = False,
        return_layers: tuple[int, ...] = (),
    ) -> tuple[Tensor, list[Tensor]]:
        """Run all blocks; also return the outputs of the blocks whose indices are in return_layers."""
        taken: list[Tensor] = []
        for i, block in enumerate(self.resblocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, causal, use_reentrant=False)
            else:
                x = block(x, attn_mask, causal)
            taken.extend(x for _ in range(return_layers.count(i)))
        return x, taken

    def init_clip_(self) -> None:
        """OpenAI CLIP's text-transformer init (also used by open_clip): std scaled by width and depth."""
        depth = len(self.resblocks)
        proj_std = (self.width**-0.5) * ((2 * depth) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def resample_pos_embed(pos: Tensor, new_grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Bicubic-resize a ViT positional embedding [prefix + h*w, C] (square source grid) to new_grid.

    Lets a tower trained at one resolution run (and load) at another, as timm's resample_abs_pos_embed.
    """
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    side = int(round(grid.shape[0] ** 0.5))
    assert side * side == grid.shape[0], f"positional embedding grid {grid.shape[0]} is not square"
    if (side, side) == tuple(new_grid):
        return pos
    g = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=new_grid, mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, g], dim=0)
