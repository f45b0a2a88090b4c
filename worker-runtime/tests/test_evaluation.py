"""Retrieval (multi-caption), zero-shot, segmentation and depth metrics against brute force / hand values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipfleet_worker.evaluation import (
    add_sums,
    depth_metric_sums,
    depth_metrics,
    depth_metrics_from_sums,
    retrieval_metrics,
    seg_class_iou,
    seg_confusion,
    seg_metrics,
    zero_shot_accuracy,
    zero_shot_classifier,
    zero_shot_counts,
)
from clipfleet_worker.models import build_clip, resolve_model_cfg
from clipfleet_worker.tokenizers import ByteTokenizer


def brute_force_retrieval(img, txt, txt_to_img, ks):
    """CLIP_benchmark's definition on the full score matrix: a hit if any positive is in the top k."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    scores = txt @ img.T  # [Nt, Ni]
    positive = txt_to_img[:, None] == torch.arange(img.shape[0])[None, :]
    out = {}
    for k in ks:
        top_img = scores.topk(k, dim=1).indices
        out[f"t2i_R@{k}"] = positive.gather(1, top_img).any(1).float().mean().item()
        top_txt = scores.T.topk(k, dim=1).indices
        out[f"i2t_R@{k}"] = positive.T.gather(1, top_txt).any(1).float().mean().item()
    return out


def test_retrieval_matches_brute_force_with_two_captions_per_image():
    torch.manual_seed(0)
    n_img, d = 23, 8
    img = torch.randn(n_img, d)
    txt_to_img = torch.arange(n_img).repeat_interleave(2)
    txt = img[txt_to_img] + 1.2 * torch.randn(2 * n_img, d)  # noisy captions: a mix of hits and misses
    ks = (1, 5, 10)
    got = retrieval_metrics(img, txt, txt_to_img, ks=ks, chunk=4)  # many chunks, a ragged last one
    want = brute_force_retrieval(img, txt, txt_to_img, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert 0 < got["i2t_R@1"] < 1 and 0 < got["t2i_R@1"] < 1
    assert got["i2t_R@1"] <= got["i2t_R@5"] <= got["i2t_R@10"]
    assert got == retrieval_metrics(img, txt, txt_to_img, ks=ks, chunk=1000)


def test_retrieval_ranks_on_a_hand_made_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0]])  # caption 2 is of image 1 but looks like image 0
    txt_to_img = torch.tensor([0, 1, 1])
    m = retrieval_metrics(img, txt, txt_to_img, ks=(1, 2))
    assert m["t2i_R@1"] == pytest.approx(2 / 3) and m["t2i_R@2"] == 1.0
    assert m["i2t_R@1"] == pytest.approx(0.5)  # image 0's best text is caption 2 (not its own)
    assert m["i2t_R@2"] == 1.0
    assert m["t2i_mean_rank"] == pytest.approx((1 + 1 + 2) / 3)


def test_zero_shot_classifier_is_mean_of_normalised_template_embeddings():
    torch.manual_seed(0)
    model = build_clip(resolve_model_cfg("vit-tiny", "text-tiny", embed_dim=32), 259)
    tok = ByteTokenizer()
    templates = ["a photo of a {}.", "a drawing of a {}."]
    w = zero_shot_classifier(model, tok, ["cat", "dog", "car"], templates, context_length=77)
    assert w.shape == (32, 3)
    assert torch.allclose(w.norm(dim=0), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        emb = model.encode_text(tok(["a photo of a dog.", "a drawing of a dog."], 77))
    assert torch.allclose(w[:, 1], F.normalize(emb.mean(0), dim=-1), atol=1e-6)


def test_zero_shot_accuracy_top1_top5():
    classifier = torch.eye(6)  # class c <-> axis c
    img = torch.tensor([
        [1.0, 0.5, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 0
        [1.0, 0.5, 0.0, 0.0, 0.0, 0.0],  # label 1: rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # label 0: rank 5 -> miss at 5
    ])
    labels = torch.tensor([0, 1, 0])
    acc = zero_shot_accuracy(img, classifier, labels, ks=(1, 5))
    assert acc == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    assert zero_shot_counts(img, classifier, labels) == {"top1": 1, "top5": 2, "count": 3}


def test_seg_metrics_with_an_absent_class():
    # 4 classes; class 3 appears in neither target nor prediction; class 2 only in the prediction.
    target = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 1, 1, 0]])
    conf = seg_confusion(pred, target, num_classes=4, ignore_index=255)
    assert conf.tolist() == [[1, 1, 1, 0], [0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    m = seg_metrics(conf)
    # IoU0 = 1/3, IoU1 = 4/5, IoU2 = 0/1; class 3 excluded
    assert m["mIoU"] == pytest.approx((1 / 3 + 4 / 5 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["mAcc"] == pytest.approx((1 / 3 + 1) / 2)
    iou = seg_class_iou(conf)
    assert iou[:3] == pytest.approx([1 / 3, 4 / 5, 0.0]) and math.isnan(iou[3])
    logits = F.one_hot(pred, 4).permute(2, 0, 1)[None].float()
    assert torch.equal(seg_confusion(logits, target[None], 4, 255), conf)
    assert torch.equal(seg_confusion(pred, target, 4, 255) * 2, conf + conf)  # accumulable


def test_depth_metrics_on_hand_computed_arrays():
    target = torch.tensor([[[2.0, 4.0], [1.0, 0.0]],  # image 0: 3 valid pixels
                           [[1.0, 1.0], [1.0, 1.0]]])  # image 1
    pred = torch.tensor([[[2.0, 5.0], [2.0, 9.0]],
                         [[1.0, 1.0], [1.0, 1.0]]])
    m = depth_metrics(pred, target)
    rmse0 = math.sqrt((0 + 1 + 1) / 3)
    absrel0 = (0 + 0.25 + 1.0) / 3
    delta1_0 = 1 / 3  # ratios 1, 1.25 (not < 1.25) and 2
    assert m["rmse"] == pytest.approx((rmse0 + 0) / 2)
    assert m["abs_rel"] == pytest.approx((absrel0 + 0) / 2)
    assert m["delta1"] == pytest.approx((delta1_0 + 1) / 2)
    assert m["delta2"] == pytest.approx((2 / 3 + 1) / 2)  # 1.25 < 1.5625, 2 is not
    assert m["delta3"] == pytest.approx((2 / 3 + 1) / 2)  # 2 > 1.953
    # Accumulating per-image sums over batches gives the same averages.
    s = add_sums(depth_metric_sums(pred[:1], target[:1]), depth_metric_sums(pred[1:], target[1:]))
    assert depth_metrics_from_sums(s) == pytest.approx(m)
    assert s["count"] == 2
    # An explicit valid mask (e.g. the Eigen crop) replaces target > 0; an empty image is skipped.
    valid = torch.zeros_like(target, dtype=torch.bool)
    valid[0, 0, 0] = True
    assert depth_metrics(pred, target, valid) == pytest.approx(
        {"rmse": 0.0, "abs_rel": 0.0, "delta1": 1.0, "delta2": 1.0, "delta3": 1.0})
