"""Weight-decay groups, AdamW from the spec, the stateless LR schedule, the temperature clamp."""

from __future__ import annotations

import math

import pytest
import torch

from clipfleet_worker.errors import ConfigError
from clipfleet_worker.models import build_clip, resolve_model_cfg
from clipfleet_worker.optim import build_optimizer, clamp_logit_scale, lr_at, param_groups, set_lr

TRAIN = {"lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 10, "schedule": "cosine", "weight_decay": 0.2,
         "betas": [0.9, 0.98], "eps": 1e-6}


def tiny(image: str = "vit-tiny"):
    torch.manual_seed(0)
    return build_clip(resolve_model_cfg(image, "text-tiny", embed_dim=32), 259)


def group_names(model, weight_decay=0.2):
    ids = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay)
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in groups}, groups


def test_no_weight_decay_on_gains_biases_embeddings_and_temperature():
    model = tiny()
    names, groups = group_names(model)
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    no_decay, decay = names["no_decay"], names["decay"]
    for n in ["logit_scale", "visual.class_embedding", "visual.positional_embedding", "text.positional_embedding",
              "text.token_embedding.weight", "visual.ln_pre.weight", "visual.ln_pre.bias", "text.ln_final.weight",
              "visual.transformer.resblocks.0.attn.in_proj_bias", "text.transformer.resblocks.1.mlp.c_fc.bias"]:
        assert n in no_decay, n
    for n in ["visual.conv1.weight", "visual.proj", "text.text_projection",
              "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
              "text.transformer.resblocks.1.attn.out_proj.weight"]:
        assert n in decay, n
    assert no_decay.isdisjoint(decay) and no_decay | decay == {n for n, _ in model.named_parameters()}
    assert all(model.get_parameter(n).ndim >= 2 for n in decay)


def test_mci_layer_scales_and_batchnorm_are_not_decayed():
    names, _ = group_names(tiny("mci-tiny"))
    assert "visual.stages.0.blocks.0.layer_scale" in names["no_decay"]
    assert "visual.stages.0.blocks.0.convffn.conv.bn.weight" in names["no_decay"]
    assert "visual.stages.0.blocks.0.convffn.fc1.weight" in names["decay"]
    assert "visual.stages.3.pos.pe.weight" in names["decay"]


def test_frozen_parameters_are_left_out():
    model = tiny()
    for p in model.visual.parameters():
        p.requires_grad_(False)
    names, _ = group_names(model)
    assert not any(n.startswith("visual.") for g in names.values() for n in g)


def test_build_optimizer_reads_the_train_spec():
    opt = build_optimizer(tiny(), TRAIN)
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert g["lr"] == 1e-3 and g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    set_lr(opt, 5e-4)
    assert all(g["lr"] == 5e-4 for g in opt.param_groups)
    with pytest.raises(ConfigError, match=r"train\.betas"):
        build_optimizer(tiny(), {**TRAIN, "betas": [0.9, 1.5]})


def test_lr_schedule_at_hand_checked_steps():
    total = 110  # 10 warmup + 100 decay steps
    assert lr_at(0, TRAIN, total) == pytest.approx(1e-4)
    assert lr_at(4, TRAIN, total) == pytest.approx(5e-4)
    assert lr_at(9, TRAIN, total) == pytest.approx(1e-3)
    assert lr_at(10, TRAIN, total) == pytest.approx(1e-3)
    assert lr_at(60, TRAIN, total) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(35, TRAIN, total) == pytest.approx(1e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * (1e-3 - 1e-5))
    assert lr_at(110, TRAIN, total) == pytest.approx(1e-5)
    assert lr_at(500, TRAIN, total) == pytest.approx(1e-5)
    linear = {**TRAIN, "schedule": "linear"}
    assert lr_at(60, linear, total) == pytest.approx(1e-3 - 0.5 * (1e-3 - 1e-5))
    assert lr_at(85, linear, total) == pytest.approx(1e-3 - 0.75 * (1e-3 - 1e-5))
    constant = {**TRAIN, "schedule": "constant"}
    assert lr_at(4, constant, total) == pytest.approx(5e-4)
    assert lr_at(100, constant, total) == 1e-3
    no_warmup = {**TRAIN, "warmup_steps": 0}
    assert lr_at(0, no_warmup, 100) == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"train\.schedule"):
        lr_at(50, {**TRAIN, "schedule": "step"}, total)


def test_clamp_logit_scale():
    model = tiny()
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    clamp_logit_scale(model)
    assert model.logit_scale.item() == 0.0
