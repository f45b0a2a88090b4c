"""MCi image tower: the MobileCLIP hybrid (FastViT family), after apple/ml-mobileclip mobileclip/models/mci.py.

Layout: a MobileOne conv stem (stride 4); stages 1-3 of RepMixer blocks
(depthwise-conv token mixing + ConvFFN); stage 4 of attention blocks behind
a conditional positional encoding (RepCPE); a stride-2 large-kernel patch
embedding between stages; then an SE-gated depthwise expansion, global
average pooling and a linear projection. Multi-branch blocks train as
branches and can be folded into single convs for inference
(`reparameterize_mci`), as MobileCLIP ships them. Layer scales are 1-D so the
no-weight-decay rule (ndim < 2) covers them.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import scaled_dot_product_attention
from .config import MciConfig

_LAYER_SCALE_INIT = 1e-5


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)),
                ("bn", nn.BatchNorm2d(cout)),
            ]
        )
    )


def _fuse_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm that follows a bias-free conv with `kernel` into (kernel, bias)."""
    t = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


def _identity_kernel(channels: int, groups: int, k: int, like: Tensor) -> Tensor:
    """The k x k grouped conv kernel computing the identity."""
    per_group = channels // groups
    w = torch.zeros(channels, per_group, k, k, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels, device=like.device)
    w[idx, idx % per_group, k // 2, k // 2] = 1.0
    return w


def _pad_to(kernel: Tensor, k: int) -> Tensor:
    p = (k - kernel.shape[-1]) // 2
    return F.pad(kernel, [p, p, p, p])


def _fused_conv(src: nn.Conv2d, kernel: Tensor, bias: Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(src.in_channels, src.out_channels, kernel.shape[-1], src.stride,
                     padding=kernel.shape[-1] // 2, groups=src.groups, bias=True)
    conv.weight.data.copy_(kernel)
    conv.bias.data.copy_(bias)
    return conv.to(kernel.device)


class SEBlock(nn.Module):
    """Squeeze-excitation channel gate (MobileOne's SEBlock, rd_ratio 1/16)."""

    def __init__(self, dim: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        hidden = max(1, int(dim * rd_ratio))
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(w))))


class MobileOneBlock(nn.Module):
    """Sum of a BN skip, a 1x1 conv-BN scale branch and k x k conv-BN branches, then SE and GELU.

    `reparameterize` folds the branches into one k x k conv with identical eval-mode output.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, use_act: bool = True,
                 use_se: bool = False, use_scale_branch: bool = True, num_conv_branches: int = 1) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
        self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_scale = _conv_bn(cin, cout, 1, stride, groups) if k > 1 and use_scale_branch else None
        self.rbr_conv = nn.ModuleList([_conv_bn(cin, cout, k, stride, groups) for _ in range(num_conv_branches)])
        self.se = SEBlock(cout) if use_se else nn.Identity()
        self.act = nn.GELU() if use_act else nn.Identity()
        self.register_module("reparam_conv", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        out = self.rbr_skip(x) if self.rbr_skip is not None else 0
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        for branch in self.rbr_conv:
            out = out + branch(x)
        return self.act(self.se(out))

    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """(kernel, bias) of the single conv equal to the branch sum in eval mode."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        ref = next(self.parameters())
        kernel = torch.zeros(self.cout, self.cin // self.groups, self.k, self.k, dtype=ref.dtype, device=ref.device)
        bias = torch.zeros(self.cout, dtype=ref.dtype, device=ref.device)
        if self.rbr_skip is not None:
            kk, bb = _fuse_bn(_identity_kernel(self.cin, self.groups, self.k, ref), self.rbr_skip)
            kernel, bias = kernel + kk, bias + bb
        if self.rbr_scale is not None:
            kk, bb = _fuse_bn(self.rbr_scale.conv.weight, self.rbr_scale.bn)
            kernel, bias = kernel + _pad_to(kk, self.k), bias + bb
        for branch in self.rbr_conv:
            kk, bb = _fuse_bn(branch.conv.weight, branch.bn)
            kernel, bias = kernel + kk, bias + bb
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one conv (inference only; BN statistics are frozen into it)."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.fused_kernel_bias()
        template = nn.Conv2d(self.cin, self.cout, self.k, self.stride, groups=self.groups)
        self.reparam_conv = _fused_conv(template, kernel, bias)
        self.rbr_skip, self.rbr_scale, self.rbr_conv = None, None, nn.ModuleList()


class ReparamLargeKernelConv(nn.Module):
    """k x k conv-BN plus a 3x3 conv-BN (re-parameterisable), then GELU: the stride-2 patch embedding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int) -> None:
        super().__init__()
        self.lkb_origin = _conv_bn(cin, cout, k, stride, groups)
        self.small_conv = _conv_bn(cin, cout, 3, stride, groups)
        self.act = nn.GELU()
        self.register_module("reparam_conv", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.act(self.reparam_conv(x))
        return self.act(self.lkb_origin(x) + self.small_conv(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches into one k x k conv (inference only)."""
        if self.reparam_conv is not None:
            return
        k_big, b_big = _fuse_bn(self.lkb_origin.conv.weight, self.lkb_origin.bn)
        k_small, b_small = _fuse_bn(self.small_conv.conv.weight, self.small_conv.bn)
        kernel = k_big + _pad_to(k_small, k_big.shape[-1])
        self.reparam_conv = _fused_conv(self.lkb_origin.conv, kernel, b_big + b_small)
        del self.lkb_origin, self.small_conv


class RepMixer(nn.Module):
    """Token mixing x + ls * (dwconv_bn(x) - bn(x)): a depthwise conv in place of attention."""

    def __init__(self, dim: int, k: int = 3) -> None:
        super().__init__()
        self.dim, self.k = dim, k
        self.norm = MobileOneBlock(dim, dim, k, groups=dim, use_act=False, use_scale_branch=False,
                                   num_conv_branches=0)
        self.mixer = MobileOneBlock(dim, dim, k, groups=dim, use_act=False)
        self.layer_scale = nn.Parameter(_LAYER_SCALE_INIT * torch.ones(dim))
        self.register_module("reparam_conv", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale.view(-1, 1, 1) * (self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold skip, mixer and norm into one depthwise conv (inference only)."""
        if self.reparam_conv is not None:
            return
        k_mix, b_mix = self.mixer.fused_kernel_bias()
        k_norm, b_norm = self.norm.fused_kernel_bias()
        ls = self.layer_scale
        kernel = _identity_kernel(self.dim, self.dim, self.k, ls) + ls.view(-1, 1, 1, 1) * (k_mix - k_norm)
        template = nn.Conv2d(self.dim, self.dim, self.k, groups=self.dim)
        self.reparam_conv = _fused_conv(template, kernel, ls * (b_mix - b_norm))
        del self.mixer, self.norm, self.layer_scale


class ConvFFN(nn.Module):
    """Depthwise 7x7 conv-BN, then a 1x1-conv MLP with GELU (FastViT's ConvFFN)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv = _conv_bn(dim, dim, 7, 1, groups=dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    """RepMixer token mixing, then a layer-scaled ConvFFN residual (stages 1-3)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale = nn.Parameter(_LAYER_SCALE_INIT * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale.view(-1, 1, 1) * self.convffn(x)


class ConvAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a [B, C, H, W] map (bias-free qkv, as FastViT)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class AttentionBlock(nn.Module):
    """BN, attention and ConvFFN, both residuals layer-scaled (stage 4)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.token_mixer = ConvAttention(dim, heads)
        self.convffn = ConvFFN(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(_LAYER_SCALE_INIT * torch.ones(dim))
        self.layer_scale_2 = nn.Parameter(_LAYER_SCALE_INIT * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.layer_scale_1.view(-1, 1, 1) * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2.view(-1, 1, 1) * self.convffn(x)


class RepCPE(nn.Module):
    """Conditional positional encoding x + dwconv7x7(x): positions from local context, any input size."""

    def __init__(self, dim: int, k: int = 7) -> None:
        super().__init__()
        self.dim = dim
        self.pe = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
        self.register_module("reparam_conv", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.pe(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the residual into the conv (inference only)."""
        if self.reparam_conv is not None:
            return
        kernel = self.pe.weight + _identity_kernel(self.dim, self.dim, self.pe.kernel_size[0], self.pe.weight)
        self.reparam_conv = _fused_conv(self.pe, kernel, self.pe.bias)
        del self.pe


class MciStage(nn.Module):
    """Optional stride-2 patch embedding, optional RepCPE, then the stage's blocks."""

    def __init__(self, cin: int, dim: int, depth: int, heads: int, mlp_ratio: float, first: bool,
                 attention_stage: bool) -> None:
        super().__init__()
        if first:
            self.downsample: nn.Module = nn.Identity()
        else:
            # FastViT groups the stride-2 conv by input channel; gcd keeps that for the
            # usual doubling widths and still allows others (mci-tiny's 32 -> 48).
            self.downsample = nn.Sequential(ReparamLargeKernelConv(cin, dim, 7, 2, groups=math.gcd(cin, dim)),
                                            MobileOneBlock(dim, dim, 1))
        self.pos: nn.Module = RepCPE(dim) if attention_stage else nn.Identity()
        if attention_stage:
            blocks = [AttentionBlock(dim, heads, mlp_ratio) for _ in range(depth)]
        else:
            blocks = [RepMixerBlock(dim, mlp_ratio) for _ in range(depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.pos(self.downsample(x)))


class MCi(nn.Module):
    """The MCi image tower; `forward` gives the pooled embedding, `forward_features` the stride 4/8/16/32 maps.

    With embed_dim=None it is a dense backbone without conv_exp/proj.
    """

    HEAD_NAMES = ("conv_exp", "proj")

    def __init__(self, cfg: MciConfig, embed_dim: int | None) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = nn.Sequential(
            MobileOneBlock(3, w[0], 3, stride=2),
            MobileOneBlock(w[0], w[0], 3, stride=2, groups=w[0]),
            MobileOneBlock(w[0], w[0], 1),
        )
        self.stages = nn.ModuleList(
            MciStage(w[max(i - 1, 0)], w[i], cfg.layers[i], cfg.heads, cfg.mlp_ratio, first=i == 0,
                     attention_stage=i == 3)
            for i in range(4)
        )
        self.embed_dim = embed_dim
        if embed_dim is not None:
            self.conv_exp = MobileOneBlock(w[3], 2 * w[3], 3, groups=w[3], use_se=True)
            self.proj = nn.Parameter((2 * w[3]) ** -0.5 * torch.randn(2 * w[3], embed_dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.out_channels = list(w)
        self.out_strides = [4, 8, 16, 32]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not implemented for MCi (small enough not to need it); present so towers share one interface."""
        assert not enable, "gradient checkpointing is not implemented for the MCi tower"

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Images [B, 3, H, W] -> the four stage outputs [B, widths[i], H/s, W/s], s = 4, 8, 16, 32."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> un-normalised embeddings [B, embed_dim] (average pool, projection)."""
        assert self.embed_dim is not None, "dense backbone has no pooling head; use forward_features"
        x = self.conv_exp(self.forward_features(x)[-1])
        return x.mean(dim=(-2, -1)) @ self.proj


def reparameterize_mci(model: nn.Module) -> nn.Module:
    """Fold every multi-branch block of an MCi tower (or a model containing one) for inference.

    Puts the model in eval mode (BN statistics are baked in); the result
    computes the same function but is no longer trainable as MCi, and its
    state dict has different keys, so checkpoint before, not after.
    """
    model.eval()
    for m in list(model.modules()):
        if isinstance(m, (MobileOneBlock, ReparamLargeKernelConv, RepMixer, RepCPE)):
            m.reparameterize()
    return model
