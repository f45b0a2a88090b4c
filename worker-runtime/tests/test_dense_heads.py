"""Dense models: output shapes, loading only the image tower from a CLIP checkpoint, freezing."""

from __future__ import annotations

import pytest
import torch

from clipfleet_worker.errors import ConfigError
from clipfleet_worker.losses import seg_loss
from clipfleet_worker.models import (
    build_clip,
    build_dense_model,
    load_image_tower,
    resolve_model_cfg,
    set_backbone_frozen,
)

DENSE = {"num_classes": None, "ignore_index": 255, "depth_loss": "silog", "max_depth": 10.0, "head_width": 32}


def cfg(image: str = "vit-tiny", **image_overrides):
    c = resolve_model_cfg(image, "text-tiny", embed_dim=32)
    c["image"].update(image_overrides)
    return c


@pytest.mark.parametrize("image", ["vit-tiny", "mci-tiny"])
def test_seg_and_depth_outputs_at_input_resolution(image):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    seg = build_dense_model(cfg(image), "finetune-seg", DENSE, num_classes=5)
    assert seg(x).shape == (2, 5, 32, 32)
    depth = build_dense_model(cfg(image), "finetune-depth", DENSE)
    d = depth(x)
    assert d.shape == (2, 1, 32, 32) and (d > 0).all() and (d < 10.0).all()
    assert seg(torch.randn(1, 3, 48, 64)).shape == (1, 5, 48, 64)  # batch 1, other size


def test_vit_pyramid_levels():
    model = build_dense_model(cfg(), "finetune-seg", {**DENSE, "num_classes": 3})
    feats = model.neck(model.backbone.forward_features(torch.randn(1, 3, 32, 32)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 2, 4, 8, 16


def square_batch():
    """Four images with a bright 12x12 square at different places; the square is class 1."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(4, 3, 32, 32, generator=g)
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    for i, (r, c) in enumerate([(2, 3), (16, 18), (4, 20), (18, 2)]):
        x[i, :, r:r + 12, c:c + 12] += 1.0
        target[i, r:r + 12, c:c + 12] = 1
    return x, target


@pytest.mark.parametrize("image", ["vit-tiny", "mci-tiny"])
def test_seg_model_learns_a_tiny_batch(image):
    torch.manual_seed(0)
    model = build_dense_model(cfg(image), "finetune-seg", DENSE, num_classes=2)
    x, target = square_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = seg_loss(model(x), target, 255)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("image", ["vit-tiny", "mci-tiny"])
def test_load_image_tower_takes_only_the_visual_weights(image):
    torch.manual_seed(1)
    clip = build_clip(cfg(image), 259)
    torch.manual_seed(2)
    dense = build_dense_model(cfg(image), "finetune-depth", DENSE)
    head_before = {k: v.clone() for k, v in dense.state_dict().items() if not k.startswith("backbone.")}
    report = load_image_tower(dense, {("module." + k): v for k, v in clip.state_dict().items()})  # DDP prefix
    for k, v in dense.backbone.state_dict().items():
        assert torch.equal(v, clip.state_dict()["visual." + k]), k
    for k, v in dense.state_dict().items():
        if not k.startswith("backbone."):
            assert torch.equal(v, head_before[k]), k
    assert "logit_scale" in report.dropped and any(k.startswith("text.") for k in report.dropped)
    head = ["visual.proj", "visual.ln_post.weight"] if image == "vit-tiny" else ["visual.proj",
                                                                                  "visual.conv_exp.se.reduce.weight"]
    assert set(head) <= set(report.dropped)
    assert report.loaded == len(dense.backbone.state_dict())


def test_load_image_tower_resamples_vit_positions_for_a_new_resolution():
    clip = build_clip(cfg(), 259)
    dense = build_dense_model(cfg(image_size=64), "finetune-seg", DENSE, num_classes=3)
    report = load_image_tower(dense, clip.image_tower_state_dict())
    assert report.resampled == ["visual.positional_embedding"]
    assert dense.backbone.positional_embedding.shape == (1 + 8 * 8, 64)
    assert torch.equal(dense.backbone.positional_embedding[0], clip.visual.positional_embedding[0])


def test_load_image_tower_names_mismatches():
    dense = build_dense_model(cfg(), "finetune-seg", DENSE, num_classes=3)
    wider = build_clip(cfg(width=128), 259)
    with pytest.raises(ConfigError, match=r"model\.image: .*shape mismatch: .*conv1\.weight: checkpoint "
                                          r"\(128, 3, 8, 8\) vs model \(64, 3, 8, 8\)"):
        load_image_tower(dense, wider.state_dict())
    mci = build_clip(cfg("mci-tiny"), 259)
    with pytest.raises(ConfigError, match=r"the checkpoint holds a mci tower, the model is vit; "
                                          r"missing: class_embedding, conv1\.weight.*unexpected: stages\.0"):
        load_image_tower(dense, mci.state_dict())
    with pytest.raises(ConfigError, match="no image tower"):
        load_image_tower(dense, {"text.positional_embedding": torch.zeros(77, 64)})


def test_frozen_backbone_gets_no_gradients_and_keeps_bn_statistics():
    model = build_dense_model(cfg("mci-tiny"), "finetune-seg", DENSE, num_classes=3, freeze_backbone=True)
    model.train()
    assert model.training and not model.backbone.training
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mean_before = bn.running_mean.clone()
    seg_loss(model(torch.randn(2, 3, 32, 32)), torch.zeros(2, 32, 32, dtype=torch.long), 255).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert torch.equal(bn.running_mean, mean_before)
    set_backbone_frozen(model, False)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())


def test_dense_config_errors():
    with pytest.raises(ConfigError, match=r"dense\.num_classes: segmentation needs at least 2 classes, got None"):
        build_dense_model(cfg(), "finetune-seg", DENSE)
    with pytest.raises(ConfigError, match=r"task: expected one of"):
        build_dense_model(cfg(), "pretrain", DENSE)
