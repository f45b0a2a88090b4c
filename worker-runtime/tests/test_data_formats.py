"""Data formats of issue 15: per-member gzip, multi-line captions, empty captions,
metadata names, CLIP_benchmark's classification layout."""

import gzip
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipfleet_worker.data import PlanLoader, StepSlice, iterate_split
from clipfleet_worker.data.captions import all_captions, caption_sources
from clipfleet_worker.data.loader import SKIP_REASONS, skip_counts, skips_by_reason
from clipfleet_worker.data.members import (
    BAD_GZIP,
    GZIP_TOO_LARGE,
    MAX_GUNZIP_BYTES,
    MemberError,
    decoded_members,
    gunzip,
)
from clipfleet_worker.data.shards import read_zero_shot
from clipfleet_worker.data.tarindex import TarIndex, split_member_name
from clipfleet_worker.data.writer import write_shard
from clipfleet_worker.errors import ConfigError, DataError
from clipfleet_worker.evaluation import fill_template, zero_shot_classifier
from clipfleet_worker.models import build_clip, resolve_model_cfg
from clipfleet_worker.tasks.evaluate import _zero_shot
from clipfleet_worker.tokenizers import ByteTokenizer
from test_data_loader import detokenize, tokenize  # byte-level tokens, so tests read captions back



def _jpg(value=80):
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _cfg(captions=None, empty="skip"):
    data = {"captions": captions or {"alt": 1.0}, "caption_mode": "sample", "augment": {"crop_scale": None, "crop_ratio": [0.75, 1.33], "hflip": 0}}
    if empty is not None:
        data["empty_captions"] = empty
    return {"seed": 5, "data": data, "dense": {}}


def _plan(n, batch):
    def fetch(from_step, count):
        out = []
        for step in range(from_step, from_step + count):
            ids = [(step * batch + j) % n for j in range(batch)]
            out.append(StepSlice(step, step * batch // n, step * batch, [0] * batch, ids, ids))
        return out

    return fetch


def _load(shard, n, batch, steps, cfg):
    with PlanLoader([(shard, n)], _plan(n, batch), 0, steps, "pretrain", cfg, tokenize, 12, 2, 1) as loader:
        return list(loader)


# --- per-member gzip ---------------------------------------------------------------------------


def test_gz_members_read_as_their_stripped_extension(tmp_path):
    shard = str(tmp_path / "gz.tar")
    write_shard(shard, [
        ("a", [("jpg.gz", gzip.compress(_jpg())), ("txt.gz", gzip.compress(b"gzipped alt")),
               ("json.gz", gzip.compress(json.dumps({"vecap": "gzipped vecap", "label": 2}).encode()))]),
        ("b", [("jpg", _jpg()), ("txt", b"plain alt")]),
    ])
    idx = TarIndex.open(shard)
    assert idx.extensions(0) == ["jpg.gz", "txt.gz", "json.gz"]
    assert decoded_members(idx.read(0)) == {"jpg": _jpg(), "txt": b"gzipped alt",
                                            "json": json.dumps({"vecap": "gzipped vecap", "label": 2}).encode()}
    (b,) = _load(shard, 2, 2, 1, _cfg({"vecap": 0.5, "alt": 0.5}))
    assert b.valid.tolist() == [True, True] and b.skipped == 0
    assert detokenize(b.tokens[0]) in ("gzipped alt", "gzipped vecap") and detokenize(b.tokens[1]) == "plain alt"
    (eb,) = list(iterate_split([(shard, 2)], 2, 12, caption_sources=("alt", "vecap")))
    assert eb.captions[0] == {"alt": ["gzipped alt"], "vecap": ["gzipped vecap"]} and eb.labels.tolist() == [2, -1]


def test_bad_gzip_and_gzip_bomb_skip_the_sample_with_a_reason(tmp_path):
    shard = str(tmp_path / "bad.tar")
    bomb = gzip.compress(b"\0" * (MAX_GUNZIP_BYTES + 1), compresslevel=9)
    assert len(bomb) < MAX_GUNZIP_BYTES // 500
    write_shard(shard, [
        ("ok", [("jpg", _jpg()), ("txt", b"fine")]),
        ("cut", [("jpg", _jpg()), ("txt.gz", gzip.compress(b"x" * 1000)[:-6])]),
        ("junk", [("jpg", _jpg()), ("txt.gz", b"not gzip at all")]),
        ("bomb", [("jpg", _jpg()), ("txt.gz", bomb)]),
    ])
    (b,) = _load(shard, 4, 4, 1, _cfg())
    assert b.valid.tolist() == [True, False, False, False]
    assert b.skip_reasons == {BAD_GZIP: 2, GZIP_TOO_LARGE: 1}


def test_gunzip_cap_and_concatenated_streams():
    assert gunzip(gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"
    assert gunzip(gzip.compress(b"x" * 100), cap=100) == b"x" * 100
    with pytest.raises(MemberError) as e:
        gunzip(gzip.compress(b"x" * 101), cap=100)
    assert e.value.reason == GZIP_TOO_LARGE


def test_plain_and_gz_member_of_one_extension_clash(tmp_path):
    shard = str(tmp_path / "dup.tar")
    write_shard(shard, [("a", [("jpg", _jpg()), ("txt", b"one"), ("txt.gz", gzip.compress(b"two"))])])
    with pytest.raises(DataError, match="two 'txt' members"):
        TarIndex.open(shard)


# --- several captions per sample ------------------------------------------------------------------


def test_multi_line_txt_is_one_caption_per_line():
    members = {"txt": b"first caption\n\n  second caption  \r\nthird\n"}
    assert all_captions(members, ["alt"]) == {"alt": ["first caption", "second caption", "third"]}


def test_training_draws_one_line_per_seed_epoch_key(tmp_path):
    lines = [f"caption {i}" for i in range(5)]
    shard = str(tmp_path / "multi.tar")
    write_shard(shard, [(f"k{i}", [("jpg", _jpg()), ("txt", "\n".join(lines).encode())]) for i in range(8)])
    batches = _load(shard, 8, 8, 3, _cfg())  # three epochs of one step each
    drawn = [[detokenize(t) for t in b.tokens] for b in batches]
    for b, texts in zip(batches, drawn):
        for key, text in zip(b.keys, texts):
            assert text == caption_sources({"txt": "\n".join(lines).encode()}, ["alt"], 5, b.epoch, key)["alt"]
    assert all(t in lines for texts in drawn for t in texts)
    assert len({t for texts in drawn for t in texts}) > 1  # not always the first line
    assert drawn[0] != drawn[1]  # epochs differ
    again = _load(shard, 8, 8, 3, _cfg())
    assert [[detokenize(t) for t in b.tokens] for b in again] == drawn


def test_eval_queries_every_line_of_a_txt(tmp_path):
    shard = str(tmp_path / "val.tar")
    write_shard(shard, [("a", [("jpg", _jpg()), ("txt", b"one\ntwo\n\nthree")]), ("b", [("jpg", _jpg()), ("txt", b"single")])])
    (eb,) = list(iterate_split([(shard, 2)], 4, 12, caption_sources=("alt",)))
    assert eb.captions == [{"alt": ["one", "two", "three"]}, {"alt": ["single"]}]


# --- empty captions -----------------------------------------------------------------------------------


def _empty_shard(tmp_path):
    shard = str(tmp_path / "empty.tar")
    write_shard(shard, [
        ("a", [("jpg", _jpg()), ("txt", b"")]),
        ("b", [("jpg", _jpg()), ("txt", b"  \n ")]),
        ("c", [("jpg", _jpg()), ("txt", b"a real caption")]),
        ("d", [("jpg", _jpg())]),
    ])
    return shard


def test_empty_captions_skip_is_the_default(tmp_path):
    shard = _empty_shard(tmp_path)
    for empty in (None, "skip"):
        (b,) = _load(shard, 4, 4, 1, _cfg(empty=empty))
        assert b.valid.tolist() == [False, False, True, False] and b.skip_reasons == {"no caption": 3}


def test_empty_captions_keep_trains_on_the_empty_caption(tmp_path):
    shard = _empty_shard(tmp_path)
    (b,) = _load(shard, 4, 4, 1, _cfg(empty="keep"))
    # A sample without any .txt still has no caption; an empty one is the caption "".
    assert b.valid.tolist() == [True, True, True, False] and b.skip_reasons == {"no caption": 1}
    assert [detokenize(t) for t in b.tokens[:3]] == ["", "", "a real caption"]


def test_empty_captions_rejects_other_values(tmp_path):
    with pytest.raises(ConfigError, match="data.empty_captions"):
        _load(_empty_shard(tmp_path), 4, 4, 1, _cfg(empty="drop"))


def test_skip_counts_round_trip_with_other():
    counts = skip_counts({"no caption": 3, "undecodable image": 1, "something new": 2})
    assert len(counts) == len(SKIP_REASONS) + 1
    assert skips_by_reason(counts) == {"no caption": 3, "undecodable image": 1, "other": 2}


# --- webdataset metadata names -------------------------------------------------------------------------


def test_metadata_names_are_not_members(tmp_path):
    assert split_member_name("__index__") is None
    assert split_member_name("__meta__/x.jpg") is None
    assert split_member_name("__key__.txt") == ("__key__", "txt")
    assert split_member_name("d/__x__/a.jpg") == ("d/__x__/a", "jpg")
    shard = str(tmp_path / "meta.tar")
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [("__index__", b"{}"), ("a.jpg", _jpg()), ("a.txt", b"a"), ("__meta__/x.jpg", b"?"),
                           ("__meta__/x.txt", b"?"), ("b.jpg", _jpg()), ("b.txt", b"b")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    idx = TarIndex.open(shard)
    assert idx.num_samples == 2 and [idx.key(0), idx.key(1)] == ["a", "b"]


# --- CLIP_benchmark classification layout ----------------------------------------------------------------


def _clip_benchmark(tmp_path, classnames=True, templates=True):
    root = tmp_path / "cifar"
    (root / "test").mkdir(parents=True)
    shard = str(root / "test" / "0.tar")
    write_shard(shard, [(f"s{i:07d}", [("webp", _jpg(40 * i)), ("cls", str(i % 3).encode())]) for i in range(6)])
    if classnames:
        (root / "classnames.txt").write_text("cat\ndog\n\nbird\n")
    if templates:
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of the {c}.\n")
    return shard


def test_read_zero_shot_finds_classnames_and_templates_in_the_parent_directory(tmp_path):
    shard = _clip_benchmark(tmp_path)
    zs = read_zero_shot(shard)
    assert zs is not None and zs.names == ["cat", "dog", "bird"]
    assert zs.templates == ["a photo of a {c}.", "a drawing of the {c}."]
    assert zs.source == str(tmp_path / "cifar" / "classnames.txt")


def test_classes_json_beside_the_shards_wins(tmp_path):
    shard = _clip_benchmark(tmp_path)
    (tmp_path / "cifar" / "test" / "classes.json").write_text(json.dumps({"zero_shot": ["x", "y", "z"]}))
    (tmp_path / "cifar" / "test" / "classnames.txt").write_text("p\nq\n")
    zs = read_zero_shot(shard)
    assert zs is not None and zs.names == ["x", "y", "z"]


def test_no_classnames_means_none(tmp_path):
    assert read_zero_shot(_clip_benchmark(tmp_path, classnames=False)) is None


def test_templates_with_c_or_braces():
    assert fill_template("a photo of a {c}.", "dog") == "a photo of a dog."
    assert fill_template("a {} in a video game.", "dog") == "a dog in a video game."


def _features(shard):
    model = build_clip(resolve_model_cfg("vit-tiny", "text-tiny", embed_dim=32), 259)
    feats, labels = [], []
    for eb in iterate_split([(shard, 6)], 6, 32, caption_sources=("alt",)):
        with torch.no_grad():
            feats.append(model.encode_image(eb.images))
        labels.append(eb.labels)
    return model, torch.cat(feats), torch.cat(labels)


def test_zero_shot_on_a_clip_benchmark_layout_uses_its_templates(tmp_path):
    torch.manual_seed(0)
    shard = _clip_benchmark(tmp_path)
    model, img, lab = _features(shard)
    assert lab.tolist() == [0, 1, 2, 0, 1, 2]
    metrics = {}
    warnings = _zero_shot(model, ByteTokenizer(), {}, shard, img, lab, 77, metrics)
    assert warnings == [] and set(metrics) == {"zeroshot/top1"}
    tok = ByteTokenizer()
    expected = zero_shot_classifier(model, tok, ["cat", "dog", "bird"], ["a photo of a {}.", "a drawing of the {}."], 77)
    top1 = ((img @ expected).argmax(1) == lab).float().mean().item()
    assert metrics["zeroshot/top1"] == pytest.approx(top1)


def test_zero_shot_skipped_says_why(tmp_path):
    torch.manual_seed(0)
    shard = _clip_benchmark(tmp_path, classnames=False)
    model, img, lab = _features(shard)
    metrics = {}
    (w,) = _zero_shot(model, ByteTokenizer(), {}, shard, img, lab, 77, metrics)
    assert metrics == {} and w.startswith("zero-shot skipped: no classnames.txt or classes.json") and shard in w
    (tmp_path / "cifar" / "classnames.txt").write_text("cat\ndog\nbird\n")
    (w,) = _zero_shot(model, ByteTokenizer(), {}, shard, img, torch.full_like(lab, -1), 77, metrics)
    assert metrics == {} and w.startswith("zero-shot skipped: no val sample has a class label")


def test_zero_shot_labels_outside_the_classes_are_left_out_with_a_warning(tmp_path):
    torch.manual_seed(0)
    shard = _clip_benchmark(tmp_path)
    model, img, lab = _features(shard)
    lab[0] = 7  # 3 classes in classnames.txt
    metrics = {}
    (w,) = _zero_shot(model, ByteTokenizer(), {"templates": ["a {}"]}, shard, img, lab, 77, metrics)
    assert w.startswith("zero-shot: 1 val samples have a class label outside the 3 classes of ") and "classnames.txt" in w
    expected = zero_shot_classifier(model, ByteTokenizer(), ["cat", "dog", "bird"], ["a {}"], 77)
    top1 = ((img[1:] @ expected).argmax(1) == lab[1:]).float().mean().item()
    assert metrics["zeroshot/top1"] == pytest.approx(top1)


def test_split_member_name_agrees_with_the_orchestrator_on_the_shared_cases():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "member-names.json")
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    for name, key, ext in cases:
        assert split_member_name(name) == (None if key is None else (key, ext)), name


def test_skip_reasons_are_the_orchestrators():
    """The orchestrator counts any reason it does not list as "other": the two lists must match."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "orchestrator", "src", "domain", "limits.ts")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = text[text.index("export const SKIP_REASONS"):]
    block = block[block.index("= [") + 3 : block.index("];")]
    assert json.loads("[" + block.rstrip().rstrip(",") + "]") == [*SKIP_REASONS, "other"]
