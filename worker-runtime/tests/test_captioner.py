"""The captioner model, task train-captioner, and the built-in captioner plugin.

Training runs for real in-process against the same stand-in for the
orchestrator as the dense fine-tune tests (test_finetune_dense.py's
PlanAgent: real Commands, a sequential plan); models, data loading,
checkpoint files and the gloo group are the real ones. The kill -9 and
resume through real orchestrator and worker processes is the e2e test
tests/e2e/captioner.test.ts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker import synth
from clipfleet_worker.captioning import builtin
from clipfleet_worker.errors import CheckpointError, ConfigError
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.models import resolve_model_cfg
from clipfleet_worker.models.captioner import DecoderConfig, ImageCaptioner, build_captioner, caption_loss_sums, captioner_config_of
from clipfleet_worker.tasks import train_captioner
from clipfleet_worker.tokenizers import build_tokenizer

from test_finetune_dense import clip_checkpoint, dataset, group, make_ctx, stage_cfg  # noqa: F401 (group: a fixture)

BYTE = {"type": "byte", "vocab": None}
DECODER = {"width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "context_length": 48}


@dataclass(frozen=True)
class Ctx:
    """The fields of plugins.CaptionerContext (the recaption side's dataclass) that factories read."""

    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    run_dir: str = ""


def model_of(image: str = "vit-tiny", seed: int = 0, decoder: dict | None = None) -> ImageCaptioner:
    torch.manual_seed(seed)
    cfg = {"model": {"image": resolve_model_cfg(image, "text-tiny", embed_dim=32)["image"], "tokenizer": BYTE}, "decoder": decoder or DECODER}
    return build_captioner(cfg, build_tokenizer(BYTE))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return dataset(str(tmp_path_factory.mktemp("synth")), n_train=64, n_val=16)


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("image, prefix", [("vit-tiny", 17), ("mci-tiny", 1)])
def test_shapes_for_vit_and_mci_towers(image, prefix):
    m = model_of(image).eval()
    tok = build_tokenizer(BYTE)
    images = torch.randn(3, 3, 32, 32)
    tokens = tok(["a red circle", "", "two shapes on a striped background"], DECODER["context_length"])
    assert m.num_prefix == prefix
    assert m.encode_image(images).shape == (3, prefix, DECODER["width"])
    assert m(images, tokens).shape == (3, DECODER["context_length"] - 1, tok.vocab_size)
    out = m.generate(images, 5)
    assert out.shape == (3, DECODER["context_length"]) and (out[:, 0] == tok.sot_id).all()
    # At most 5 generated ids, the last of them EOT at the latest.
    assert all(tok.eot_id in row[1:7] for row in out.tolist())


def test_attention_mask_prefix_bidirectional_caption_causal():
    m = model_of()
    keep = m.attention_mask(4, torch.device("cpu"))
    p = m.num_prefix
    assert keep.shape == (p + 4, p + 4)
    assert keep[:p, :p].all() and not keep[:p, p:].any()  # the image never sees the caption
    assert keep[p:, :p].all()  # every caption token sees the whole image
    assert torch.equal(keep[p:, p:], torch.ones(4, 4, dtype=torch.bool).tril())


def test_a_caption_token_depends_on_earlier_tokens_and_the_image_only():
    m = model_of().eval()
    tok = build_tokenizer(BYTE)
    images = torch.randn(1, 3, 32, 32)
    a = tok(["a red circle top left"], 24)
    b = a.clone()
    b[0, 10] = 120  # change one input token
    with torch.no_grad():
        la, lb = m(images, a), m(images, b)
        lc = m(torch.randn(1, 3, 32, 32), a)
    # Logits at positions before 10 predict from tokens 0..i only: unchanged; from 10 on they may change.
    assert torch.equal(la[0, :10], lb[0, :10])
    assert not torch.allclose(la[0, 10], lb[0, 10])
    assert not torch.allclose(la[0, 0], lc[0, 0])  # even the first token sees the image


def test_loss_ignores_padding_and_counts_eot():
    m = model_of()
    tok = build_tokenizer(BYTE)
    tokens = tok(["abc", "hello world"], 20)
    s, n = caption_loss_sums(m, torch.randn(2, 3, 32, 32), tokens)
    assert int(n) == (3 + 1) + (11 + 1)  # every byte and the EOT of each caption
    assert torch.isfinite(s) and float(s) > 0


def test_greedy_decoding_is_deterministic_and_independent_of_batch_order_and_company():
    m = model_of(seed=3).eval()
    images = torch.randn(8, 3, 32, 32)
    whole = m.generate(images, 40)
    assert torch.equal(whole, m.generate(images, 40))
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    assert torch.equal(m.generate(images[perm], 40), whole[perm])
    others = torch.randn(8, 3, 32, 32)
    mixed = torch.cat([others[:4], images[:4]])
    assert torch.equal(m.generate(mixed, 40)[4:], whole[:4])


@pytest.mark.parametrize("image", ["vit-tiny", "mci-tiny"])
def test_cached_greedy_decoding_is_the_argmax_of_the_full_decoder_at_every_step(image):
    """generate() decodes with a key/value cache; each token it picks must be the one the full (teacher-forced) decoder
    gives the sequence so far, with the same banned ids, until the row ends."""
    m = model_of(image, seed=5).eval()
    images = torch.randn(6, 3, 32, 32)
    seq = m.generate(images, 30)
    with torch.no_grad():
        logits = m.decode(m.encode_image(images), seq[:, :-1]).float()
    logits[..., [m.pad_id, m.sot_id]] = float("-inf")
    for row in range(seq.shape[0]):
        ids = seq[row].tolist()
        end = ids.index(m.eot_id) if m.eot_id in ids else len(ids)
        for i in range(min(end, 30 - 1)):  # the 30th token is a forced EOT
            assert int(logits[row, i].argmax()) == ids[i + 1], f"row {row}, position {i + 1}"
        assert all(t == m.pad_id for t in ids[end + 1 :])


def test_state_dict_carries_its_config_and_refuses_other_states():
    m = model_of("mci-tiny")
    state = m.state_dict()
    cfg = captioner_config_of(state, "x/model.pt")
    assert cfg["decoder"] == {**DECODER, "mlp_ratio": 2.0} and cfg["model"]["image"]["family"] == "mci"
    with pytest.raises(ConfigError, match="not a train-captioner model"):
        captioner_config_of({"visual.conv1.weight": torch.zeros(1)}, "x/model.pt")
    other = model_of(decoder={**DECODER, "depth": 1})
    with pytest.raises(ConfigError, match="decoder"):
        other.load_state_dict(state, strict=False)


def test_decoder_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"decoder\.heads"):
        DecoderConfig.from_spec({**DECODER, "width": 30, "heads": 4})
    with pytest.raises(ConfigError, match=r"decoder\.context_length"):
        DecoderConfig.from_spec({**DECODER, "context_length": 0})


# ---------------------------------------------------------------- task train-captioner and the plugin


def captioner_cfg(data: dict, **over) -> dict:
    cfg = stage_cfg("train-captioner", data, **over)
    cfg["data"]["captions"] = {"vecap": 1.0}
    cfg["data"]["augment"] = {"crop_scale": None, "crop_ratio": [0.75, 1.3333333], "hflip": 0.0}
    cfg["model"]["tokenizer"] = BYTE
    cfg["decoder"] = dict(DECODER, context_length=64)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """A train-captioner stage of 40 steps with the retrieval check, run once for the tests below."""
    from clipfleet_worker import distributed as D
    from test_finetune_dense import free_port

    root = str(tmp_path_factory.mktemp("captioner"))
    clip_ref, _ = clip_checkpoint(os.path.join(root, "clip"), "vit-tiny")
    cfg = captioner_cfg(data, train__steps=40, train__lr=3e-3, train__warmup_steps=4,
                        eval={"every_steps": 20, "at_end": True, "batch_size": 16, "captions": None})
    D.init_process_group("gloo", "127.0.0.1", free_port(), 0, 1)
    try:
        ctx = make_ctx(cfg, data, root)
        ctx.assignment.eval_clip.CopyFrom(clip_ref)
        train_captioner.run(ctx)
    finally:
        D.destroy()
    return ctx


def test_training_lowers_the_caption_loss_and_reports_metrics(trained):
    steps = trained.agent.of("step")
    assert [s.step for s in steps] == list(range(1, 41))
    first = sum(s.loss for s in steps[:4]) / 4
    last = sum(s.loss for s in steps[-4:]) / 4
    assert last < 0.6 * first, [s.loss for s in steps]
    evals = trained.agent.of("eval")
    assert [e.step for e in evals] == [20, 40]
    m = dict(evals[-1].metrics)
    assert set(m) == {"caption/loss", "caption/perplexity", "caption/clip_i2t_R@1", "caption/reference_i2t_R@1", "caption/chance_R@1",
                      "caption/empty_fraction", "caption/mean_words", "caption/image_count"}
    assert m["caption/image_count"] == 16 and m["caption/chance_R@1"] == pytest.approx(1 / 16)
    assert m["caption/perplexity"] == pytest.approx(2.718281828 ** m["caption/loss"], rel=1e-4)
    assert m["caption/loss"] < evals[0].metrics["caption/loss"] or m["caption/loss"] < 2.5
    assert 0 <= m["caption/clip_i2t_R@1"] <= 1 and m["caption/empty_fraction"] < 1
    (finished,) = trained.agent.of("finished")
    assert finished.step == 40 and dict(finished.metrics) == m


def test_micro_batches_give_the_whole_slice_gradient(data, tmp_path):
    """Each micro-batch's loss is weighted by its share of the slice's caption tokens: the same loss and gradient."""
    cfg = captioner_cfg(data)
    ctx = make_ctx(cfg, data, str(tmp_path))
    m = model_of()
    tok = build_tokenizer(BYTE)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tok(["a red circle", "two shapes on a striped background: a star and a ring", "", "x", "a big blue cross", "ok"], 48)
    tokens[2] = 0  # a skipped sample: no tokens at all
    grads, values = [], []
    for micro in (6, 2, 4):
        m.zero_grad(set_to_none=True)
        values.append(float(train_captioner._forward_backward(m, m, images, tokens, micro, torch.cuda.amp.GradScaler(enabled=False), ctx, 1)))
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
    for vs, gs in zip(values[1:], grads[1:]):
        assert vs == pytest.approx(values[0], rel=1e-5)
        assert len(gs) == len(grads[0])
        for a, b in zip(gs, grads[0]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_stop_then_resume_is_bit_exact(group, data, tmp_path):
    cfg = captioner_cfg(data, train__steps=6)
    whole = make_ctx(cfg, data, str(tmp_path / "whole"))
    train_captioner.run(whole)
    first = make_ctx(cfg, data, str(tmp_path / "split"))
    first.agent.commands.stop_at, first.agent.commands.stop_checkpoint = 3, True
    train_captioner.run(first)
    (written,) = first.agent.of("checkpoint")
    ref = pb.CheckpointRef(dir=written.dir, step=3, files=written.files)
    second = make_ctx(cfg, data, str(tmp_path / "split"), attempt=1, start_step=3, resume=ref)
    train_captioner.run(second)
    assert [s.loss for s in first.agent.of("step") + second.agent.of("step")] == [s.loss for s in whole.agent.of("step")]
    assert second.agent.of("finished")[0].final_params_sha256 == whole.agent.of("finished")[0].final_params_sha256


def test_a_clip_with_another_model_is_refused_naming_eval_clip(group, data, tmp_path):
    ref, _ = clip_checkpoint(str(tmp_path / "clip"), "mci-tiny")
    cfg = captioner_cfg(data, train__steps=1, eval={"every_steps": None, "at_end": True, "batch_size": 16, "captions": None})
    ctx = make_ctx(cfg, data, str(tmp_path))
    ctx.assignment.eval_clip.CopyFrom(ref)
    with pytest.raises(ConfigError, match="eval.clip") as err:
        train_captioner.run(ctx)
    assert str(ref.dir) in str(err.value)


def final_model(trained) -> str:
    written = trained.agent.of("checkpoint")[-1]
    assert written.step == 40
    return os.path.join(written.dir, ckpt.MODEL_FILE)


def val_images(data: dict, n: int = 6) -> tuple[list[Image.Image], list[str]]:
    scenes = [synth.render_scene(3, "val", i, 32) for i in range(n)]
    return [s.image for s in scenes], [s.alt for s in scenes]


def test_builtin_captioner_writes_non_empty_captions_from_a_trained_stage(trained, data):
    cap = builtin.make({"checkpoint": final_model(trained), "max_tokens": 63, "batch_size": 4, "extra": "ignored"}, Ctx(torch.device("cpu")))
    images, alts = val_images(data)
    out = cap.caption(images, alts)
    assert len(out) == 6 and all(t.strip() for t in out), out
    # The model learned the captions' vocabulary: most words are the synthetic captions' own.
    words = " ".join(out).lower().split()
    known = {"a", "an", "the", "on", "with", "and", "in", "of", "top", "left", "right", "bottom", "center", "background"}
    assert sum(w.strip(".,:") in known | set(synth.SHAPES) for w in words) >= len(words) // 4, out


def test_builtin_captions_do_not_depend_on_batching_or_order(trained, data):
    path = final_model(trained)
    images, alts = val_images(data)
    a = builtin.make({"checkpoint": path, "max_tokens": 40, "batch_size": 4}, Ctx(torch.device("cpu")))
    b = builtin.make({"checkpoint": os.path.dirname(path), "max_tokens": 40, "batch_size": 4}, Ctx(torch.device("cpu")))
    first = a.caption(images, alts)
    assert a.caption(images, alts) == first
    order = [4, 0, 5, 2, 1, 3]
    assert b.caption([images[i] for i in order], [alts[i] for i in order]) == [first[i] for i in order]
    assert a.caption(images[3:4], alts[3:4]) == first[3:4]


def test_builtin_max_tokens_bounds_the_caption(trained):
    cap = builtin.make({"checkpoint": final_model(trained), "max_tokens": 6, "batch_size": 2}, Ctx(torch.device("cpu")))
    out = cap.caption([Image.new("RGB", (40, 24), (200, 30, 30))], [""])
    assert len(out[0].encode()) <= 5  # 6 tokens, the last of them EOT


def test_builtin_max_tokens_beyond_the_decoder_is_capped_with_a_warning(trained, capsys):
    cap = builtin.make({"checkpoint": final_model(trained), "max_tokens": 500}, Ctx(torch.device("cpu")))
    assert cap.max_tokens == 63
    assert "captioner.max_tokens 500 is more than the model's decoder allows (context_length 64)" in capsys.readouterr().out


def test_builtin_make_refuses_bad_args_naming_the_field(trained, tmp_path):
    cpu = Ctx(torch.device("cpu"))
    with pytest.raises(ConfigError, match="captioner.checkpoint"):
        builtin.make({"checkpoint": str(tmp_path / "nope.pt")}, cpu)
    with pytest.raises(ConfigError, match="captioner.checkpoint"):
        builtin.make({}, cpu)
    with pytest.raises(ConfigError, match="captioner.max_tokens"):
        builtin.make({"checkpoint": final_model(trained), "max_tokens": 0}, cpu)
    with pytest.raises(ConfigError, match="captioner.batch_size"):
        builtin.make({"checkpoint": final_model(trained), "batch_size": 0}, cpu)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        builtin.make({"checkpoint": str(bad)}, cpu)
    with pytest.raises(ValueError, match="alt texts"):
        builtin.make({"checkpoint": final_model(trained)}, cpu).caption([Image.new("RGB", (8, 8))], [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_builtin_captioner_on_cuda_matches_itself_across_batches(trained, data):
    cap = builtin.make({"checkpoint": final_model(trained), "batch_size": 4}, Ctx(torch.device("cuda")))
    images, alts = val_images(data)
    first = cap.caption(images, alts)
    assert all(t.strip() for t in first)
    order = [4, 0, 5, 2, 1, 3]
    assert cap.caption([images[i] for i in order], [alts[i] for i in order]) == [first[i] for i in order]
