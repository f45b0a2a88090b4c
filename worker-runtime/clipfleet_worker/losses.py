"""Losses: CLIP's contrastive loss over a data-parallel global batch, and dense (segmentation, depth) losses.

How ranks combine (the open_clip #616/#894 question). Each rank computes
ClipLoss on its local rows against the gathered global batch and calls
backward; the gather is differentiable and its backward SUMS the gradients
that every rank's loss sends to this rank's features. Then:

    all_reduce-AVERAGE of parameter gradients over ranks (what DDP does)
        == gradient of the single-process loss on the whole global batch.

Proof sketch: with W ranks the per-rank losses are scaled so that
mean_r L_r = L_global. Rank r's gradient is sum_s dL_s/df_r * df_r/dtheta
(the gather's backward adds every rank's contribution to f_r), so
sum_r grad_r = sum_s dL_s/dtheta = W * dL_global/dtheta, and the average is
exact; parameters used outside the gather (logit_scale) get dL_r/dtheta on
each rank, whose average is again dL_global/dtheta. So: average gradients
(never sum), and report the all-reduced average of the per-rank losses as
the global loss. The test tests/test_losses.py checks this on 2 gloo ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError


def _gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x from every rank, differentiably (backward sums the gradients sent to each piece)."""
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def _gather_no_grad(x: Tensor) -> list[Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over logits = logit_scale * img @ txt.T, data-parallel as open_clip.

    local_loss: each rank scores its B rows against the W*B gathered columns
    (labels arange(B) + B*rank) instead of the full W*B x W*B matrix.
    gather_with_grad: gather through autograd (required with local_loss;
    without it the gradients of other ranks' losses are lost). Every rank
    must pass the same B (pad and mask instead). `valid` ([B] bool) marks
    rows to exclude (undecodable samples): their rows and columns leave the
    softmax and the loss averages over the valid rows of the global batch.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_loss: bool = True,
                 gather_with_grad: bool = True) -> None:
        super().__init__()
        if world_size > 1 and local_loss and not gather_with_grad:
            raise ConfigError("local_loss without gather_with_grad drops the gradient of other ranks' losses; "
                              "set gather_with_grad=True", "loss.gather_with_grad")
        self.rank = rank
        self.world_size = world_size
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self._labels: dict[tuple[torch.device, int], Tensor] = {}

    def _gather(self, x: Tensor) -> Tensor:
        if self.world_size == 1:
            return x
        if self.gather_with_grad:
            return _gather_with_grad(x)
        # Only local rows carry gradient; scaling it by W restores the exact averaged gradient
        # (each rank holds the same full loss, so the other ranks' terms equal this one's).
        parts = _gather_no_grad(x)
        parts[self.rank] = _ScaleGrad.apply(x, float(self.world_size))
        return torch.cat(parts, dim=0)

    def _local_labels(self, n: int, device: torch.device) -> Tensor:
        key = (device, n)
        if key not in self._labels:
            offset = n * self.rank if self.local_loss else 0
            self._labels[key] = torch.arange(n, device=device) + offset
        return self._labels[key]

    def logits(self, img: Tensor, txt: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits_per_image, logits_per_text, gathered img, gathered txt): this rank's rows (local_loss) or all."""
        all_img, all_txt = self._gather(img), self._gather(txt)
        if self.local_loss or self.world_size == 1:  # open_clip's exact arithmetic in both cases
            return logit_scale * img @ all_txt.T, logit_scale * txt @ all_img.T, all_img, all_txt
        per_image = logit_scale * all_img @ all_txt.T
        return per_image, per_image.T, all_img, all_txt

    def forward(self, img: Tensor, txt: Tensor, logit_scale: Tensor, valid: Tensor | None = None) -> Tensor:
        """Loss of this rank: open_clip's value when all rows are valid; mean over ranks = global loss."""
        per_image, per_text, _, _ = self.logits(img, txt, logit_scale)
        labels = self._local_labels(per_image.shape[0], img.device)
        col_valid = None
        if valid is not None:
            col_valid = valid.to(torch.bool)
            if self.world_size > 1:
                col_valid = torch.cat(_gather_no_grad(col_valid.to(torch.uint8)), 0).to(torch.bool)
        if col_valid is None or bool(col_valid.all()):
            return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
        n = img.shape[0]
        row_valid = col_valid[n * self.rank: n * (self.rank + 1)] if self.local_loss else col_valid
        # Valid rows lose the invalid columns; invalid rows keep finite logits (weight 0) so no NaN appears.
        drop = row_valid[:, None] & ~col_valid[None, :]
        weight = row_valid.to(per_image.dtype)
        ce_img = F.cross_entropy(per_image.masked_fill(drop, float("-inf")), labels, reduction="none")
        ce_txt = F.cross_entropy(per_text.masked_fill(drop, float("-inf")), labels, reduction="none")
        n_valid = col_valid.sum().clamp_min(1).to(per_image.dtype)
        # Sum of this rank's valid rows over the global valid count, times W when each rank
        # holds only its rows, so that the mean over ranks is the global mean.
        scale = self.world_size if self.local_loss else 1
        return ((ce_img * weight).sum() + (ce_txt * weight).sum()) * scale / (2 * n_valid)


def clip_loss_both(loss_fn: ClipLoss, img: Tensor, txt_a: Tensor, txt_b: Tensor, logit_scale: Tensor,
                   valid_a: Tensor | None = None, valid_b: Tensor | None = None) -> Tensor:
    """caption_mode "both": one contrastive loss per caption set against the same images, summed (MobileCLIP DR)."""
    return loss_fn(img, txt_a, logit_scale, valid_a) + loss_fn(img, txt_b, logit_scale, valid_b)


def sanitize_seg_target(target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, int]:
    """Map class ids outside [0, num_classes) (other than ignore_index) to ignore_index; also return their count.

    The count feeds StepReport.out_of_range_labels: a wrong dense.num_classes shows up instead of crashing.
    """
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    count = int(bad.sum())
    return (target.masked_fill(bad, ignore_index) if count else target), count


def seg_loss(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Pixel cross-entropy [B, C, H, W] vs [B, H, W], mean over non-ignored pixels (0, not NaN, if none)."""
    total = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp_min(1)


def _depth_pairs(pred: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    pred = pred.reshape(target.shape)  # [B, 1, H, W] head output vs [B, H, W] or [B, 1, H, W] targets
    mask = (target > 0) if valid is None else valid.reshape(target.shape).to(torch.bool)
    return pred[mask], target[mask]


def silog_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None, lambd: float = 0.85) -> Tensor:
    """Scale-invariant log loss sqrt(mean(d^2) - lambd * mean(d)^2), d = log pred - log target (Eigen et al.).

    lambd 0.85 as BTS/AdaBins (without their x10 factor, a constant that Adam ignores);
    valid defaults to target > 0.
    """
    p, t = _depth_pairs(pred, target, valid)
    if p.numel() == 0:
        return pred.sum() * 0.0
    d = torch.log(p.clamp_min(1e-6)) - torch.log(t)
    return torch.sqrt((d.square().mean() - lambd * d.mean().square()).clamp_min(1e-8))


def l1_depth_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean absolute depth error over valid pixels (valid defaults to target > 0)."""
    p, t = _depth_pairs(pred, target, valid)
    if p.numel() == 0:
        return pred.sum() * 0.0
    return (p - t).abs().mean()


def depth_loss(kind: str, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """The loss named by dense.depth_loss ("silog" or "l1")."""
    if kind == "silog":
        return silog_loss(pred, target, valid)
    if kind == "l1":
        return l1_depth_loss(pred, target, valid)
    raise ConfigError(f'expected "silog" or "l1", got {kind!r}', "dense.depth_loss")
