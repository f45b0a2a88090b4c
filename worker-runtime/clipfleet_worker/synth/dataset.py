"""Writing a synthetic dataset: parameters, shard layout, generation (once per parameters), encoding of a scene."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass

from PIL import Image

from ..data.writer import json_bytes, merge_sizes, read_json_object, write_atomic, write_shard
from ..errors import ConfigError
from .render import Scene, render_scene
from .vocabulary import COLOURS, JPEG_QUALITY, POSITIONS, SHAPES, SIZES

SYNTH_VERSION = 2  # 2: val shards are ceil(shards / 4), as the spec's data.val default expects; synth.json records val_shards

# `clipfleet data synth` and `python3 -m clipfleet_worker synth` defaults (the spec's data.synth has the same val and shards).
SYNTH_DEFAULTS = {"train": 2048, "val": 256, "shards": 4, "seed": 0, "size": 64}


@dataclass(frozen=True)
class SynthParams:
    """What to generate (SynthSpec of the stage config, or the CLI flags)."""

    out: str
    train: int
    val: int
    shards: int
    size: int
    seed: int
    val_shards: int | None = None  # None: val_shard_count(shards)

    @staticmethod
    def from_spec(spec: dict) -> "SynthParams":
        """From `cfg["data"]["synth"]` (SynthSpec JSON)."""
        return SynthParams(
            out=str(spec["out"]),
            train=int(spec["train"]),
            val=int(spec["val"]),
            shards=int(spec["shards"]),
            size=int(spec["size"]),
            seed=int(spec["seed"]),
            val_shards=int(spec["val_shards"]) if spec.get("val_shards") is not None else None,
        )

    def val_shard_count(self) -> int:
        """The val shards written: as given, else ceil(shards / 4) (0 without val samples)."""
        if self.val_shards is not None:
            return self.val_shards
        return default_val_shards(self.shards) if self.val else 0

    def validate(self) -> None:
        """Reject values that cannot produce a usable dataset."""
        if self.train < 1:
            raise ConfigError(f"expected at least 1 train sample, got {self.train}", field="data.synth.train")
        if self.val < 0:
            raise ConfigError(f"expected a count >= 0, got {self.val}", field="data.synth.val")
        if not 1 <= self.shards <= self.train:
            raise ConfigError(
                f"expected 1..{self.train} shards (one sample per shard at least), got {self.shards}",
                field="data.synth.shards",
            )
        vs = self.val_shard_count()
        if self.val and not 1 <= vs <= self.val:
            raise ConfigError(
                f"{self.val} samples cannot fill {vs} val shards (ceil(shards / 4)); give at least {vs} val samples",
                field="data.synth.val",
            )
        if not self.val and vs:
            raise ConfigError(f"{vs} val shards but no val samples", field="data.synth.val")
        if self.size < 16:
            raise ConfigError(f"expected an image size >= 16 px, got {self.size}", field="data.synth.size")


@dataclass(frozen=True)
class SynthResult:
    """Where the dataset is: shard paths per split (absolute) and the counts per shard."""

    out: str
    train_shards: list[str]
    val_shards: list[str]
    sizes: dict[str, int]
    generated: bool  # False when an identical dataset was already there


def class_names() -> dict:
    """classes.json content: zero-shot labels are the shapes; seg classes add background at 0."""
    return {
        "classes": list(SHAPES),
        "seg_classes": ["background", *SHAPES],
        "zero_shot": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "positions": list(POSITIONS),
    }


def default_val_shards(shards: int) -> int:
    """How many val shards go with `shards` train shards: ceil(shards / 4).

    The orchestrator's default data.val (orchestrator/src/spec/stage.ts,
    synthValShards) expects this many and passes it as --val-shards; the
    test_synth tests pin the two together.
    """
    return math.ceil(shards / 4)


def shard_layout(params: SynthParams) -> dict[str, list[tuple[int, int]]]:
    """Per split, the [lo, hi) sample range of each shard, samples split evenly."""
    out = {}
    for split, n, k in (
        ("train", params.train, params.shards),
        ("val", params.val, params.val_shard_count()),
    ):
        out[split] = [(n * i // k, n * (i + 1) // k) for i in range(k)]
    return out


def generate(params: SynthParams) -> SynthResult:
    """Write the whole dataset into params.out; every file is written atomically.

    A new (or empty) out is built in a staging folder beside it and renamed
    into place at the end, so an interrupted run leaves nothing behind; into a
    folder with files the shards are written in place.
    """
    params.validate()
    out = os.path.abspath(params.out)
    staged = not os.path.exists(out) or (os.path.isdir(out) and not os.listdir(out))
    parent, base = os.path.split(out)
    target = os.path.join(parent, f".{base}.synth-{os.getpid()}.tmp") if staged else out
    os.makedirs(target, exist_ok=not staged)
    try:
        sizes: dict[str, int] = {}
        paths: dict[str, list[str]] = {"train": [], "val": []}
        for split, ranges in shard_layout(params).items():
            for i, (lo, hi) in enumerate(ranges):
                name = f"{split}-{i:05d}.tar"
                write_shard(os.path.join(target, name), _shard_samples(split, range(lo, hi), params))
                sizes[name] = hi - lo
                paths[split].append(os.path.join(out, name))
        merge_sizes(target, sizes)
        write_atomic(os.path.join(target, "classes.json"), json_bytes(class_names()))
        # Written last: its presence means the dataset is complete.
        write_atomic(os.path.join(target, "synth.json"), json_bytes(_marker(params)))
        if staged:
            os.rename(target, out)  # onto an empty directory too (POSIX rename)
    finally:
        if staged and os.path.exists(target):
            shutil.rmtree(target, ignore_errors=True)
    return SynthResult(out, paths["train"], paths["val"], sizes, generated=True)


def ensure(params: SynthParams) -> SynthResult:
    """Generate unless params.out already holds the dataset these params describe (synth.json matches)."""
    params.validate()
    out = os.path.abspath(params.out)
    if read_json_object(os.path.join(out, "synth.json")) == _marker(params):
        layout = shard_layout(params)
        sizes: dict[str, int] = {}
        paths: dict[str, list[str]] = {}
        for split, ranges in layout.items():
            paths[split] = []
            for i, (lo, hi) in enumerate(ranges):
                name = f"{split}-{i:05d}.tar"
                sizes[name] = hi - lo
                paths[split].append(os.path.join(out, name))
        if all(os.path.exists(p) for ps in paths.values() for p in ps):
            return SynthResult(out, paths["train"], paths["val"], sizes, generated=False)
    return generate(params)


def _marker(params: SynthParams) -> dict:
    d = asdict(params)
    del d["out"]
    d["val_shards"] = params.val_shard_count()
    d["version"] = SYNTH_VERSION
    return d


def _shard_samples(split: str, indices: range, params: SynthParams):
    for index in indices:
        yield f"{split}{index:08d}", encode_scene(render_scene(params.seed, split, index, params.size))


def encode_scene(scene: Scene) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in a fixed order and with fixed encoder settings."""
    jpg = io.BytesIO()
    scene.image.save(jpg, "JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    seg = io.BytesIO()
    Image.fromarray(scene.seg, mode="L").save(seg, "PNG", compress_level=3)
    depth = io.BytesIO()
    Image.fromarray(scene.depth).save(depth, "PNG", compress_level=3)
    return [
        ("jpg", jpg.getvalue()),
        ("txt", scene.alt.encode()),
        ("json", json.dumps(scene.meta, sort_keys=True).encode()),
        ("syn.json", json.dumps({"syn_text": scene.syn}).encode()),
        ("seg.png", seg.getvalue()),
        ("depth.png", depth.getvalue()),
    ]
