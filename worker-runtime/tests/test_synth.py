import argparse
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipfleet_worker import cli_data, synth
from clipfleet_worker.data import TarIndex, expand_urls, iterate_split, read_sizes
from clipfleet_worker.errors import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = synth.generate(synth.SynthParams(str(out), train=60, val=20, shards=3, size=32, seed=7))
    return out, result


def _files(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_two_runs_are_byte_identical_and_seed_matters(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    synth.generate(synth.SynthParams(str(again), train=60, val=20, shards=3, size=32, seed=7))
    first, second = _files(out), _files(again)
    assert first.keys() == second.keys() and first == second
    other = tmp_path / "other"
    synth.generate(synth.SynthParams(str(other), train=60, val=20, shards=3, size=32, seed=8))
    assert _files(other)["train-00000.tar"] != first["train-00000.tar"]


def test_layout_sizes_and_classes(dataset):
    out, result = dataset
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"train-00000.tar": 20, "train-00001.tar": 20, "train-00002.tar": 20, "val-00000.tar": 20}
    assert result.sizes == sizes
    urls = expand_urls([str(out / "train-{00000..00002}.tar")])
    assert urls == result.train_shards and read_sizes(urls) == [20, 20, 20]
    for url in urls + result.val_shards:
        assert TarIndex.open(url).num_samples == sizes[os.path.basename(url)]
    idx = TarIndex.open(urls[1])
    assert idx.key(0) == "train00000020"
    assert idx.extensions(0) == ["jpg", "txt", "json", "syn.json", "seg.png", "depth.png"]
    classes = json.loads((out / "classes.json").read_text())
    assert classes["classes"] == list(synth.SHAPES) == classes["zero_shot"]
    assert classes["seg_classes"] == ["background", *synth.SHAPES]


def _samples(dataset):
    out, result = dataset
    for url in result.train_shards:
        idx = TarIndex.open(url)
        for i in range(idx.num_samples):
            yield idx.key(i), idx.read(i)


def test_seg_depth_and_labels_are_consistent(dataset):
    for key, m in _samples(dataset):
        meta = json.loads(m["json"])
        img = Image.open(io.BytesIO(m["jpg"]))
        seg_img = Image.open(io.BytesIO(m["seg.png"]))
        depth_img = Image.open(io.BytesIO(m["depth.png"]))
        assert img.size == seg_img.size == depth_img.size == (32, 32)
        assert seg_img.mode == "L" and depth_img.mode in ("I", "I;16")
        seg, depth = np.asarray(seg_img), np.asarray(depth_img)
        classes = {o["class"] + 1 for o in meta["objects"]}
        assert set(np.unique(seg)) <= {0} | classes
        for o in meta["objects"]:
            if o["described"]:
                assert (seg == o["class"] + 1).any(), key
        # The label is the class covering the most pixels.
        counts = np.bincount(seg.ravel(), minlength=len(synth.SHAPES) + 1)
        assert counts[meta["label"] + 1] == counts[1:].max()
        # 16-bit millimetres: background metres away, objects nearer, nothing invalid.
        assert depth.min() > 0 and depth.max() > 3000 and depth.max() < 65535
        if (seg > 0).any():
            assert depth[seg > 0].mean() < depth[seg == 0].mean()


def test_vecap_describes_every_object_and_alt_is_weak(dataset):
    informative = 0
    total = 0
    for _, m in _samples(dataset):
        meta = json.loads(m["json"])
        vecap = meta["vecap"].lower()
        described = [o for o in meta["objects"] if o["described"]]
        assert described
        for o in described:
            assert o["colour"] in vecap and o["shape"] in vecap
        assert len(json.loads(m["syn.json"])["syn_text"]) == 2
        alt = m["txt"].decode().lower()
        words = set(re.findall(r"[a-z]+", alt))
        total += 1
        informative += any(o["colour"] in words or o["shape"] in words for o in described)
    # Weakly correlated: some alt texts mention a true attribute, most do not.
    assert 0.15 * total < informative < 0.7 * total


def test_val_split_feeds_zero_shot_eval(dataset):
    _, result = dataset
    labels = []
    for eb in iterate_split([(u, 20) for u in result.val_shards], 8, 32, caption_sources=("vecap",)):
        assert eb.valid.all()
        labels.extend(eb.labels.tolist())
    assert len(labels) == 20 and all(0 <= x < len(synth.SHAPES) for x in labels)


def test_ensure_reuses_matching_dataset(dataset, tmp_path):
    params = synth.SynthParams(str(tmp_path / "d"), train=10, val=0, shards=2, size=32, seed=1)
    assert synth.ensure(params).generated
    mtime = os.path.getmtime(tmp_path / "d" / "train-00000.tar")
    again = synth.ensure(params)
    assert not again.generated and again.val_shards == []
    assert os.path.getmtime(tmp_path / "d" / "train-00000.tar") == mtime
    bigger = synth.SynthParams(str(tmp_path / "d"), train=12, val=0, shards=2, size=32, seed=1)
    assert synth.ensure(bigger).generated


def test_bad_params_and_cli(tmp_path, capsys):
    with pytest.raises(ConfigError, match="data.synth.shards"):
        synth.generate(synth.SynthParams(str(tmp_path), train=2, val=0, shards=3, size=32, seed=0))
    assert cli_data.main(["synth", "--out", str(tmp_path / "c"), "--train", "4", "--val", "0", "--shards", "2", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 4 and summary["train_shards"] == 2
    assert cli_data.main(["synth", "--out", str(tmp_path / "c"), "--train", "1", "--shards", "2"]) == 2
    assert "shards" in capsys.readouterr().err


@pytest.mark.parametrize(
    "train,val,shards,val_shards",
    [(60, 20, 3, 1), (40, 20, 8, 2), (80, 12, 9, 3), (16, 4, 4, 1), (10, 0, 2, 0)],
)
def test_val_shards_are_ceil_shards_over_4(tmp_path, train, val, shards, val_shards):
    # The orchestrator's default data.val names ceil(shards / 4) val shards (synthValShards in domain/spec.ts).
    params = synth.SynthParams(str(tmp_path / "d"), train=train, val=val, shards=shards, size=16, seed=0)
    layout = synth.shard_layout(params)
    assert len(layout["val"]) == val_shards == params.val_shard_count()
    assert sum(hi - lo for lo, hi in layout["val"]) == val and all(hi > lo for lo, hi in layout["val"])
    assert synth.dataset._marker(params)["val_shards"] == val_shards


def test_val_shards_given_and_too_few_val_samples(tmp_path):
    params = synth.SynthParams(str(tmp_path / "d"), train=8, val=6, shards=2, size=16, seed=0, val_shards=3)
    assert [hi - lo for lo, hi in synth.shard_layout(params)["val"]] == [2, 2, 2]
    with pytest.raises(ConfigError, match="data.synth.val: 2 samples cannot fill 3 val shards"):
        synth.SynthParams(str(tmp_path / "d"), train=12, val=2, shards=12, size=16, seed=0).validate()


def test_synth_json_records_the_parameters_and_generation_is_all_or_nothing(tmp_path):
    out = tmp_path / "d"
    synth.generate(synth.SynthParams(str(out), train=8, val=4, shards=8, size=16, seed=2))
    assert json.loads((out / "synth.json").read_text()) == {"train": 8, "val": 4, "shards": 8, "val_shards": 2, "size": 16, "seed": 2, "version": 2}
    assert sorted(json.loads((out / "sizes.json").read_text())) == [f"train-{i:05d}.tar" for i in range(8)] + ["val-00000.tar", "val-00001.tar"]
    # A generation that fails midway into a new folder (a real EFBIG: a file size limit below one shard's size)
    # leaves neither the folder nor its staging folder.
    script = (
        "import resource, signal, sys\n"
        "from clipfleet_worker import synth\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "synth.generate(synth.SynthParams(sys.argv[1], train=64, val=8, shards=2, size=64, seed=0))\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "new")], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_cli_defaults_are_the_documented_ones(tmp_path):
    parser = argparse.ArgumentParser()
    cli_data.add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "--out", str(tmp_path)])
    # The same defaults as `clipfleet data synth` (which passes only the flags given) and docs/data.md.
    assert (args.train, args.val, args.shards, args.seed, args.size, args.val_shards) == (2048, 256, 4, 0, 64, None)
    assert synth.SYNTH_DEFAULTS == {"train": 2048, "val": 256, "shards": 4, "seed": 0, "size": 64}
