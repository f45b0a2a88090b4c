"""The captions of a scene: the VeCap description of what is visible, and web-like AltText."""

from __future__ import annotations

import math
import re

import numpy as np

from .vocabulary import COLOURS, SHAPES

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
