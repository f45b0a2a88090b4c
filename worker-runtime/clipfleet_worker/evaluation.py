"""Evaluation metrics with bounded memory: retrieval, zero-shot classification, segmentation, depth.

Retrieval and zero-shot follow CLIP_benchmark / open_clip (several captions
per image; a hit at k means at least one positive in the top k). Scores are
computed chunk by chunk, so memory is O(chunk x N), never N x N (open_clip
#11, #436). Ranks count strictly better candidates, so ties go to the
positive. Dense metrics accumulate as sums and counts (a confusion matrix;
per-image depth sums) that ranks can all_reduce before the final division.
All rates are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def retrieval_metrics(img_feats: Tensor, txt_feats: Tensor, txt_to_img: Tensor, ks: Sequence[int] = (1, 5, 10),
                      chunk: int = 1024) -> dict[str, float]:
    """Image->text and text->image recall@k plus mean/median rank; txt_to_img[j] is the image of caption j.

    Keys: i2t_R@k, t2i_R@k, i2t_mean_rank, i2t_median_rank, t2i_mean_rank,
    t2i_median_rank (1-based; for i2t the best-ranked of the image's captions).
    Features are L2-normalised here, so raw or normalised embeddings both work.
    """
    img = F.normalize(img_feats.float(), dim=-1)
    txt = F.normalize(txt_feats.float(), dim=-1)
    txt_to_img = txt_to_img.to(img.device).long()
    t2i_ranks, i2t_ranks = [], []
    for s in range(0, txt.shape[0], chunk):
        scores = txt[s: s + chunk] @ img.T
        pos = scores.gather(1, txt_to_img[s: s + chunk, None])
        t2i_ranks.append((scores > pos).sum(1))
    for s in range(0, img.shape[0], chunk):
        scores = img[s: s + chunk] @ txt.T
        ids = torch.arange(s, s + scores.shape[0], device=img.device)
        is_pos = txt_to_img[None, :] == ids[:, None]
        best = scores.masked_fill(~is_pos, float("-inf")).max(1, keepdim=True).values
        i2t_ranks.append((scores > best).sum(1))
    out: dict[str, float] = {}
    for name, ranks in (("i2t", torch.cat(i2t_ranks)), ("t2i", torch.cat(t2i_ranks))):
        for k in ks:
            out[f"{name}_R@{k}"] = (ranks < k).float().mean().item()
        out[f"{name}_mean_rank"] = ranks.float().mean().item() + 1
        out[f"{name}_median_rank"] = math.floor(ranks.float().median().item()) + 1
    return out


# CLIP-style prompt templates for zero-shot classification when neither eval.templates
# nor the dataset's zeroshot_classification_templates.txt gives any.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def fill_template(template: str, name: str) -> str:
    """The prompt for one class: `{}` (open_clip) or `{c}` (CLIP_benchmark) replaced by its name."""
    return template.replace("{c}", name).replace("{}", name)


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str],
                         context_length: int) -> Tensor:
    """[D, num_classes] weights: per class, the mean of the normalised template embeddings, re-normalised.

    Templates contain "{}" or "{c}" for the class name ("a photo of a {}."), as EvalSpec.templates.
    """
    inner = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    device = next(inner.parameters()).device
    weights = []
    for name in classnames:
        tokens = tokenizer([fill_template(t, name) for t in templates], context_length).to(device)
        emb = inner.encode_text(tokens, normalize=True)
        weights.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(weights, dim=1)


def zero_shot_counts(img_feats: Tensor, classifier: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5),
                     chunk: int = 4096) -> dict[str, int]:
    """Correct-at-k counts ("top1", "top5", ...) and "count": sums that ranks can add up."""
    img = F.normalize(img_feats.float(), dim=-1)
    w = classifier.float().to(img.device)
    labels = labels.to(img.device).long()
    counts = {f"top{k}": 0 for k in ks}
    for s in range(0, img.shape[0], chunk):
        logits = 100.0 * img[s: s + chunk] @ w
        rank = (logits > logits.gather(1, labels[s: s + chunk, None])).sum(1)
        for k in ks:
            counts[f"top{k}"] += int((rank < k).sum())
    counts["count"] = int(img.shape[0])
    return counts


def zero_shot_accuracy(img_feats: Tensor, classifier: Tensor, labels: Tensor,
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of logits 100 * img @ classifier against integer labels: {"top1": ..., "top5": ...}."""
    counts = zero_shot_counts(img_feats, classifier, labels, ks)
    n = max(1, counts.pop("count"))
    return {key: value / n for key, value in counts.items()}


def seg_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Confusion matrix [num_classes, num_classes] (rows: target class, columns: predicted) as int64.

    pred is a label map [B, H, W] or logits [B, C, H, W]; pixels whose target is
    ignore_index or outside [0, num_classes) are not counted.
    """
    if pred.ndim == target.ndim + 1:
        pred = pred.argmax(dim=1)
    target = target.long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def _class_iou(conf: Tensor) -> Tensor:
    """Per-class IoU of a float confusion matrix; NaN where the class is in neither target nor prediction."""
    tp = conf.diag()
    union = conf.sum(1) + conf.sum(0) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def seg_class_iou(confusion: Tensor) -> list[float]:
    """IoU of each class (NaN where the class is in neither target nor prediction), as mmseg's per-class table."""
    return _class_iou(confusion.double()).tolist()


def seg_metrics(confusion: Tensor) -> dict[str, float]:
    """mIoU (mean over classes present in target or prediction, as mmseg's nanmean), mAcc, pixel_acc."""
    conf = confusion.double()
    tp, area_target = conf.diag(), conf.sum(1)
    iou = _class_iou(conf)
    present = ~iou.isnan()
    labelled = area_target > 0
    total = conf.sum()
    return {
        "mIoU": iou[present].mean().item() if present.any() else float("nan"),
        "mAcc": (tp[labelled] / area_target[labelled]).mean().item() if labelled.any() else float("nan"),
        "pixel_acc": (tp.sum() / total).item() if total > 0 else float("nan"),
    }


DEPTH_KEYS = ("rmse", "abs_rel", "delta1", "delta2", "delta3")


def depth_metric_sums(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> dict[str, float]:
    """Per-image depth metrics summed over the batch, plus "count" (images with a valid pixel).

    The NYUv2/KITTI protocol (Eigen et al.; BTS, AdaBins) computes each metric
    per image and averages over images; summing lets batches and ranks be
    combined exactly. valid defaults to target > 0 (add the Eigen crop / depth cap to it).
    """
    b = target.shape[0]
    p = pred.reshape(b, -1).double()
    g = target.reshape(b, -1).double()
    m = (g > 0) if valid is None else valid.reshape(b, -1).to(torch.bool)
    n = m.sum(1)
    has = n > 0
    nz = n.clamp_min(1)
    g_safe = torch.where(m, g, torch.ones_like(g))
    p_safe = torch.where(m, p, torch.ones_like(p))
    err = torch.where(m, p - g, torch.zeros_like(p))
    ratio = torch.maximum(p_safe / g_safe, g_safe / p_safe)
    per_image = {
        "rmse": (err.square().sum(1) / nz).sqrt(),
        "abs_rel": (err.abs() / g_safe).sum(1) / nz,
        "delta1": ((ratio < 1.25) & m).sum(1) / nz,
        "delta2": ((ratio < 1.25**2) & m).sum(1) / nz,
        "delta3": ((ratio < 1.25**3) & m).sum(1) / nz,
    }
    out = {k: v[has].sum().item() for k, v in per_image.items()}
    out["count"] = float(has.sum().item())
    return out


def add_sums(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """Key-wise sum of two sum dicts (accumulate batches)."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}


def depth_metrics_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
    """Averages over images from (possibly accumulated, all-reduced) depth_metric_sums."""
    n = sums.get("count", 0.0)
    return {k: (sums[k] / n if n else float("nan")) for k in DEPTH_KEYS}


def depth_metrics(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> dict[str, float]:
    """{"rmse", "abs_rel", "delta1", "delta2", "delta3"} of one batch, averaged over its images."""
    return depth_metrics_from_sums(depth_metric_sums(pred, target, valid))
