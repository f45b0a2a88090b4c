"""Synthetic VeCLIP-style dataset: scenes of coloured shapes with AltText, VeCap, masks and depth.

The project's headline experiment (better captions -> better retrieval and a
better dense backbone) needs data where caption quality is the controlled
variable. Every image shows 1-4 objects (shape, colour, size, 3x3 grid
position) over a textured background. The `.json` VeCap names every visible
object's attributes in varied templates; the `.txt` AltText imitates web alt
text: mostly uninformative (file names, marketing, stock phrases) and
sometimes one true attribute, so it carries only a weak signal. `seg.png`
(class per pixel, occlusion respected) and `depth.png` (16-bit millimetres:
a background plane with a gradient, nearer domes for objects) come from the
same layout, so the dense fine-tune learns what the captions described.

Output layout (WebDataset): `{split}-{i:05d}.tar` with keys
`{split}{index:08d}` holding .jpg, .txt, .json, .syn.json, .seg.png,
.depth.png; `classes.json`, `sizes.json` and `synth.json` (the parameters,
written last as the completion marker) at the root. Byte-identical for a
given seed: every draw comes from a generator seeded by (seed, split, index).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .data.writer import json_bytes, merge_sizes, read_json_object, write_atomic, write_shard
from .errors import ConfigError

SYNTH_VERSION = 2  # 2: val shards are ceil(shards / 4), as the spec's data.val default expects; synth.json records val_shards

# `clipfleet data synth` and `python3 -m clipfleet_worker synth` defaults (the spec's data.synth has the same val and shards).
SYNTH_DEFAULTS = {"train": 2048, "val": 256, "shards": 4, "seed": 0, "size": 64}

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 35),
    "green": (45, 165, 55),
    "cyan": (35, 200, 215),
    "blue": (35, 70, 215),
    "purple": (135, 55, 185),
    "pink": (245, 125, 190),
}
# Object radius as a fraction of the image side, per size word.
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.17, "large": 0.25}
# Distance from the camera (metres) per size word: bigger objects are nearer, so depth agrees with size.
SIZE_DEPTH: dict[str, tuple[float, float]] = {"small": (3.2, 4.0), "medium": (2.2, 3.1), "large": (1.2, 2.1)}
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "light gray": (196, 196, 196),
    "dark gray": (58, 58, 62),
    "beige": (222, 206, 170),
    "brown": (122, 88, 62),
    "olive": (110, 110, 68),
    "slate": (88, 98, 118),
}
TEXTURES = ("noise", "stripes", "gradient", "checker")

# Unoccluded area of each shape in units of radius^2, for the visibility test.
_AREA = {
    "circle": math.pi,
    "square": 2.56,
    "triangle": 1.572,
    "star": 1.455,
    "ring": 2.136,
    "cross": 2.204,
    "diamond": 1.54,
    "hexagon": 2.598,
}
_MIN_VISIBLE = 0.35
_SPLIT_CODE = {"train": 0, "val": 1}
_JPEG_QUALITY = 90


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


@dataclass
class Scene:
    """One rendered sample before encoding."""

    image: Image.Image
    seg: np.ndarray  # uint8 [S, S]: 0 background, 1 + shape index
    depth: np.ndarray  # uint16 [S, S] millimetres
    meta: dict
    alt: str
    syn: list[str]


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
    scene.image.save(jpg, "JPEG", quality=_JPEG_QUALITY, subsampling=0, optimize=False)
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


# ---------------------------------------------------------------- rendering


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel-centre coordinates normalised to [0, 1].
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :].repeat(size, 0), c[:, None].repeat(size, 1)


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    names = list(BACKGROUND_COLOURS)
    a, b = rng.choice(len(names), 2, replace=False)
    c1 = np.asarray(BACKGROUND_COLOURS[names[a]], np.float32) + rng.uniform(-12, 12, 3)
    c2 = np.asarray(BACKGROUND_COLOURS[names[b]], np.float32) + rng.uniform(-12, 12, 3)
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    x, y = _grid(size)
    angle = rng.uniform(0, math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    if texture == "noise":
        cells = int(rng.integers(3, 7))
        coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        t = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0
        t = np.clip(t + rng.normal(0, 0.08, (size, size)).astype(np.float32), 0, 1)
    elif texture == "stripes":
        period = rng.uniform(0.12, 0.3)
        t = np.clip(0.5 + 2.0 * np.sin(2 * math.pi * u / period), 0, 1)
    elif texture == "gradient":
        lo, hi = float(u.min()), float(u.max())
        t = (u - lo) / max(hi - lo, 1e-6)
    else:
        n = int(rng.integers(3, 8))
        t = ((np.floor(x * n) + np.floor(y * n)) % 2).astype(np.float32)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    desc = {"texture": texture, "colours": [names[a], names[b]]}
    return np.clip(img, 0, 255).astype(np.uint8), desc


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif shape == "triangle":
        pts = [(1.1 * math.cos(a), 1.1 * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.1 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif shape == "diamond":
        pts = [(0, -1.1), (0.7, 0), (0, 1.1), (-0.7, 0)]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
    else:
        raise AssertionError(shape)
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (px * c - py * s), cy + r * (px * s + py * c)) for px, py in pts]


def _draw(draw: ImageDraw.ImageDraw, obj: dict, scale: float, fill) -> None:
    cx, cy, r = obj["_cx"] * scale, obj["_cy"] * scale, obj["_r"] * scale
    shape = obj["shape"]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        ro = 1.05 * r
        draw.ellipse((cx - ro, cy - ro, cx + ro, cy + ro), outline=fill, width=max(1, int(round(0.4 * r))))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, obj["_rot"]), fill=fill)


def _layout(size: int, rng: np.random.Generator) -> list[dict]:
    n = int(rng.choice(4, p=[0.2, 0.35, 0.3, 0.15])) + 1
    cells = rng.choice(9, n, replace=False)
    objs = []
    for cell in cells:
        row, col = divmod(int(cell), 3)
        size_word = list(SIZES)[int(rng.integers(3))]
        r = SIZES[size_word] * size * (1 + rng.uniform(-0.06, 0.06))
        cx = ((col + 0.5) / 3 + rng.uniform(-0.08, 0.08)) * size
        cy = ((row + 0.5) / 3 + rng.uniform(-0.08, 0.08)) * size
        cx = float(np.clip(cx, 0.7 * r, size - 0.7 * r))
        cy = float(np.clip(cy, 0.7 * r, size - 0.7 * r))
        shape_i = int(rng.integers(len(SHAPES)))
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        z = rng.uniform(*SIZE_DEPTH[size_word])
        jitter = rng.integers(-16, 17, 3)
        rgb = tuple(int(v) for v in np.clip(np.asarray(COLOURS[colour]) + jitter, 0, 255))
        objs.append(
            {
                "shape": SHAPES[shape_i],
                "class": shape_i,
                "colour": colour,
                "size": size_word,
                "position": POSITIONS[int(cell)],
                "_cx": cx,
                "_cy": cy,
                "_r": float(r),
                "_rot": float(rng.uniform(-0.26, 0.26)),
                "_z": float(z),
                "_rgb": rgb,
            }
        )
    # Painter's order: far first, so nearer objects occlude farther ones, matching the depth map.
    objs.sort(key=lambda o: -o["_z"])
    return objs


def render_scene(seed: int, split: str, index: int, size: int) -> Scene:
    """Render sample `index` of `split`: a pure function of its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    ss = 4 if size <= 64 else 2
    big = size * ss
    bg, bg_desc = _background(size, rng)
    bg_big = Image.fromarray(bg).resize((big, big), Image.Resampling.NEAREST)
    for attempt in range(4):
        objs = _layout(size, rng)
        inst_big = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(inst_big)
        for k, obj in enumerate(objs):
            _draw(d, obj, ss, k + 1)
        inst = np.asarray(inst_big.resize((size, size), Image.Resampling.NEAREST))
        counts = np.bincount(inst.ravel(), minlength=len(objs) + 1)
        for k, obj in enumerate(objs):
            obj["_visible"] = float(counts[k + 1] / (_AREA[obj["shape"]] * obj["_r"] ** 2))
        if all(o["_visible"] >= _MIN_VISIBLE for o in objs):
            break
    canvas = bg_big.copy()
    d = ImageDraw.Draw(canvas)
    for obj in objs:
        _draw(d, obj, ss, obj["_rgb"])
    image = canvas.reduce(ss) if ss > 1 else canvas
    # Mild sensor noise so colours are not perfectly flat.
    arr = np.asarray(image, np.int16) + rng.integers(-6, 7, (size, size, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    lut = np.zeros(len(objs) + 1, np.uint8)
    lut[1:] = [o["class"] + 1 for o in objs]
    seg = lut[inst]
    depth = _depth(size, objs, inst, rng)

    # Objects mostly hidden behind nearer ones are not described (they would be caption noise).
    visible = [o for o in objs if o["_visible"] >= _MIN_VISIBLE] or objs[-1:]
    dominant = int(np.argmax(counts[1:]))
    label = objs[dominant]["class"]
    caption_rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    vecap = describe(visible, bg_desc, objs, caption_rng)
    syn = [describe(visible, bg_desc, objs, caption_rng) for _ in range(2)]
    alt = alt_text(visible, caption_rng)
    meta = {
        "vecap": vecap,
        "label": label,
        "background": bg_desc,
        "width": size,
        "height": size,
        "objects": [
            {
                "shape": o["shape"],
                "class": o["class"],
                "colour": o["colour"],
                "size": o["size"],
                "position": o["position"],
                "bbox": [
                    round(max(0.0, o["_cx"] - o["_r"]), 1),
                    round(max(0.0, o["_cy"] - o["_r"]), 1),
                    round(min(size, o["_cx"] + o["_r"]), 1),
                    round(min(size, o["_cy"] + o["_r"]), 1),
                ],
                "depth_m": round(o["_z"], 3),
                "visible": round(min(o["_visible"], 1.0), 3),
                "described": o["_visible"] >= _MIN_VISIBLE,
            }
            for o in objs
        ],
    }
    return Scene(image=image, seg=seg, depth=depth, meta=meta, alt=alt, syn=syn)


def _depth(size: int, objs: list[dict], inst: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(size)
    far, near = rng.uniform(6.5, 9.0), rng.uniform(3.8, 5.5)
    tilt = rng.uniform(-0.8, 0.8)
    depth = far + (near - far) * y + tilt * (x - 0.5)
    px, py = x * size, y * size
    for k, obj in enumerate(objs):
        mask = inst == k + 1
        if not mask.any():
            continue
        rho2 = np.minimum(((px - obj["_cx"]) ** 2 + (py - obj["_cy"]) ** 2) / obj["_r"] ** 2, 1.0)
        # A dome: the centre is nearer than the rim, so depth varies smoothly inside each object.
        depth = np.where(mask, obj["_z"] * (1.0 - 0.08 * (1.0 - rho2)), depth)
    return np.clip(np.round(depth * 1000.0), 1, 65535).astype(np.uint16)


# ---------------------------------------------------------------- captions

_SIZE_WORDS = {
    "small": ("small", "small", "tiny", "little"),
    "medium": ("medium-sized", "medium", "mid-sized"),
    "large": ("large", "large", "big", "huge"),
}
_POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "in the upper left"),
    "top": ("at the top", "near the top edge", "in the top middle"),
    "top right": ("in the top right corner", "at the top right", "in the upper right"),
    "left": ("on the left", "at the left side", "in the middle of the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right side", "in the middle of the right side"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom edge", "in the bottom middle"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right"),
}
_OPENERS = (
    "An image of",
    "A picture showing",
    "This image shows",
    "A photo of",
    "A graphic with",
    "A simple illustration of",
    "",
)
_COUNT_WORDS = ("", "one", "two", "three", "four")
_TEXTURE_PHRASES = {
    "noise": ("a mottled {a} and {b} background", "a noisy {a} background", "a {a} textured background"),
    "stripes": ("a {a} and {b} striped background", "a background of {a} and {b} stripes", "diagonal {a} and {b} stripes"),
    "gradient": ("a {a} to {b} gradient background", "a smooth {a} and {b} gradient", "a {a} gradient backdrop"),
    "checker": ("a {a} and {b} checkered background", "a checkerboard of {a} and {b}", "a {a} and {b} checker pattern"),
}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _object_phrase(o: dict, rng: np.random.Generator, first: bool) -> str:
    s = _pick(rng, _SIZE_WORDS[o["size"]])
    c, h = o["colour"], o["shape"]
    p = _pick(rng, _POSITION_PHRASES[o["position"]])
    form = int(rng.integers(5))
    if first and form == 2:
        # "with in the top left, a ..." reads badly at the start of a list.
        form = 0
    if form == 0:
        return f"{_article(f'{s} {c} {h}')} {p}"
    if form == 1:
        if o["size"] == "medium":
            return f"{_article(f'{c} {h}')} of medium size {p}"
        word = _pick(rng, ("small", "tiny") if o["size"] == "small" else ("large", "big"))
        return f"{_article(f'{c} {h}')} {p}, {word} in size"
    if form == 2:
        return f"{p}, {_article(f'{s} {c} {h}')}"
    if form == 3:
        return f"{_article(f'{s} {h}')} in {c} {p}"
    return f"{_article(f'{c} {s} {h}')} {p}"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(visible: list[dict], bg: dict, all_objs: list[dict], rng: np.random.Generator) -> str:
    """A VeCap-style caption naming every visible object's colour, shape, size and position."""
    order = [visible[int(i)] for i in rng.permutation(len(visible))]
    phrases = [_object_phrase(o, rng, k == 0) for k, o in enumerate(order)]
    background = _pick(rng, _TEXTURE_PHRASES[bg["texture"]]).format(a=bg["colours"][0], b=bg["colours"][1])
    style = int(rng.integers(3))
    if style == 0:
        opener = _pick(rng, _OPENERS)
        body = f"{_join(phrases)} on {background}"
        text = f"{opener} {body}" if opener else body[0].upper() + body[1:]
    elif style == 1:
        count = len(visible)
        noun = "shape" if count == 1 else "shapes"
        text = f"{_COUNT_WORDS[count].capitalize()} {noun} on {background}: {_join(phrases)}"
    else:
        body = _join(phrases)
        text = f"{background[0].upper()}{background[1:]} with {body}"
    sentences = [text + "."]
    # Occlusion relations: a nearer object drawn over part of a farther one.
    for i, far in enumerate(all_objs):
        for near in all_objs[i + 1 :]:
            if far not in visible or near not in visible or far["_visible"] > 0.95:
                continue
            dist = math.hypot(far["_cx"] - near["_cx"], far["_cy"] - near["_cy"])
            if dist < far["_r"] + near["_r"] and rng.random() < 0.6:
                sentences.append(
                    f"The {near['colour']} {near['shape']} partly covers the {far['colour']} {far['shape']}."
                )
    return _fix_articles(" ".join(sentences))


def _fix_articles(text: str) -> str:
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


_MARKETING = (
    "best price free shipping",
    "buy now 50% off",
    "new arrivals 2021 collection",
    "high quality wallpaper download",
    "limited offer",
    "shop the look",
    "click here for more",
    "top seller",
    "premium quality",
    "sale ends soon",
)
_STOCK = (
    "abstract background",
    "stock photo",
    "geometric pattern design",
    "vector illustration",
    "colorful shapes",
    "wallpaper hd",
    "design element",
    "seamless pattern",
    "clip art",
    "icon set",
    "royalty free image",
    "untitled",
)
_MENTION_FORMS = ("{c} thing", "{h}", "{c} {h}", "{s} {c}", "{h} icon", "{c} {h} sticker", "{c} shape", "{s} {h}")


def alt_text(visible: list[dict], rng: np.random.Generator) -> str:
    """Web-like alt text: mostly uninformative, sometimes one (usually true) attribute."""
    # About 30% mention one attribute (mostly true); the rest carry no visual information.
    r = rng.random()
    if r < 0.35:
        text = _filename(rng)
    elif r < 0.55:
        text = _pick(rng, _MARKETING)
        if rng.random() < 0.4:
            text += _pick(rng, (" | ", " - ", " ")) + _pick(rng, _MARKETING)
    elif r < 0.70:
        text = _pick(rng, _STOCK)
    else:
        o = visible[int(rng.integers(len(visible)))] if visible else None
        colour = o["colour"] if o else _pick(rng, list(COLOURS))
        shape = o["shape"] if o else _pick(rng, SHAPES)
        size = o["size"] if o else "small"
        if rng.random() < 0.1:
            # Web alt text is sometimes simply wrong.
            colour = _pick(rng, list(COLOURS))
        text = _pick(rng, _MENTION_FORMS).format(c=colour, h=shape, s=_pick(rng, _SIZE_WORDS[size]))
        if rng.random() < 0.35:
            text += _pick(rng, (" - ", " | ", " ")) + _pick(rng, _MARKETING + _STOCK)
    style = rng.random()
    if style < 0.1:
        text = text.upper()
    elif style < 0.25:
        text = text.title()
    return text


def _filename(rng: np.random.Generator) -> str:
    form = int(rng.integers(7))
    n = int(rng.integers(0, 100000))
    if form == 0:
        return f"IMG_{n % 10000:04d}.jpg"
    if form == 1:
        return f"DSC{n:05d}.JPG"
    if form == 2:
        return f"photo_{2010 + n % 14}-{1 + n % 12:02d}-{1 + n % 28:02d}.png"
    if form == 3:
        return f"image ({1 + n % 40}).jpeg"
    if form == 4:
        return f"Screenshot_{20190000 + n}"
    if form == 5:
        return f"{int(rng.integers(0, 2**32)):08x}.jpg"
    return f"banner_{n % 500}_final_v{1 + n % 4}"
