import io
import json
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from clipfleet_worker.data import PlanLoader, StepSlice, iterate_split
from clipfleet_worker.data.writer import write_shard
from clipfleet_worker.errors import ConfigError, DataError

CTX = 48
PER_SHARD = 10


def tokenize(texts):
    """Byte-level tokens, so tests can read captions back."""
    out = torch.zeros(len(texts), CTX, dtype=torch.long)
    for i, t in enumerate(texts):
        b = list(t.encode())[:CTX]
        out[i, : len(b)] = torch.tensor(b, dtype=torch.long)
    return out


def detokenize(row):
    return bytes(int(v) for v in row if v != 0).decode()


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpg(value):
    # A gradient, so different crops/flips give different pixels.
    arr = np.zeros((16, 20, 3), np.uint8)
    arr[..., 0] = np.arange(20) * 12
    arr[..., 1] = (np.arange(16) * 15)[:, None]
    arr[..., 2] = value
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _make_shards(tmp_path, n_shards=2, corrupt=(), no_caption=(), dense=False):
    shards = []
    for s in range(n_shards):
        samples = []
        for i in range(PER_SHARD):
            key = f"s{s}k{i:03d}"
            jpg = b"\xff\xd8\xff\xe0 not really a jpeg" if (s, i) in corrupt else _jpg(10 * i + s)
            members = [("jpg", jpg)]
            if (s, i) not in no_caption:
                members.append(("txt", f"alt {key}".encode()))
                members.append(("json", json.dumps({"vecap": f"vecap {key}", "label": i % 3}).encode()))
            if dense:
                seg = np.full((16, 20), i % 9, np.uint8)
                seg[0, :] = 20  # out of range for 9 classes: 20 pixels per sample
                seg[1, :] = 255  # already ignore
                members.append(("seg.png", _png(seg)))
                members.append(("depth.png", _png(np.full((16, 20), 1500 + i, np.uint16))))
            samples.append((key, members))
        path = str(tmp_path / f"train-{s:05d}.tar")
        write_shard(path, samples)
        shards.append((path, PER_SHARD))
    return shards


def _cfg(captions=None, mode="sample", crop=(0.5, 1.0), num_classes=None):
    return {
        "seed": 3,
        "data": {
            "captions": captions or {"alt": 0.5, "vecap": 0.5},
            "caption_mode": mode,
            "augment": {"crop_scale": list(crop) if crop else None, "crop_ratio": [0.75, 1.33], "hflip": 0.5},
        },
        "dense": {"num_classes": num_classes, "ignore_index": 255},
    }


class FakePlan:
    """A deterministic plan: step t reads global samples [t*b, (t+1)*b) of a world, rank-strided."""

    def __init__(self, total, batch, rank=0, world=1, epoch_of=lambda step: 0):
        self.total, self.batch, self.rank, self.world = total, batch, rank, world
        self.epoch_of = epoch_of
        self.calls = []

    def ids(self, step):
        per_rank = self.batch // self.world
        first = step * self.batch + self.rank * per_rank
        return [(first + j) % self.total for j in range(per_rank)]

    def __call__(self, from_step, count):
        self.calls.append((from_step, count))
        out = []
        for step in range(from_step, from_step + count):
            ids = self.ids(step)
            out.append(
                StepSlice(
                    step, self.epoch_of(step), step * self.batch, [g // PER_SHARD for g in ids], [g % PER_SHARD for g in ids], ids
                )
            )
        return out


def _key(g):
    return f"s{g // PER_SHARD}k{g % PER_SHARD:03d}"


def test_batches_come_in_step_order_with_the_planned_samples(tmp_path):
    shards = _make_shards(tmp_path)
    plan = FakePlan(20, 4)
    with PlanLoader(shards, plan, 2, 7, "pretrain", _cfg({"vecap": 1.0}), tokenize, 24, 2, 2) as loader:
        batches = list(loader)
    assert [b.step for b in batches] == [2, 3, 4, 5, 6]
    for b in batches:
        assert b.sample_ids == plan.ids(b.step)
        assert b.keys == [_key(g) for g in b.sample_ids]
        assert b.images.shape == (4, 3, 24, 24) and b.images.dtype == torch.float32
        assert b.tokens.shape == (4, CTX) and b.tokens_b is None
        assert b.valid.all() and b.skipped == 0 and b.data_wait >= 0
        assert [detokenize(t) for t in b.tokens] == [f"vecap {k}" for k in b.keys]
        assert b.caption_sources == ["vecap"] * 4
    assert plan.calls[0] == (2, 2) and all(count <= 2 for _, count in plan.calls)


def test_corrupt_image_and_missing_caption_are_skipped_and_counted(tmp_path):
    shards = _make_shards(tmp_path, corrupt={(0, 1)}, no_caption={(0, 2)})
    with PlanLoader(shards, FakePlan(20, 4), 0, 1, "pretrain", _cfg(), tokenize, 16, 2, 1) as loader:
        (b,) = list(loader)
    assert b.valid.tolist() == [True, False, False, True]
    assert b.skipped == 2 and b.skip_reasons == {"undecodable image": 1, "no caption": 1}
    assert b.images[1].abs().sum() == 0 and b.tokens[2].abs().sum() == 0
    assert b.images.shape == (4, 3, 16, 16)


def test_truncated_shard_error_reaches_the_consumer_after_good_batches(tmp_path):
    shards = _make_shards(tmp_path)
    with open(shards[1][0], "r+b") as f:
        f.truncate(os.path.getsize(shards[1][0]) // 2)
    with PlanLoader(shards, FakePlan(20, 5), 0, 4, "pretrain", _cfg(), tokenize, 16, 2, 2) as loader:
        assert next(loader).step == 0  # samples 0-4: shard 0
        assert next(loader).step == 1  # samples 5-9: shard 0
        with pytest.raises(DataError, match="truncated") as e:
            next(loader)
        assert e.value.shard == shards[1][0]
        with pytest.raises(StopIteration):
            next(loader)


def test_manifest_count_mismatch_is_a_data_error(tmp_path):
    (path, _), _ = _make_shards(tmp_path)
    with PlanLoader([(path, 12)], FakePlan(10, 2), 0, 1, "pretrain", _cfg(), tokenize, 16, 1, 1) as loader:
        with pytest.raises(DataError, match="manifest says 12 samples but the shard has 10"):
            next(loader)


def test_draws_do_not_depend_on_world_size(tmp_path):
    shards = _make_shards(tmp_path)
    cfg = _cfg()
    by_key = {}
    with PlanLoader(shards, FakePlan(20, 8), 0, 2, "pretrain", cfg, tokenize, 16, 2, 2) as loader:
        for b in loader:
            for k, img, tok in zip(b.keys, b.images, b.tokens):
                by_key[k] = (img, tok)
    seen = 0
    for rank in range(2):
        plan = FakePlan(20, 8, rank=rank, world=2)
        with PlanLoader(shards, plan, 0, 2, "pretrain", cfg, tokenize, 16, 1, 1) as loader:
            for b in loader:
                for k, img, tok in zip(b.keys, b.images, b.tokens):
                    assert torch.equal(img, by_key[k][0]) and torch.equal(tok, by_key[k][1])
                    seen += 1
    assert seen == 16
    # ... but they do depend on the epoch.
    plan = FakePlan(20, 8, epoch_of=lambda step: 1)
    with PlanLoader(shards, plan, 0, 1, "pretrain", cfg, tokenize, 16, 1, 1) as loader:
        b = next(loader)
    assert any(not torch.equal(img, by_key[k][0]) for k, img in zip(b.keys, b.images))


def test_caption_mode_both_gives_alt_and_other(tmp_path):
    shards = _make_shards(tmp_path)
    with PlanLoader(shards, FakePlan(20, 4), 0, 1, "pretrain", _cfg(mode="both"), tokenize, 16, 1, 1) as loader:
        b = next(loader)
    assert [detokenize(t) for t in b.tokens] == [f"alt {k}" for k in b.keys]
    assert [detokenize(t) for t in b.tokens_b] == [f"vecap {k}" for k in b.keys]


def test_dense_seg_and_depth_batches(tmp_path):
    shards = _make_shards(tmp_path, dense=True, corrupt={(0, 3)})
    cfg = _cfg(crop=None, num_classes=9)
    with PlanLoader(shards, FakePlan(20, 4), 0, 1, "finetune-seg", cfg, None, 20, 2, 1) as loader:
        b = next(loader)
    assert b.tokens is None and b.depth is None
    assert b.seg.shape == (4, 20, 20) and b.seg.dtype == torch.int64
    # Val-style geometry on 20x16: resize to 25x20, crop 20x20: row 0 and 1 of the source survive partly.
    for j in range(3):
        values = set(b.seg[j].unique().tolist())
        assert values <= {j % 9, 255} and j % 9 in values
    assert (b.seg[3] == 255).all() and not b.valid[3] and b.skipped == 1
    assert b.seg_out_of_range > 0 and b.seg_out_of_range % 3 == 0  # same count for each of 3 valid samples
    with PlanLoader(shards, FakePlan(20, 4), 0, 1, "finetune-depth", cfg, None, 20, 2, 1) as loader:
        b = next(loader)
    assert b.seg is None and b.depth.dtype == torch.float32
    assert torch.allclose(b.depth[0], torch.full((20, 20), 1.5)) and (b.depth[3] == 0).all()


def test_seg_num_classes_from_classes_json_or_config_error(tmp_path):
    shards = _make_shards(tmp_path, dense=True)
    with pytest.raises(ConfigError, match="dense.num_classes"):
        PlanLoader(shards, FakePlan(20, 4), 0, 1, "finetune-seg", _cfg(), None, 16, 1, 1)
    (tmp_path / "classes.json").write_text(json.dumps({"seg_classes": ["c"] * 5}))
    with PlanLoader(shards, FakePlan(20, 4), 0, 1, "finetune-seg", _cfg(), None, 16, 1, 1) as loader:
        assert loader.config.num_classes == 5


def test_data_wait_measures_blocking_and_close_stops_threads(tmp_path):
    shards = _make_shards(tmp_path)
    gate = threading.Event()
    plan = FakePlan(20, 2)

    def slow_plan(from_step, count):
        gate.wait()
        return plan(from_step, count)

    threading.Timer(0.05, gate.set).start()
    loader = PlanLoader(shards, slow_plan, 0, 1000, "pretrain", _cfg(), tokenize, 16, 2, 2)
    b = next(loader)
    assert b.data_wait >= 0.04
    next(loader)
    loader.close()
    loader.close()
    assert not any(t.name.startswith("clipfleet-") and t.is_alive() for t in threading.enumerate())


def test_iterate_split_covers_every_sample_once_across_ranks(tmp_path):
    shards = _make_shards(tmp_path, corrupt={(1, 4)})
    seen = []
    for rank in range(3):
        for eb in iterate_split(shards, 4, 16, caption_sources=("vecap", "alt"), rank=rank, world_size=3):
            assert eb.images.shape[1:] == (3, 16, 16) and len(eb.keys) == eb.images.shape[0] <= 4
            for g, k, caps, label, ok in zip(eb.sample_ids, eb.keys, eb.captions, eb.labels, eb.valid):
                assert k == _key(g)
                if ok:
                    assert caps == {"vecap": [f"vecap {k}"], "alt": [f"alt {k}"]}
                    assert label == (g % PER_SHARD) % 3
            seen.extend(eb.sample_ids)
    assert seen == list(range(20))


def test_iterate_split_stops_early_without_leaking_threads(tmp_path):
    shards = _make_shards(tmp_path)
    it = iterate_split(shards, 2, 16)
    next(it)
    it.close()
    assert not any(t.name.startswith("clipfleet-") and t.is_alive() for t in threading.enumerate())


def _png_shards(tmp_path):
    # Lossless sources (a PNG decodes to the same pixels under any zlib), so the digest below
    # depends on the loader's geometry, resampling and normalisation, not on libjpeg's version.
    rng = np.random.default_rng(0)
    shards = []
    for s in range(2):
        samples = []
        for i in range(PER_SHARD):
            key = f"s{s}k{i:03d}"
            arr = rng.integers(0, 256, (40 + 3 * i, 48 - 2 * i, 3), dtype=np.uint8)
            members = [("png", _png(arr)), ("txt", f"alt {key}".encode()), ("json", json.dumps({"vecap": f"vecap {key}"}).encode())]
            if (s, i) == (1, 2):
                members = [("png", b"\x89PNG\r\n not really a png"), *members[1:]]
            samples.append((key, members))
        path = str(tmp_path / f"train-{s:05d}.tar")
        write_shard(path, samples)
        shards.append((path, PER_SHARD))
    return shards


def test_batch_bytes_are_pinned(tmp_path):
    # The loader's speed-ups (where each image is written, how tokens are stacked) must not change
    # a single byte of what a step gets: images, tokens and validity of a fixed plan and seed.
    import hashlib

    shards = _png_shards(tmp_path)
    h = hashlib.sha256()
    for threads in (1, 2):
        digest = hashlib.sha256()
        with PlanLoader(shards, FakePlan(20, 5), 0, 4, "pretrain", _cfg(mode="both"), tokenize, 24, threads, 2) as loader:
            for b in loader:
                for t in (b.images, b.tokens, b.tokens_b, b.valid):
                    digest.update(t.numpy().tobytes())
                digest.update(repr((b.keys, b.caption_sources, b.skip_reasons)).encode())
        if threads == 1:
            h = digest
        assert digest.hexdigest() == h.hexdigest()
    assert h.hexdigest() == "61462e6615246df9dd8332be33b0902b422a69bff584bd975b1d37c03dc59f77"
