import io
import os
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
    sizes = convert(ConvertParams(str(images), str(masks), str(depths), str(out), shards=2)).sizes
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


# --- image-caption folders -------------------------------------------------


def _captioned(root, n=6):
    """name.jpg + name.txt pairs, one in a nested folder, one with a .json sidecar and one with two caption lines."""
    root.mkdir(parents=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"img{i:02d}" for i in range(n - 2)] + ["sub/a.b", "sub/deeper/c"]
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(root / f"{name}.jpg")
        (root / f"{name}.txt").write_text(f"a photo number {i}\n")
    (root / "img01.txt").write_text("first caption\nsecond caption\n")
    (root / "img02.json").write_text(json.dumps({"vecap": "a detailed caption", "tags": ["x", "y"]}))
    return root, names


def _read_all(out, sizes):
    samples = {}
    for name in sizes:
        idx = TarIndex.open(str(out / name))
        for i in range(idx.num_samples):
            samples[idx.key(i)] = idx.read(i)
    return samples


def test_image_caption_folder(tmp_path):
    src, names = _captioned(tmp_path / "src")
    out = tmp_path / "out"
    result = convert(ConvertParams(str(src), None, None, str(out), shards=2), log=lambda line: None)
    assert result.sizes == {"train-00000.tar": 3, "train-00001.tar": 3}
    assert json.loads((out / "sizes.json").read_text()) == result.sizes
    assert result.skipped == {} and result.ignored == {}
    samples = _read_all(out, result.sizes)
    # Keys keep the relative path (webdataset's convention); the dot in the stem "a.b" becomes "_".
    assert sorted(samples) == sorted(["img00", "img01", "img02", "img03", "sub/a_b", "sub/deeper/c"])
    assert samples["sub/deeper/c"]["jpg"] == (src / "sub/deeper/c.jpg").read_bytes()
    assert samples["img01"]["txt"] == b"first caption\nsecond caption\n"  # several captions, one a line, unchanged
    assert json.loads(samples["img02"]["json"]) == {"vecap": "a detailed caption", "tags": ["x", "y"]}  # the sidecar, as is
    assert json.loads(samples["img00"]["json"]) == {"source": {"image": "img00.jpg"}}
    assert json.loads(samples["sub/a_b"]["json"]) == {"source": {"image": "sub/a.b.jpg"}}
    # Nothing but the shards and sizes.json is left in out (no staging folder; the reader's .idx.json files aside), nor beside it.
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".idx.json")) == ["sizes.json", "train-00000.tar", "train-00001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_captions_are_read_by_the_loader(tmp_path):
    src, _ = _captioned(tmp_path / "src")
    out = tmp_path / "out"
    result = convert(ConvertParams(str(src), None, None, str(out), shards=1, split="val"), log=lambda line: None)
    from clipfleet_worker.data import iterate_split

    batches = list(iterate_split([(str(out / "val-00000.tar"), result.sizes["val-00000.tar"])], 6, 16, caption_sources=("alt", "vecap")))
    assert sum(int(b.valid.sum()) for b in batches) == 6


def test_output_is_deterministic(tmp_path):
    src, _ = _captioned(tmp_path / "src")
    a, b = tmp_path / "a", tmp_path / "b"
    convert(ConvertParams(str(src), None, None, str(a), shards=2), log=lambda line: None)
    # Files touched in another order (a new mtime, a new directory entry order) change nothing.
    (src / "img00.txt").write_text((src / "img00.txt").read_text())
    convert(ConvertParams(str(src), None, None, str(b), shards=2), log=lambda line: None)
    for name in ("train-00000.tar", "train-00001.tar", "sizes.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    idx = TarIndex.open(str(a / "train-00000.tar"))
    assert [idx.key(i) for i in range(idx.num_samples)] == ["img00", "img01", "img02"]


def test_images_without_captions_are_skipped_counted_and_named(tmp_path, capsys):
    src, _ = _captioned(tmp_path / "src")
    (src / "img03.txt").unlink()
    (src / "img00.txt").write_text("  \n")  # blank: no caption (img2dataset writes empty .txt files)
    (src / "orphan.txt").write_text("no image for me")
    lines = []
    result = convert(ConvertParams(str(src), None, None, str(tmp_path / "out"), shards=1), log=lines.append)
    assert result.sizes == {"train-00000.tar": 4}
    assert result.skipped == {"no caption": ["img00.jpg", "img03.jpg"]}
    assert result.ignored == {"caption file without image": ["orphan.txt"]}
    assert any("skipped 2 image(s) without a caption (.txt or .json): img00.jpg, img03.jpg" in line for line in lines)
    assert any("ignored 1 caption file(s) without an image: orphan.txt" in line for line in lines)
    # The CLI's JSON summary carries the counts; the warning goes to stderr.
    assert cli_data.main(["convert", "--images", str(src), "--out", str(tmp_path / "cli"), "--shards", "1"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["samples"] == 4 and summary["skipped"] == {"no caption": 2} and summary["ignored"] == {"caption file without image": 1}
    assert summary["skipped_examples"] == {"no caption": ["img00.jpg", "img03.jpg"]}
    assert "skipped 2 image(s) without a caption" in captured.err
    assert "convert: 4/4 samples (100%)" in captured.err


def test_captions_with_masks_and_uncaptioned_dense_samples(tmp_path):
    images, masks, _ = _dataset(tmp_path / "src", depth=False)
    (images / "ADE_train_0001.txt").write_text("a scene\n")
    (images / "scene.2.json").write_text('{"vecap": "a described scene"}')
    result = convert(ConvertParams(str(images), str(masks), None, str(tmp_path / "out"), shards=1), log=lambda line: None)
    assert result.sizes == {"train-00000.tar": 5} and result.skipped == {}  # dense samples need no caption
    samples = _read_all(tmp_path / "out", result.sizes)
    assert samples["ADE_train_0001"]["txt"] == b"a scene\n" and "seg.png" in samples["ADE_train_0001"]
    assert json.loads(samples["scene_2"]["json"]) == {"vecap": "a described scene"}
    assert "txt" not in samples["scene_0"]


def test_nested_masks_pair_by_relative_stem(tmp_path):
    images, masks = tmp_path / "images" / "city", tmp_path / "masks" / "city"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(images / "x.png")
    Image.new("L", (8, 6)).save(masks / "x.png")
    result = convert(ConvertParams(str(tmp_path / "images"), str(tmp_path / "masks"), None, str(tmp_path / "out"), shards=1), log=lambda line: None)
    assert list(_read_all(tmp_path / "out", result.sizes)) == ["city/x"]


def test_masks_and_output_folders_inside_the_images_folder_are_not_read_as_images(tmp_path):
    images = tmp_path / "images"
    (images / "masks").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(images / "x.jpg")
    Image.new("L", (8, 6)).save(images / "masks" / "x.png")
    out = images / "shards"
    result = convert(ConvertParams(str(images), str(images / "masks"), None, str(out), shards=1), log=lambda line: None)
    assert list(_read_all(out, result.sizes)) == ["x"]
    # Again, now that the output folder (with its sizes.json) is inside the images folder: nothing new is read.
    (images / "x.txt").write_text("a caption")
    result = convert(ConvertParams(str(images), None, None, str(out), shards=1), log=lambda line: None)
    assert result.sizes == {"train-00000.tar": 1} and result.ignored == {}


def _assert_untouched(tmp_path, out, before):
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    assert not [p for p in tmp_path.iterdir() if ".convert-" in p.name], "no staging folder left beside out"


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_leaves_nothing_half_written(tmp_path, existing):
    src, _ = _captioned(tmp_path / "src", n=8)
    out = tmp_path / "out"
    if existing:
        convert(ConvertParams(str(src), None, None, str(out), shards=1, split="val"), log=lambda line: None)
    before = sorted(p.name for p in out.iterdir()) if existing else None
    sizes_before = (out / "sizes.json").read_text() if existing else None
    # An undecodable image late in the order fails the conversion after the first shard was written.
    (src / "sub" / "deeper" / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"c\.jpg: not a readable image"):
        convert(ConvertParams(str(src), None, None, str(out), shards=4), log=lambda line: None)
    _assert_untouched(tmp_path, out, before)
    if existing:
        assert (out / "sizes.json").read_text() == sizes_before


def test_bad_input_is_a_one_line_error_naming_the_flag_or_file(tmp_path, capsys):
    src, _ = _captioned(tmp_path / "src")
    out = tmp_path / "out"

    def run(*argv):
        code = cli_data.main(["convert", *argv])
        err = capsys.readouterr().err
        return code, err

    code, err = run("--images", str(tmp_path / "nope"), "--out", str(out), "--shards", "1")
    assert code == 2 and err.startswith("error: --images: not a directory") and err.count("\n") == 1
    code, err = run("--images", str(src), "--out", str(out), "--shards", "0")
    assert code == 2 and err.startswith("error: --shards: expected at least 1 shard, got 0")
    code, err = run("--images", str(src), "--out", str(out), "--shards", "7")
    assert code == 2 and "--shards: expected 1..6 shards for 6 samples, got 7" in err
    (src / "img02.json").write_text("{not json")
    code, err = run("--images", str(src), "--out", str(out), "--shards", "1")
    assert code == 2 and "img02.json: invalid JSON" in err
    (src / "img02.json").write_text("[1, 2]")
    code, err = run("--images", str(src), "--out", str(out), "--shards", "1")
    assert code == 2 and "img02.json: expected a JSON object" in err
    (src / "img02.json").unlink()
    (src / "img03.txt").write_bytes(b"\xff\xfe caption")
    code, err = run("--images", str(src), "--out", str(out), "--shards", "1")
    assert code == 2 and f"caption file {src / 'img03.txt'} is not UTF-8 text" in err
    (src / "img03.txt").write_text("ok")
    if os.geteuid() != 0:  # root reads any file
        (src / "img03.txt").chmod(0)
        code, err = run("--images", str(src), "--out", str(out), "--shards", "1")
        assert code == 2 and f"cannot read caption file {src / 'img03.txt'}" in err
        (src / "img03.txt").chmod(0o644)
    for p in src.rglob("*.txt"):
        p.unlink()
    code, err = run("--images", str(src), "--out", str(out), "--shards", "1")
    assert code == 2 and "none of the 6 images" in err and "--masks and/or --depth" in err
    assert not out.exists()
