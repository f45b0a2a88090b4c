"""Image/text towers, CLIP assembly, the shared attention kernel, hashing and presets."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from clipfleet_worker.errors import ConfigError
from clipfleet_worker.models import (
    attention_reference,
    build_clip,
    build_image_tower,
    build_text_tower,
    count_params,
    params_sha256,
    reparameterize_mci,
    resolve_image_preset,
    resolve_model_cfg,
    resolve_text_preset,
    scaled_dot_product_attention,
)
from clipfleet_worker.models.attention import MultiheadSelfAttention
from clipfleet_worker.models import attention as attention_module  # the module: .attention is not re-exported

VOCAB = 259  # the byte tokenizer's


def tiny_clip(image: str = "vit-tiny", seed: int = 0, **text_overrides) -> nn.Module:
    torch.manual_seed(seed)
    cfg = resolve_model_cfg(image, "text-tiny", embed_dim=32)
    cfg["text"].update(text_overrides)
    return build_clip(cfg, VOCAB)


def tokens(batch: int = 3, ctx: int = 77, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(batch, ctx, dtype=torch.long)
    for i in range(batch):
        n = 5 + 3 * i
        t[i, 0] = 257
        t[i, 1: n - 1] = torch.randint(1, 257, (n - 2,), generator=g)
        t[i, n - 1] = 258
    return t


@pytest.mark.parametrize("image", ["vit-tiny", "mci-tiny"])
def test_clip_shapes_and_normalisation(image):
    model = tiny_clip(image)
    x = torch.randn(2, 3, 32, 32)
    img, txt, scale = model(x, tokens(2))
    assert img.shape == (2, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.encode_image(x, normalize=False).norm(dim=-1).ne(1).all()


def test_vit_forward_features_four_evenly_spaced_maps():
    tower = build_image_tower(resolve_image_preset("vit-tiny"), 32)
    feats = tower.forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 4, 4)] * 4
    assert tower.feature_layers == (0, 0, 1, 1)
    deep = build_image_tower(resolve_image_preset("vit-tiny", depth=12), 32)
    assert deep.feature_layers == (2, 5, 8, 11)
    # The last map is the final block's tokens (class token dropped) laid out on the patch grid.
    x = torch.randn(1, 3, 32, 32)
    tokens_out, _ = tower.transformer(tower._embed(x)[0])
    expected = tokens_out[:, 1:].transpose(1, 2).reshape(1, 64, 4, 4)
    assert torch.allclose(tower.forward_features(x)[-1], expected, atol=1e-6)


def test_vit_runs_at_other_resolution_by_resampling_positions():
    tower = build_image_tower(resolve_image_preset("vit-tiny"), 32)
    assert tower(torch.randn(1, 3, 48, 48)).shape == (1, 32)
    assert tower.forward_features(torch.randn(1, 3, 48, 64))[0].shape == (1, 64, 6, 8)


def test_mci_pyramid_strides():
    tower = build_image_tower(resolve_image_preset("mci-tiny", image_size=64), 32)
    feats = tower.forward_features(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 48, 4, 4), (2, 64, 2, 2)]
    assert tower(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_mci_reparameterisation_keeps_eval_outputs():
    torch.manual_seed(0)
    tower = build_image_tower(resolve_image_preset("mci-tiny", image_size=64), 32)
    for m in tower.modules():  # non-trivial BN statistics and layer scales, so folding errors would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    for name, p in tower.named_parameters():
        if "layer_scale" in name:
            nn.init.uniform_(p, 0.1, 1.0)
    tower.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = tower(x)
        fused = reparameterize_mci(copy.deepcopy(tower))
        after = fused(x)
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    assert count_params(fused) < count_params(tower)
    assert not any("rbr_" in n for n, _ in fused.named_parameters())


def test_full_size_parameter_counts():
    # OpenAI CLIP ViT-B/16: 86,192,640 image-tower and 149,620,737 total parameters.
    vit = build_image_tower(resolve_image_preset("vit-b16"), 512)
    assert count_params(vit) == 86_192_640
    text = build_text_tower(resolve_text_preset("text-base"), 49408, 512)
    assert count_params(text) + count_params(vit) + 1 == 149_620_737
    # MobileCLIP reports 11.4M (MCi0) and 35.7M (MCi2) image-encoder parameters.
    assert count_params(build_image_tower(resolve_image_preset("mci0"), 512)) == pytest.approx(11.4e6, rel=0.03)
    assert count_params(build_image_tower(resolve_image_preset("mci2"), 512)) == pytest.approx(35.7e6, rel=0.03)


def test_causal_and_bidirectional_text_differ_where_they_should():
    causal = tiny_clip(causal=True)
    bidir = tiny_clip(causal=False)
    bidir.load_state_dict(causal.state_dict())  # same weights, only the mask differs
    t = tokens(3)
    after_eot = t.clone()
    after_eot[:, -5:] = 7  # change padding only (positions after EOT)
    with torch.no_grad():
        assert not torch.allclose(causal.encode_text(t), bidir.encode_text(t), atol=1e-4)
        assert torch.allclose(causal.encode_text(t), causal.encode_text(after_eot), atol=1e-6)
        assert not torch.allclose(bidir.encode_text(t), bidir.encode_text(after_eot), atol=1e-4)


def test_text_pools_at_eot_argmax():
    model = tiny_clip()
    t = tokens(2)
    text = model.text
    with torch.no_grad():
        x = text.token_embedding(t) + text.positional_embedding
        x, _ = text.transformer(x, causal=True)
        x = text.ln_final(x)
        eot = (t == 258).float().argmax(dim=1)
        expected = x[torch.arange(2), eot] @ text.text_projection
        assert torch.allclose(text(t), expected, atol=1e-6)


def _loop_attention(q, k, v, keep):
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                s = torch.tensor([float(q[b, h, i] @ k[b, h, j]) / math.sqrt(q.shape[-1]) if keep[i, j]
                                  else -math.inf for j in range(k.shape[2])])
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h]
    return out


def test_attention_fallback_matches_plain_math():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    ones = torch.ones(5, 5, dtype=torch.bool)
    assert torch.allclose(attention_reference(q, k, v), _loop_attention(q, k, v, ones), atol=1e-5)
    assert torch.allclose(attention_reference(q, k, v, causal=True), _loop_attention(q, k, v, ones.tril()), atol=1e-5)
    keep = torch.rand(5, 5) > 0.3
    keep.fill_diagonal_(True)
    assert torch.allclose(attention_reference(q, k, v, attn_mask=keep), _loop_attention(q, k, v, keep), atol=1e-5)
    additive = torch.zeros(5, 5).masked_fill(~keep, float("-inf"))
    assert torch.allclose(attention_reference(q, k, v, attn_mask=additive), _loop_attention(q, k, v, keep), atol=1e-5)
    both = attention_reference(q, k, v, attn_mask=keep, causal=True)
    assert torch.allclose(both, _loop_attention(q, k, v, keep & ones.tril()), atol=1e-5)


def test_attention_dispatch_agrees_with_fallback(monkeypatch):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    keep = torch.rand(5, 5) > 0.3
    keep.fill_diagonal_(True)
    got = scaled_dot_product_attention(q, k, v, attn_mask=keep, causal=True)  # SDPA on torch 2.x, the fallback on 1.13
    assert torch.allclose(got, attention_reference(q, k, v, keep, causal=True), atol=1e-5)
    monkeypatch.setattr(attention_module, "_SDPA", None)
    assert torch.allclose(scaled_dot_product_attention(q, k, v, causal=True), attention_reference(q, k, v, causal=True))


def test_self_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiheadSelfAttention(16, 4)
    ref = nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())  # identical parameter names
    x = torch.randn(2, 6, 16)
    mask = torch.full((6, 6), float("-inf")).triu(1)
    expected, _ = ref(x, x, x, need_weights=False, attn_mask=mask)
    assert torch.allclose(ours(x, causal=True), expected, atol=1e-5)
    expected, _ = ref(x, x, x, need_weights=False)
    assert torch.allclose(ours(x), expected, atol=1e-5)


def test_grad_checkpointing_gives_same_gradients():
    model = tiny_clip()
    x, t = torch.randn(2, 3, 32, 32), tokens(2)
    img, txt, _ = model(x, t)
    (img @ txt.T).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    img, txt, _ = model(x, t)
    (img @ txt.T).sum().backward()
    for n, p in model.named_parameters():
        if n in plain:
            assert torch.allclose(p.grad, plain[n], atol=1e-6), n


def test_seeded_init_is_deterministic_and_hash_sees_every_bit():
    a, b, c = tiny_clip(seed=0), tiny_clip(seed=0), tiny_clip(seed=1)
    assert params_sha256(a) == params_sha256(b) == params_sha256(a.state_dict())
    assert params_sha256(a) != params_sha256(c)
    with torch.no_grad():
        flat = b.visual.conv1.weight.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(math.inf))  # one ulp
    assert params_sha256(a) != params_sha256(b)
    wrapper = nn.Module()
    wrapper.module = a  # what DistributedDataParallel looks like
    assert params_sha256(wrapper) == params_sha256(a)
    renamed = {("x" + k): v for k, v in a.state_dict().items()}
    assert params_sha256(renamed) != params_sha256(a)


def test_image_tower_state_dict_is_visual_only():
    model = tiny_clip()
    sd = model.image_tower_state_dict()
    assert sd and all(k.startswith("visual.") for k in sd)
    assert set(sd) == {k for k in model.state_dict() if k.startswith("visual.")}
    # open_clip's ViT key names, so its checkpoints map onto ours
    assert {"visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
            "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
            "visual.ln_post.weight"} <= set(sd)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.image\.heads: width 64 is not divisible by heads 3"):
        build_image_tower(resolve_image_preset("vit-tiny", heads=3), 32)
    with pytest.raises(ConfigError, match=r"model\.image\.family"):
        build_image_tower({"family": "resnet"}, 32)
    with pytest.raises(ConfigError, match=r"model\.image\.preset: unknown preset 'vit-huge'"):
        resolve_image_preset("vit-huge")
    with pytest.raises(ConfigError, match=r"model\.text\.depth: expected a positive integer, got 0"):
        build_text_tower(resolve_text_preset("text-tiny", depth=0), VOCAB, 32)
    with pytest.raises(ConfigError, match=r"model\.embed_dim"):
        build_clip({**resolve_model_cfg("vit-tiny", "text-tiny"), "embed_dim": None}, VOCAB)


@pytest.mark.parametrize("image", ["vit-tiny", "mci-tiny"])
def test_bf16_autocast_forward_backward(image):
    # precision "bf16" on CPU nodes: torch 1.13's CPU autocast needs the float32 norm layers.
    model = tiny_clip(image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt, scale = model(torch.randn(2, 3, 32, 32), tokens(2))
        loss = (scale * img @ txt.T).float().logsumexp(1).mean()
    assert img.dtype == torch.bfloat16
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
