"""Convert folders of images (+ captions, masks, depth) into clipfleet's WebDataset layout.

Input: `--images DIR` with .jpg/.jpeg/.png/.webp files, searched recursively
(hidden files and folders skipped). Beside each image, same-stem caption files
are taken when present: `name.txt` (the AltText, source `alt`; one caption a
line for several) and `name.json` (a JSON object written unchanged as the
sample's .json member, so its string and list fields are caption sources such
as `vecap`). `--masks DIR` with .png class-id masks and/or `--depth DIR` with
16-bit .png depth maps in millimetres (0 = invalid) pair by relative stem
(`a/0001.jpg` + `a/0001.png`); an unpaired file is an error naming it. Image
bytes are copied unchanged (no re-encode); masks are copied unless
--reduce-zero-label rewrites them.

Without --masks/--depth an image needs a caption file: one without (or with
only an empty .txt) is skipped, counted and named in the summary, as
img2dataset leaves out failed samples; with none captioned it is an error.

Output: `{split}-{i:05d}.tar` with one sample per image, in the order of the
images' relative paths (so the same folder gives byte-identical shards). The
key is the relative path without its extension, `/` kept (webdataset's own
convention: `a/b/0001.jpg` -> key `a/b/0001`); dots in the file stem become
underscores, since the key ends at the first dot of the base name. Members:
the image, `.txt`, `.json` (the sidecar, else one recording the source file
names), `.seg.png`, `.depth.png`. `sizes.json` is merged, so train and val can
be converted into the same directory; `--classes FILE` (one name per line, or
a JSON list) writes `classes.json`. Everything is written into a staging
folder first and moved into place only when the whole split succeeded.

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
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .data.writer import json_bytes, merge_sizes, write_atomic, write_shard
from .errors import ConfigError, DataError

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
CAPTION_SUFFIXES = (".txt", ".json")
_MAX_LISTED = 10
_PROGRESS_SECONDS = 2.0


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


@dataclass
class ConvertResult:
    """What was written: {shard basename: samples}, and what was left out, by reason, with the first few names."""

    sizes: dict[str, int]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)

    def summary(self, out: str) -> dict:
        """The JSON summary `convert` prints."""
        return {
            "out": out,
            "shards": self.sizes,
            "samples": sum(self.sizes.values()),
            "skipped": {reason: len(names) for reason, names in self.skipped.items()},
            "skipped_examples": {reason: names[:_MAX_LISTED] for reason, names in self.skipped.items()},
            "ignored": {reason: len(names) for reason, names in self.ignored.items()},
        }


def _walk(directory: str, what: str, exclude: tuple[str | None, ...] = ()) -> list[str]:
    """Relative paths of the non-hidden files under directory, sorted (so the order does not depend on the filesystem).

    Folders in `exclude` (the masks, depth and output folders, when nested in
    the images folder) are not searched.
    """
    if not os.path.isdir(directory):
        raise ConfigError(f"not a directory: {directory}", field=f"--{what}")
    skip = {os.path.realpath(d) for d in exclude if d is not None}
    found: list[str] = []

    def fail(e: OSError) -> None:
        raise ConfigError(f"cannot list {e.filename} ({e.strerror})", field=f"--{what}")

    for root, dirs, files in os.walk(directory, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in skip)
        rel = os.path.relpath(root, directory)
        for name in files:
            if not name.startswith("."):
                found.append(name if rel == "." else os.path.join(rel, name).replace(os.sep, "/"))
    return sorted(found)


def _by_stem(files: list[str], directory: str, suffixes: set[str] | dict[str, str]) -> dict[str, str]:
    """{relative stem: relative file name} of the files with one of the suffixes; two files with one stem are an error."""
    by_stem: dict[str, str] = {}
    for name in files:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in suffixes:
            continue
        if stem in by_stem:
            raise DataError(f"two files with stem {stem!r} in {directory}: {by_stem[stem]}, {name}")
        by_stem[stem] = name
    return by_stem


def _list(directory: str, suffixes: set[str], what: str) -> dict[str, str]:
    by_stem = _by_stem(_walk(directory, what), directory, suffixes)
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


def _read_text(path: str) -> str:
    """A caption file's text; unreadable or not UTF-8 is an error naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read caption file {path} ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"caption file {path} is not UTF-8 text (byte {e.start})") from None


def _caption_members(images_dir: str, txt: str | None, sidecar: str | None) -> tuple[list[tuple[str, bytes]], bool]:
    """The .txt and .json members of one image, and whether they hold any caption (a non-blank .txt or a .json)."""
    members: list[tuple[str, bytes]] = []
    captioned = False
    if txt is not None:
        text = _read_text(os.path.join(images_dir, txt))
        members.append(("txt", text.encode("utf-8")))
        captioned = bool(text.strip())
    if sidecar is not None:
        path = os.path.join(images_dir, sidecar)
        text = _read_text(path)
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: expected a JSON object (its string and list fields are captions), got {type(obj).__name__}")
        members.append(("json", text.encode("utf-8")))
        captioned = True
    return members, captioned


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


def _key(stem: str) -> str:
    head, base = os.path.split(stem)
    base = base.replace(".", "_")
    return f"{head}/{base}" if head else base


class _Progress:
    """`convert: N/M samples` on stderr every few seconds and at the end."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.done = total, log, 0
        self.last = time.monotonic()

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.last >= _PROGRESS_SECONDS:
            self.last = now
            self.log(f"convert: {self.done}/{self.total} samples ({100 * self.done // self.total}%)")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def convert(params: ConvertParams, log: Callable[[str], None] = _stderr) -> ConvertResult:
    """Write the shards of one split into params.out, all or nothing; progress and omissions go to `log`."""
    if params.shards < 1:
        raise ConfigError(f"expected at least 1 shard, got {params.shards}", field="--shards")
    files = _walk(params.images, "images", exclude=(params.masks, params.depth, params.out))
    images = _by_stem(files, params.images, IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(f"no .jpg/.jpeg/.png/.webp files in {params.images}", field="--images")
    texts = _by_stem(files, params.images, {".txt"})
    sidecars = _by_stem(files, params.images, {".json"})
    masks = _list(params.masks, {".png"}, "masks") if params.masks else None
    depth = _list(params.depth, {".png"}, "depth") if params.depth else None
    if masks is not None:
        _pair(images, masks, params.images, params.masks)  # type: ignore[arg-type]
    if depth is not None:
        _pair(images, depth, params.images, params.depth)  # type: ignore[arg-type]
    dense = masks is not None or depth is not None
    result = ConvertResult(sizes={})
    orphans = sorted(n for s, n in [*texts.items(), *sidecars.items()] if s not in images)
    if orphans:
        result.ignored["caption file without image"] = orphans

    # Captions are read (and checked) before anything is written.
    captions: dict[str, list[tuple[str, bytes]]] = {}
    uncaptioned: list[str] = []
    for stem in sorted(images):
        members, captioned = _caption_members(params.images, texts.get(stem), sidecars.get(stem))
        if dense or captioned:
            captions[stem] = members
        else:
            uncaptioned.append(images[stem])
    if uncaptioned:
        if not captions:
            raise ConfigError(
                f"none of the {len(images)} images in {params.images} has a caption file (name.txt or name.json); "
                "give caption files, or --masks and/or --depth"
            )
        result.skipped["no caption"] = uncaptioned
        log(f"convert: skipped {len(uncaptioned)} image(s) without a caption (.txt or .json): {_names(uncaptioned)}")
    if orphans:
        log(f"convert: ignored {len(orphans)} caption file(s) without an image: {_names(orphans)}")
    stems = sorted(captions)
    if params.shards > len(stems):
        raise ConfigError(f"expected 1..{len(stems)} shards for {len(stems)} samples, got {params.shards}", field="--shards")
    keys: dict[str, str] = {}
    for stem in stems:
        key = _key(stem)
        if key in keys:
            raise DataError(f"stems {keys[key]!r} and {stem!r} give the same sample key {key!r}")
        keys[key] = stem
    classes = _read_classes(params.classes) if params.classes else None
    progress = _Progress(len(stems), log)

    def sample(stem: str) -> tuple[str, list[tuple[str, bytes]]]:
        image_name = images[stem]
        image_path = os.path.join(params.images, image_name)
        try:
            with Image.open(image_path) as im:
                size = im.size
        except OSError as e:  # PIL's UnidentifiedImageError included
            raise DataError(f"{image_path}: not a readable image ({e.__class__.__name__})") from None
        with open(image_path, "rb") as f:
            members = [(IMAGE_SUFFIXES[os.path.splitext(image_name)[1].lower()], f.read())]
        members.extend(captions[stem])
        source = {"image": image_name}
        if masks is not None:
            members.append(("seg.png", _mask_member(os.path.join(params.masks, masks[stem]), size, params.reduce_zero_label)))  # type: ignore[arg-type]
            source["mask"] = masks[stem]
        if depth is not None:
            members.append(("depth.png", _depth_member(os.path.join(params.depth, depth[stem]), size)))  # type: ignore[arg-type]
            source["depth"] = depth[stem]
        if stem not in sidecars:
            members.append(("json", json.dumps({"source": source}, sort_keys=True).encode()))
        progress.step()
        return _key(stem), members

    with _Staging(params.out) as stage:
        n, k = len(stems), params.shards
        for i in range(k):
            chunk = stems[n * i // k : n * (i + 1) // k]
            name = f"{params.split}-{i:05d}.tar"
            result.sizes[name] = write_shard(os.path.join(stage.dir, name), (sample(s) for s in chunk))
        stage.commit(result.sizes, classes)
    return result


class _Staging:
    """Shards are written into a staging folder and moved into `out` only when all of them were written.

    A new `out` is the staging folder renamed; into an existing one the shards
    move one by one, then sizes.json and classes.json are updated. On an error
    the staging folder is removed, so a failed conversion leaves `out` as it was.
    """

    def __init__(self, out: str) -> None:
        self.out = os.path.abspath(out)
        self.fresh = not os.path.exists(self.out)
        if not self.fresh and not os.path.isdir(self.out):
            raise ConfigError(f"{out} exists and is not a directory", field="--out")
        parent, base = os.path.split(self.out)
        tag = f".convert-{os.getpid()}.tmp"
        self.dir = os.path.join(parent, f".{base}{tag}") if self.fresh else os.path.join(self.out, tag)

    def __enter__(self) -> "_Staging":
        try:
            os.makedirs(self.dir)
        except OSError as e:
            raise ConfigError(f"cannot create {self.dir} ({e.strerror})", field="--out") from None
        return self

    def commit(self, sizes: dict[str, int], classes: list[str] | None) -> None:
        """Moves the written shards into out and records their counts (and the class names)."""
        target = self.dir if self.fresh else self.out
        if not self.fresh:
            for name in sizes:
                os.replace(os.path.join(self.dir, name), os.path.join(self.out, name))
        merge_sizes(target, sizes)
        if classes is not None:
            write_atomic(os.path.join(target, "classes.json"), json_bytes({"classes": classes, "seg_classes": classes}))
        if self.fresh:
            os.rename(self.dir, self.out)
        else:
            os.rmdir(self.dir)

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
