"""Rendering one scene: layout, image, class map and depth, seeded by (seed, split, index)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .captions import alt_text, describe
from .vocabulary import (
    BACKGROUND_COLOURS,
    COLOURS,
    MIN_VISIBLE,
    POSITIONS,
    SHAPES,
    SHAPE_AREA,
    SIZES,
    SIZE_DEPTH,
    SPLIT_CODE,
    TEXTURES,
)

@dataclass
class Scene:
    """One rendered sample before encoding."""

    image: Image.Image
    seg: np.ndarray  # uint8 [S, S]: 0 background, 1 + shape index
    depth: np.ndarray  # uint16 [S, S] millimetres
    meta: dict
    alt: str
    syn: list[str]


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
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
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
            obj["_visible"] = float(counts[k + 1] / (SHAPE_AREA[obj["shape"]] * obj["_r"] ** 2))
        if all(o["_visible"] >= MIN_VISIBLE for o in objs):
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
    visible = [o for o in objs if o["_visible"] >= MIN_VISIBLE] or objs[-1:]
    dominant = int(np.argmax(counts[1:]))
    label = objs[dominant]["class"]
    caption_rng = np.random.default_rng([seed, SPLIT_CODE[split], index, 1])
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
                "described": o["_visible"] >= MIN_VISIBLE,
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
