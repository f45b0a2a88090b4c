import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipfleet_worker import cli_data
from clipfleet_worker.convert import ConvertParams, convert
from clipfleet_worker.data import PlanLoader, StepSlice, TarIndex
from clipfleet_worker.errors import DataError


def _dataset(root, n=5, depth=True):
    images, masks, depths = root / "images", root / "masks", root / "depth"
    for d in (images, masks, depths):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        stem = f"ADE_train_{i:04d}" if i % 2 else f"scene.{i}"  # a dot in a stem must not split the key
        rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        rgb.save(images / f"{stem}.{'jpg' if i % 2 else 'png'}")
        mask = np.full((12, 16), i, np.uint8)
        mask[0] = 0
        Image.fromarray(mask, mode="L").save(masks / f"{stem}.png")
        if depth:
            Image.fromarray(np.full((12, 16), 1000 + i, np.uint16)).save(depths / f"{stem}.png")
    return images, masks, depths


def test_round_trip_copies_bytes_and_records_sources(tmp_path):
    images, masks, depths = _dataset(tmp_path / "src")
    out = tmp_path / "out"
    sizes = convert(ConvertParams(str(images), str(masks), str(depths), str(out), shards=2))
    assert sizes == {"train-00000.tar": 2, "train-00001.tar": 3}
    assert json.loads((out / "sizes.json").read_text()) == sizes
    seen = {}
    for name in sizes:
        idx = TarIndex.open(str(out / name))
        for i in range(idx.num_samples):
            m = idx.read(i)
            source = json.loads(m["json"])["source"]
            seen[idx.key(i)] = source
            ext = "jpg" if source["image"].endswith(".jpg") else "png"
            assert m[ext] == (images / source["image"]).read_bytes()
            assert m["seg.png"] == (masks / source["mask"]).read_bytes()
            assert m["depth.png"] == (depths / source["depth"]).read_bytes()
    assert "scene_0" in seen and seen["scene_0"]["image"] == "scene.0.png"
    # A val split converted into the same directory extends sizes.json.
    convert(ConvertParams(str(images), None, str(depths), str(out), shards=1, split="val"))
    assert json.loads((out / "sizes.json").read_text())["val-00000.tar"] == 5


def test_reduce_zero_label_classes_json_and_loader(tmp_path):
    images, masks, _ = _dataset(tmp_path / "src", depth=False)
    out = tmp_path / "out"
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\n")
    convert(
        ConvertParams(str(images), str(masks), None, str(out), shards=1, reduce_zero_label=True, classes=str(tmp_path / "names.txt"))
    )
    assert json.loads((out / "classes.json").read_text())["seg_classes"] == ["a", "b", "c", "d"]
    idx = TarIndex.open(str(out / "train-00000.tar"))
    keys = [idx.key(i) for i in range(5)]
    seg = np.asarray(Image.open(io.BytesIO(idx.read(keys.index("ADE_train_0003"))["seg.png"])))
    assert (seg[0] == 255).all() and (seg[1:] == 2).all()
    cfg = {
        "seed": 0,
        "data": {"captions": {"alt": 1.0}, "augment": {"crop_scale": None, "crop_ratio": [1, 1], "hflip": 0.0}},
        "dense": {"num_classes": None, "ignore_index": 255},
    }

    def plan(from_step, count):
        return [StepSlice(0, 0, 0, [0] * 5, list(range(5)), list(range(5)))]

    shards = [(str(out / "train-00000.tar"), 5)]
    with PlanLoader(shards, plan, 0, 1, "finetune-seg", cfg, None, 12, 1, 1) as loader:
        b = next(loader)
    assert loader.config.num_classes == 4
    # scene.0: all pixels 0 -> ignore; id 4 (sample 4 "scene.4" -> 3 after reduction) stays in range.
    assert (b.seg[keys.index("scene_0")] == 255).all()
    assert set(b.seg[keys.index("scene_4")].unique().tolist()) <= {3, 255}
    assert b.valid.all() and b.seg_out_of_range == 0
    assert b.images.dtype == torch.float32


def test_unpaired_files_are_named(tmp_path):
    images, masks, depths = _dataset(tmp_path / "src")
    Image.new("RGB", (16, 12)).save(images / "lonely.jpg")
    with pytest.raises(DataError, match="lonely.jpg"):
        convert(ConvertParams(str(images), str(masks), None, str(tmp_path / "o"), shards=1))
    (images / "lonely.jpg").unlink()
    Image.new("L", (16, 12)).save(masks / "orphan.png")
    with pytest.raises(DataError, match="orphan.png"):
        convert(ConvertParams(str(images), str(masks), None, str(tmp_path / "o"), shards=1))


def test_wrong_label_formats_are_rejected(tmp_path):
    images, masks, depths = _dataset(tmp_path / "src")
    Image.new("L", (16, 12)).save(depths / "scene.0.png")
    with pytest.raises(DataError, match="scene.0.png: depth must be a 16-bit PNG"):
        convert(ConvertParams(str(images), None, str(depths), str(tmp_path / "o"), shards=1))
    Image.new("RGB", (16, 12)).save(masks / "scene.2.png")
    with pytest.raises(DataError, match="single-channel"):
        convert(ConvertParams(str(images), str(masks), None, str(tmp_path / "o"), shards=1))
    Image.new("L", (8, 8)).save(masks / "scene.2.png")
    with pytest.raises(DataError, match="mask is 8x8 but its image is 16x12"):
        convert(ConvertParams(str(images), str(masks), None, str(tmp_path / "o"), shards=1))


def test_cli_convert(tmp_path, capsys):
    images, masks, depths = _dataset(tmp_path / "src")
    out = tmp_path / "out"
    argv = ["convert", "--images", str(images), "--masks", str(masks), "--depth", str(depths), "--out", str(out), "--shards", "1"]
    assert cli_data.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == {"train-00000.tar": 5}
    assert cli_data.main(["convert", "--images", str(images), "--out", str(out), "--shards", "1"]) == 2
    assert "--masks and/or --depth" in capsys.readouterr().err
