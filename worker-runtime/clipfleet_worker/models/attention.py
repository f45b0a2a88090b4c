"""The one attention kernel shared by the image and text towers.

torch >= 2.0 has F.scaled_dot_product_attention (fused, memory-efficient on
GPU); torch 1.13 (Debian's, used on our CPU nodes) does not, so the same
math is spelled out. Both paths take the same arguments and agree to float
rounding, so a checkpoint trained on one runs on the other.

On CUDA under deterministic algorithms (`train.deterministic`, the default)
the spelled-out math is used too: SDPA's flash and memory-efficient
backwards are non-deterministic there (torch only warns under warn_only),
which would break bit-exact restarts. `train.deterministic: false` gets the
fused kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SDPA = getattr(F, "scaled_dot_product_attention", None)


def _causal_keep(n_q: int, n_k: int, device: torch.device) -> Tensor:
    """Boolean [n_q, n_k] mask, True where query i may attend key j (j <= i)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v on [B, H, N, d] tensors: the fallback when SDPA is absent.

    attn_mask is boolean (True = may attend) or additive float, broadcastable to [B, H, Nq, Nk].
    """
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        scores = scores.masked_fill(~_causal_keep(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.matmul(scores.softmax(dim=-1), v)


def use_sdpa(has_sdpa: bool, device_type: str, deterministic: bool) -> bool:
    """Whether attention runs through torch's SDPA: when torch has it, except on CUDA with deterministic algorithms on."""
    return has_sdpa and not (device_type == "cuda" and deterministic)


def sdpa_in_use(device_type: str) -> bool:
    """Whether attention on this device type runs through SDPA now (torch has it; deterministic mode as set)."""
    return use_sdpa(_SDPA is not None, device_type, torch.are_deterministic_algorithms_enabled())


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Scaled dot-product attention on [B, H, N, d]; SDPA where use_sdpa says so, else attention_reference."""
    if _SDPA is None or not use_sdpa(True, q.device.type, torch.are_deterministic_algorithms_enabled()):
        return attention_reference(q, k, v, attn_mask, causal)
    if causal and attn_mask is not None:
        # SDPA refuses is_causal together with a mask: fold the causal part into the mask.
        keep = _causal_keep(q.shape[-2], k.shape[-2], q.device)
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & keep
        else:
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))
        causal = False
    return _SDPA(q, k, v, attn_mask=attn_mask, is_causal=causal)


class MultiheadSelfAttention(nn.Module):
    """Batch-first self-attention with nn.MultiheadAttention's parameter names and init.

    Same state-dict keys (in_proj_weight, in_proj_bias, out_proj.*) as
    nn.MultiheadAttention, so open_clip ViT/text checkpoints load unchanged,
    but it runs through `attention` (SDPA or the fallback).
    """

    def __init__(self, width: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        assert width % heads == 0, f"width {width} not divisible by heads {heads}"
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width)) if qkv_bias else None
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask, causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))

    def forward_cached(self, x: Tensor, cache: "KVCache") -> Tensor:
        """Incremental decoding: x [B, n, C] are the next n positions; they attend to every cached position and to
        each other in full (a prefix) or causally (n == 1, one new token), and their keys and values join the cache."""
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        k, v = cache.append(qkv[1], qkv[2])
        out = scaled_dot_product_attention(qkv[0], k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class KVCache:
    """One attention layer's keys and values [B, H, N, d] for incremental decoding, in buffers allocated once
    (capacity positions), so a step copies only its own positions."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Adds positions; returns every cached key and value so far (views of the buffers)."""
        n = k.shape[-2]
        if self.k is None or self.v is None:
            shape = (*k.shape[:-2], self.capacity, k.shape[-1])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        end = self.length + n
        assert end <= self.capacity, f"{end} positions exceed the cache's {self.capacity}"
        self.k[..., self.length : end, :] = k
        self.v[..., self.length : end, :] = v
        self.length = end
        return self.k[..., :end, :], self.v[..., :end, :]
