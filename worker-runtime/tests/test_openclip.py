"""open_clip interop: the export's config and key layout, the round trip, and refused imports.

open_clip is not importable in this test environment (no network, not a
dependency), so the export is checked against open_clip's own ViT-B-16
config (fixtures/open_clip/ViT-B-16.json, model_configs/ViT-B-16.json of
open_clip v3.3.0) and the state_dict names and shapes its `CLIP` class has
for it (fixtures/open_clip/ViT-B-16.state_dict.json, recorded from its
model.py and transformer.py). Where open_clip is importable, the export is
also loaded with open_clip.create_model and must give the same features.
"""

from __future__ import annotations

import gzip
import json
import os

import pytest
import torch

from clipfleet_worker import openclip
from clipfleet_worker.errors import CheckpointError, ConfigError
from clipfleet_worker.models import build_clip
from clipfleet_worker.models.presets import resolve_model_cfg
from clipfleet_worker.tokenizers import MAX_MERGES, build_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "open_clip")
MERGES = ["t h", "th e</w>", "a n", "an d</w>", "c a", "r e", "c i", "ci r"]


@pytest.fixture
def vocab(tmp_path):
    """A small merges file ending with a newline (as most editors write it)."""
    path = tmp_path / "merges.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return str(path)


def tiny_cfg(vocab_path: str) -> dict:
    cfg = resolve_model_cfg("vit-tiny", "text-tiny", 32, {"type": "bpe", "vocab": vocab_path})
    cfg["text"]["context_length"] = 16
    return cfg


def features(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 500, (3, model.context_length), generator=g)
    tokens[:, -1] = model.text.vocab_size - 1  # EOT pooled at argmax
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_vit_b16_export_is_open_clips_vit_b16_config_and_state_dict_layout():
    cfg = resolve_model_cfg("vit-b16", "text-base", 512, {"type": "bpe", "vocab": "unused"})
    got = openclip.model_cfg(cfg, 49408)
    recorded = json.load(open(os.path.join(FIXTURES, "ViT-B-16.json")))
    assert got["embed_dim"] == recorded["embed_dim"]
    for tower in ("vision_cfg", "text_cfg"):
        for key, value in recorded[tower].items():
            assert got[tower][key] == value, f"{tower}.{key}"
    # The fields open_clip's ViT-B-16 leaves at their defaults (model.py CLIPVisionCfg / CLIPTextCfg / CLIP).
    assert got["vision_cfg"]["head_width"] == 64 and got["vision_cfg"]["mlp_ratio"] == 4.0
    assert got["text_cfg"]["mlp_ratio"] == 4.0 and "no_causal_mask" not in got["text_cfg"]
    assert got["quick_gelu"] is False

    keys = json.load(open(os.path.join(FIXTURES, "ViT-B-16.state_dict.json")))["keys"]
    state = openclip.to_openclip_state(build_clip(cfg, 49408).state_dict())
    assert {k: list(v.shape) for k, v in state.items()} == keys
    # ... and it reads back into clipfleet's layout key for key.
    assert set(openclip.from_openclip_state(state, "x")) == set(build_clip(cfg, 49408).state_dict())


def test_round_trip_gives_the_same_features_and_open_clips_vocabulary(tmp_path, vocab):
    cfg = tiny_cfg(vocab)
    tok = build_tokenizer(cfg["tokenizer"])
    torch.manual_seed(3)
    trained = build_clip(cfg, tok.vocab_size)
    out = tmp_path / "export"
    written = openclip.write_export(trained.state_dict(), cfg, tok.vocab_size, str(out), {"job": "j-1", "stage": "main", "step": 7})
    assert set(written["files"]) == {openclip.CONFIG_NAME, openclip.WEIGHTS_NAME, openclip.VOCAB_NAME, "README.md"}
    config = json.load(open(out / openclip.CONFIG_NAME))
    assert config["clipfleet"] == {"job": "j-1", "stage": "main", "step": 7}
    assert config["model_cfg"]["text_cfg"]["vocab_size"] == tok.vocab_size
    assert config["preprocess_cfg"]["size"] == 32 and config["preprocess_cfg"]["interpolation"] == "bicubic"
    # open_clip's SimpleTokenizer (tokenizer.py) builds its vocabulary from the file's lines[1:MAX_MERGES+1],
    # empty ones included: the exported copy has none, so its ids are clipfleet's (the source file's
    # trailing newline would have added one).
    lines = gzip.open(config["model_cfg"]["text_cfg"]["tokenizer_kwargs"]["bpe_path"]).read().decode().split("\n")
    assert 512 + len(lines[1:MAX_MERGES + 1]) + 2 == tok.vocab_size
    raw_lines = gzip.open(vocab).read().decode().split("\n")
    assert 512 + len(raw_lines[1:MAX_MERGES + 1]) + 2 != tok.vocab_size

    torch.manual_seed(4)
    again = build_clip(cfg, tok.vocab_size)
    again.load_state_dict(openclip.load_init_state(str(out), cfg, tok.vocab_size))
    for a, b in zip(features(trained), features(again)):
        assert torch.equal(a, b)
    # The weights file alone is an init.checkpoint too.
    assert set(openclip.load_init_state(str(out / openclip.WEIGHTS_NAME), cfg, tok.vocab_size)) == set(trained.state_dict())

    try:
        import open_clip  # type: ignore[import-not-found]
    except ImportError:
        return  # not installed here: the layout is checked against the recorded open_clip ViT-B-16 above
    oc = open_clip.create_model("local-dir:" + str(out))
    oc.eval()
    img, txt = features(trained)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 500, (3, 16), generator=g)
    tokens[:, -1] = tok.vocab_size - 1
    with torch.no_grad():
        assert torch.allclose(oc.encode_image(images, normalize=True), img, atol=1e-5)
        assert torch.allclose(oc.encode_text(tokens, normalize=True), txt, atol=1e-5)


def test_open_clip_checkpoint_layouts_are_read(tmp_path, vocab):
    cfg = tiny_cfg(vocab)
    tok = build_tokenizer(cfg["tokenizer"])
    model = build_clip(cfg, tok.vocab_size)
    oc_state = openclip.to_openclip_state(model.state_dict())
    # open_clip's training checkpoint: {"epoch", "state_dict" with DDP's "module." prefix, "optimizer"}.
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in oc_state.items()}}, path)
    got = openclip.load_init_state(str(path), cfg, tok.vocab_size)
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    # CustomTextCLIP's layout (text tower under `text.`) and an old export's attn_mask buffer.
    custom = dict(model.state_dict(), **{"text.attn_mask": torch.zeros(16, 16)})
    assert set(openclip.from_openclip_state(custom, "x")) == set(model.state_dict())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("text_projection"), r"bad\.bin: text_projection: missing \(the spec's towers need \(64, 32\)\)"),
        (lambda s: s.__setitem__("text_projection", torch.zeros(32, 64)), r"bad\.bin: text_projection: shape \(32, 64\), the spec's towers need \(64, 32\)"),
        (lambda s: s.__setitem__("logit_bias", torch.zeros([])), r"bad\.bin: logit_bias: unexpected key \(a SigLIP-style bias"),
        (lambda s: s.__setitem__("visual.conv1.weight", "not a tensor"), r"visual\.conv1\.weight: not a tensor \(str\)"),
    ],
)
def test_bad_imports_are_refused_in_one_line_naming_the_file_and_key(tmp_path, vocab, edit, match):
    cfg = tiny_cfg(vocab)
    tok = build_tokenizer(cfg["tokenizer"])
    state = openclip.to_openclip_state(build_clip(cfg, tok.vocab_size).state_dict())
    edit(state)
    path = tmp_path / "bad.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=match) as err:
        openclip.load_init_state(str(path), cfg, tok.vocab_size)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


class _Payload:
    """Pickled as code: what torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickle_with_code_or_no_state_dict_is_refused(tmp_path, vocab):
    cfg = tiny_cfg(vocab)
    vocab_size = build_tokenizer(cfg["tokenizer"]).vocab_size
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": _Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a PyTorch state_dict this worker may load \(torch\.load with weights_only: ") as err:
        openclip.load_init_state(str(evil), cfg, vocab_size)
    assert "\n" not in str(err.value)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match=r"list\.pt: holds list, not a state_dict"):
        openclip.load_init_state(str(listed), cfg, vocab_size)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty: expected open_clip_pytorch_model\.bin"):
        openclip.load_init_state(str(empty), cfg, vocab_size)


def test_models_without_an_open_clip_equivalent_say_why(vocab):
    mci = resolve_model_cfg("mci-tiny", "text-tiny", 32, {"type": "bpe", "vocab": vocab})
    assert "MCi" in openclip.export_problem(mci) and "timm" in openclip.export_problem(mci)
    byte = resolve_model_cfg("vit-tiny", "text-tiny", 32)
    assert openclip.export_problem(byte).startswith("model.tokenizer: the byte tokenizer has no open_clip equivalent")
    with pytest.raises(ConfigError, match="byte tokenizer"):
        openclip.write_export({}, byte, 259, "/nonexistent/never-written", {})
    noncausal = resolve_model_cfg("vit-tiny", "text-base-noncausal", 32, {"type": "bpe", "vocab": vocab})
    assert openclip.export_problem(noncausal) is None
    assert openclip.model_cfg(noncausal, 600)["text_cfg"]["no_causal_mask"] is True


def test_an_export_computing_otherwise_is_refused(tmp_path, vocab):
    cfg = tiny_cfg(vocab)
    tok = build_tokenizer(cfg["tokenizer"])
    out = tmp_path / "export"
    openclip.write_export(build_clip(cfg, tok.vocab_size).state_dict(), cfg, tok.vocab_size, str(out), {})
    config_path = out / openclip.CONFIG_NAME
    config = json.load(open(config_path))
    config["model_cfg"]["quick_gelu"] = True
    json.dump(config, open(config_path, "w"))
    with pytest.raises(CheckpointError, match=r"open_clip_config\.json: quick_gelu: true"):
        openclip.load_init_state(str(out), cfg, tok.vocab_size)
    config["model_cfg"]["quick_gelu"] = False
    config["model_cfg"]["text_cfg"]["no_causal_mask"] = True
    json.dump(config, open(config_path, "w"))
    with pytest.raises(CheckpointError, match=r"text_cfg\.no_causal_mask: true, the spec's text tower is a causal one"):
        openclip.load_init_state(str(out), cfg, tok.vocab_size)
