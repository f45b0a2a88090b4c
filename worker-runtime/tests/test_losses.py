"""Contrastive loss (single process and 2 gloo ranks vs the global-batch loss) and dense losses."""

from __future__ import annotations

import copy
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipfleet_worker.errors import ConfigError
from clipfleet_worker.losses import (
    ClipLoss,
    clip_loss_both,
    depth_loss,
    l1_depth_loss,
    sanitize_seg_target,
    seg_loss,
    silog_loss,
)
from clipfleet_worker.models import build_clip, resolve_model_cfg

GLOBAL_BATCH = 8


def open_clip_reference(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's single-process ClipLoss (get_logits with world_size 1), written out."""
    logits_per_image = scale * img @ txt.T
    logits_per_text = scale * txt @ img.T
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def features(n: int = 6, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    return img, txt, torch.tensor(1 / 0.07)


def test_single_process_equals_open_clip_exactly():
    img, txt, scale = features()
    ours = ClipLoss()(img, txt, scale)
    assert torch.equal(ours, open_clip_reference(img, txt, scale))
    assert torch.equal(ClipLoss()(img, txt, scale, valid=torch.ones(6, dtype=torch.bool)), ours)
    assert torch.equal(ClipLoss(local_loss=False)(img, txt, scale), ours)


def test_valid_mask_equals_loss_on_the_valid_subset_and_blocks_gradients():
    img, txt, scale = features()
    valid = torch.tensor([True, False, True, True, False, True])
    masked = ClipLoss()(img, txt, scale, valid=valid)
    subset = open_clip_reference(img[valid], txt[valid], scale)
    assert torch.allclose(masked, subset, atol=1e-6)
    masked.backward()
    assert torch.all(img.grad[~valid] == 0) and torch.all(txt.grad[~valid] == 0)
    assert torch.all(img.grad[valid].abs().sum(1) > 0)
    assert torch.isfinite(masked)


def test_both_captions_mode_sums_two_losses():
    img, txt_a, scale = features(seed=0)
    _, txt_b, _ = features(seed=1)
    loss = ClipLoss()
    assert torch.equal(clip_loss_both(loss, img, txt_a, txt_b, scale),
                       loss(img, txt_a, scale) + loss(img, txt_b, scale))


def test_local_loss_without_grad_gather_is_refused():
    with pytest.raises(ConfigError, match="gather_with_grad"):
        ClipLoss(rank=0, world_size=2, local_loss=True, gather_with_grad=False)


def _global_batch():
    g = torch.Generator().manual_seed(123)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    tokens = torch.zeros(GLOBAL_BATCH, 16, dtype=torch.long)
    tokens[:, 0] = 257
    tokens[:, 1:6] = torch.randint(1, 257, (GLOBAL_BATCH, 5), generator=g)
    tokens[:, 6] = 258
    return images, tokens


def _rank_main(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = build_clip(resolve_model_cfg("vit-tiny", "text-tiny", embed_dim=32), 259)
    images, tokens = _global_batch()
    per = GLOBAL_BATCH // world
    mine = slice(rank * per, (rank + 1) * per)
    # rank 0 drops 1 row, rank 1 drops 3: different valid counts per rank
    valid = torch.tensor([True, False, True, True, False, False, True, False])
    cases = [
        dict(local_loss=True, gather_with_grad=True, valid=None),
        dict(local_loss=True, gather_with_grad=True, valid=valid),
        dict(local_loss=False, gather_with_grad=True, valid=valid),
        dict(local_loss=False, gather_with_grad=False, valid=None),
    ]
    for case in cases:
        # What the trainer does: per-rank loss, backward, all_reduce-AVERAGE of the gradients.
        model = copy.deepcopy(base)
        img, txt, scale = model(images[mine], tokens[mine])
        loss_fn = ClipLoss(rank, world, local_loss=case["local_loss"], gather_with_grad=case["gather_with_grad"])
        v = case["valid"]
        loss = loss_fn(img, txt, scale, None if v is None else v[mine])
        loss.backward()
        reported = loss.detach().clone()
        dist.all_reduce(reported)
        reported /= world
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        # The reference: one process, the whole global batch (valid rows only), plain open_clip loss.
        ref = copy.deepcopy(base)
        keep = torch.ones(GLOBAL_BATCH, dtype=torch.bool) if v is None else v
        r_img, r_txt, r_scale = ref(images[keep], tokens[keep])
        ref_loss = open_clip_reference(r_img, r_txt, r_scale)
        ref_loss.backward()
        assert torch.allclose(reported, ref_loss.detach(), atol=1e-5), (case, reported, ref_loss)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), (case, name, (p.grad - q.grad).abs().max())
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_the_global_batch_loss_and_gradients():
    mp.spawn(_rank_main, args=(2, _free_port()), nprocs=2, join=True)


def test_seg_loss_ignores_pixels_and_sanitizes_targets():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, :] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(seg_loss(logits, target, 255), expected)
    all_ignored = torch.full((2, 4, 4), 255)
    assert seg_loss(logits.requires_grad_(), all_ignored, 255).item() == 0.0
    raw = torch.tensor([[0, 2, 3], [7, 255, -1]])
    fixed, bad = sanitize_seg_target(raw, num_classes=3, ignore_index=255)
    assert bad == 3 and fixed.tolist() == [[0, 2, 255], [255, 255, 255]]


def test_silog_and_l1_on_hand_computed_values():
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 = no ground truth
    pred = target * 2 + torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    # d = log 2 on every valid pixel: sqrt(d^2 - 0.85 d^2) = sqrt(0.15) * log 2
    assert silog_loss(pred, target).item() == pytest.approx(math.sqrt(0.15) * math.log(2), rel=1e-5)
    assert silog_loss(pred, target, lambd=1.0).item() == pytest.approx(1e-4, abs=1e-6)  # scale-invariant
    assert l1_depth_loss(pred, target).item() == pytest.approx((1 + 2 + 4) / 3)
    valid = torch.tensor([[True, False], [False, False]])
    assert l1_depth_loss(pred, target, valid).item() == pytest.approx(1.0)
    assert depth_loss("l1", pred, target).item() == pytest.approx((1 + 2 + 4) / 3)
    with pytest.raises(ConfigError, match="dense.depth_loss"):
        depth_loss("berhu", pred, target)


def test_silog_gradient_is_finite_at_a_perfect_prediction():
    target = torch.rand(1, 1, 4, 4) + 0.5
    pred = target.clone().requires_grad_()
    silog_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()
