"""Convert folders of images + label maps into clipfleet's WebDataset layout.

Input: `--images DIR` with .jpg/.jpeg/.png/.webp files, `--masks DIR` with
.png class-id masks and/or `--depth DIR` with 16-bit .png depth maps in
millimetres (0 = invalid). Files pair by stem (`0001.jpg` + `0001.png`); an
unpaired file is an error naming it. Image bytes are copied unchanged (no
re-encode); masks are copied unless --reduce-zero-label rewrites them.

Output: `{split}-{i:05d}.tar` with one sample per stem (dots in stems become
underscores, since the key ends at the first dot): `.jpg`/`.png`/`.webp`,
`.seg.png`, `.depth.png` and a `.json` recording the source file names
(no captions: dense fine-tuning does not read them). `sizes.json` is merged,
so train and val can be converted into the same directory; `--classes FILE`
(one name per line, or a JSON list) writes `classes.json`.

Known datasets:
- ADE20k (ADEChallengeData2016): images/training/*.jpg and
  annotations/training/*.png hold 0 = "other" and 1..150 = classes. Use
  --reduce-zero-label (the mmseg convention): 0 becomes 255 (ignore) and
  k becomes k-1, giving 150 classes 0..149 (dense.num_classes 150,
  dense.ignore_index 255). "Other" is not a class: it is unlabelled clutter.
- NYUv2 (labelled subset exported to files): RGB images, depth as 16-bit PNG
  in millimetres (convert metres x 1000 when exporting from the .mat), and
  40-class labels with 0 = unlabelled, which --reduce-zero-label maps the same
  way (40 classes). For the depth task only, pass --depth without --masks.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .data.writer import json_bytes, merge_sizes, write_atomic, write_shard
from .errors import ConfigError, DataError

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_MAX_LISTED = 10


@dataclass(frozen=True)
class ConvertParams:
    """The convert command's options."""

    images: str
    masks: str | None
    depth: str | None
    out: str
    shards: int
    split: str = "train"
    reduce_zero_label: bool = False
    classes: str | None = None


def _list(directory: str, suffixes: set[str], what: str) -> dict[str, str]:
    if not os.path.isdir(directory):
        raise ConfigError(f"not a directory: {directory}", field=f"--{what}")
    by_stem: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        stem, suffix = os.path.splitext(name)
        if name.startswith(".") or suffix.lower() not in suffixes:
            continue
        if stem in by_stem:
            raise DataError(f"two files with stem {stem!r} in {directory}: {by_stem[stem]}, {name}")
        by_stem[stem] = name
    if not by_stem:
        raise ConfigError(f"no {'/'.join(sorted(suffixes))} files in {directory}", field=f"--{what}")
    return by_stem


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _pair(images: dict[str, str], others: dict[str, str], images_dir: str, other_dir: str) -> None:
    no_partner = sorted(images[s] for s in images.keys() - others.keys())
    orphans = sorted(others[s] for s in others.keys() - images.keys())
    if no_partner:
        raise DataError(f"{len(no_partner)} image(s) in {images_dir} have no file in {other_dir}: {_names(no_partner)}")
    if orphans:
        raise DataError(f"{len(orphans)} file(s) in {other_dir} have no image in {images_dir}: {_names(orphans)}")


def _read_classes(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror})", field="--classes") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})", field="--classes") from None
        if isinstance(data, dict):
            data = data.get("seg_classes", data.get("classes"))
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ConfigError(f"{path}: expected a list of class names", field="--classes")
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


def _mask_member(path: str, image_size: tuple[int, int], reduce_zero_label: bool) -> bytes:
    with Image.open(path) as m:
        if m.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: masks must be single-channel class ids, got mode {m.mode} (a colour-coded mask?)")
        if m.size != image_size:
            raise DataError(f"{path}: mask is {m.size[0]}x{m.size[1]} but its image is {image_size[0]}x{image_size[1]}")
        if not reduce_zero_label:
            with open(path, "rb") as f:
                return f.read()
        ids = np.asarray(m).astype(np.int64)
    if ids.max() > 256:
        raise DataError(f"{path}: class id {int(ids.max())} does not fit an 8-bit mask after --reduce-zero-label")
    out = np.where(ids == 0, 255, ids - 1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out, mode="L").save(buf, "PNG")
    return buf.getvalue()


def _depth_member(path: str, image_size: tuple[int, int]) -> bytes:
    with Image.open(path) as m:
        if m.mode not in ("I", "I;16"):
            raise DataError(f"{path}: depth must be a 16-bit PNG in millimetres, got mode {m.mode}")
        if m.size != image_size:
            raise DataError(f"{path}: depth is {m.size[0]}x{m.size[1]} but its image is {image_size[0]}x{image_size[1]}")
    with open(path, "rb") as f:
        return f.read()


def convert(params: ConvertParams) -> dict[str, int]:
    """Write the shards of one split; returns {shard basename: samples}."""
    if params.masks is None and params.depth is None:
        raise ConfigError("give --masks and/or --depth: there is nothing to pair the images with")
    images = _list(params.images, set(IMAGE_SUFFIXES), "images")
    masks = _list(params.masks, {".png"}, "masks") if params.masks else None
    depth = _list(params.depth, {".png"}, "depth") if params.depth else None
    if masks is not None:
        _pair(images, masks, params.images, params.masks)  # type: ignore[arg-type]
    if depth is not None:
        _pair(images, depth, params.images, params.depth)  # type: ignore[arg-type]
    stems = sorted(images)
    if not 1 <= params.shards <= len(stems):
        raise ConfigError(f"expected 1..{len(stems)} shards for {len(stems)} samples, got {params.shards}", field="--shards")
    keys: dict[str, str] = {}
    for stem in stems:
        key = stem.replace(".", "_")
        if key in keys:
            raise DataError(f"stems {keys[key]!r} and {stem!r} give the same sample key {key!r}")
        keys[key] = stem
    classes = _read_classes(params.classes) if params.classes else None
    os.makedirs(params.out, exist_ok=True)

    def sample(stem: str) -> tuple[str, list[tuple[str, bytes]]]:
        image_name = images[stem]
        image_path = os.path.join(params.images, image_name)
        with Image.open(image_path) as im:
            size = im.size
        with open(image_path, "rb") as f:
            members = [(IMAGE_SUFFIXES[os.path.splitext(image_name)[1].lower()], f.read())]
        source = {"image": image_name}
        if masks is not None:
            members.append(("seg.png", _mask_member(os.path.join(params.masks, masks[stem]), size, params.reduce_zero_label)))  # type: ignore[arg-type]
            source["mask"] = masks[stem]
        if depth is not None:
            members.append(("depth.png", _depth_member(os.path.join(params.depth, depth[stem]), size)))  # type: ignore[arg-type]
            source["depth"] = depth[stem]
        members.append(("json", json.dumps({"source": source}, sort_keys=True).encode()))
        return stem.replace(".", "_"), members

    sizes: dict[str, int] = {}
    n, k = len(stems), params.shards
    for i in range(k):
        chunk = stems[n * i // k : n * (i + 1) // k]
        name = f"{params.split}-{i:05d}.tar"
        sizes[name] = write_shard(os.path.join(params.out, name), (sample(s) for s in chunk))
    merge_sizes(params.out, sizes)
    if classes is not None:
        write_atomic(os.path.join(params.out, "classes.json"), json_bytes({"classes": classes, "seg_classes": classes}))
    return sizes
