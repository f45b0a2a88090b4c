"""Fusion of a visual caption with the image's AltText: VeCLIP's second step, as rules.

VeCLIP has an LLM (Vicuna) rewrite "AltText + VeCap" into one caption that
keeps the AltText's knowledge (names, places, brands, dates) and the
captioner's visual detail. `template` is a rule-based stand-in, honest about
what it can do (docs/veclip.md):

1. The caption is trusted for what is visible: every visual claim of the
   AltText (colours, shapes, sizes, positions, generic object words) is
   dropped, since the captioner looked at the image and web AltText is
   sometimes wrong about it.
2. Web boilerplate carries no knowledge and is dropped: shop talk ("free
   shipping", "buy now 50% off", "click here"), stock-site tags ("royalty
   free", "stock photo", "wallpaper hd"), and file names ("IMG_0042.jpg",
   "DSC01234.JPG", "Screenshot_20190412") except for a date in them.
3. What is left is what the image cannot show: dates and years, numbers,
   names (their capitals kept, unless the whole AltText is upper case), and the other content words (e.g. "collection", "sticker",
   "illustration"), each AltText segment kept as a phrase in its own words
   and order, without function words at its edges.
4. The result is `<caption> Alt text: <phrase>; <phrase>.`, a phrase already
   in the caption left out; the caption comes first and the whole is cut to
   `max_chars` at a word boundary (the caption keeps priority).

No inference, no paraphrase, no conflict resolution beyond rule 1: an LLM
does all three. Factories: `make_template(args, ctx)` (args: `max_chars`,
default 400) and `make_none(args, ctx)` (the caption unchanged).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

DEFAULT_MAX_CHARS = 400
MAX_MAX_CHARS = 100_000
# Inputs longer than this are cut before any rule runs, so a hostile string costs bounded time.
MAX_INPUT_CHARS = 4000
LABEL = "Alt text:"

_COLOURS = {
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "grey", "gray", "cyan",
    "magenta", "teal", "navy", "violet", "beige", "gold", "silver", "olive", "maroon", "lime", "turquoise",
    "colorful", "colourful", "coloured", "colored", "dark", "light", "bright", "pale",
}
_SHAPES = {
    "circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars", "ring", "rings", "cross",
    "crosses", "hexagon", "hexagons", "diamond", "diamonds", "rectangle", "rectangles", "ellipse", "oval", "disc",
    "disk", "dot", "dots", "shape", "shapes", "thing", "things", "object", "objects", "form", "figure",
}
_SIZES = {"small", "tiny", "little", "medium", "mid-sized", "large", "big", "huge", "giant", "sized", "size"}
_POSITIONS = {
    "top", "bottom", "left", "right", "center", "centre", "middle", "corner", "upper", "lower", "above", "below",
    "near", "edge", "side", "background", "foreground",
}
_STOPWORDS = {
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "for", "to", "by", "from", "is", "are", "this",
    "that", "it", "its", "my", "your", "our", "image", "images", "photo", "photos", "picture", "pic", "img",
}
_VISUAL = _COLOURS | _SHAPES | _SIZES | _POSITIONS
# Shop talk and stock-site tags: phrases that say nothing about the subject.
_BOILERPLATE = re.compile(
    r"\b(?:free shipping|best price|buy now|\d+\s*%\s*off|click here(?: for more)?|limited (?:time )?offer|"
    r"sale ends soon|shop the look|top seller|premium quality|high quality|new arrivals?|hd|4k|download|"
    r"royalty[- ]free(?: image)?|stock (?:photo|image)|wallpaper hd|untitled|for more)\b",
    re.IGNORECASE,
)
_IMAGE_EXT = r"(?:jpe?g|png|gif|webp|bmp|tiff?|heic)"
_FILENAME = re.compile(
    rf"^(?:\S+\.{_IMAGE_EXT}|[^\s]*\(\d+\)\.{_IMAGE_EXT}|image \(\d+\)\.{_IMAGE_EXT}|IMG[_-]?\d+\S*|DSC\S*\d+\S*|"
    r"Screenshot[_ -]\S*|[0-9a-f]{8,}|\S+_v\d+|\S*_final\S*)$",
    re.IGNORECASE,
)
_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})[-_.]?(0[1-9]|1[0-2])[-_.]?(0[1-9]|[12]\d|3[01])(?!\d)")
_SEPARATORS = re.compile(r"\s+[|/\u2013\u2014-]\s+|[|\n\r\t;]+|,\s*")
_WORD = re.compile(r"[\w'&.+-]+", re.UNICODE)


def _normalise(text: str) -> str:
    """NFC, control characters out, whitespace collapsed, bounded in length."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text[:MAX_INPUT_CHARS])
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def _cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut at a word boundary when one is near."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space >= limit // 2 else cut).rstrip(" ,;:")


def _date_of(segment: str) -> str | None:
    m = _DATE.search(segment)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


def knowledge(alttext: str) -> list[str]:
    """The phrases of an AltText that the image cannot show (rules 1-3), in order, without repeats."""
    text = _normalise(alttext)
    if not text:
        return []
    letters = [c for c in text if c.isalpha()]
    # All-caps alt text says nothing by its case: it is lowered. Title Case keeps its capitals
    # (a name cannot be told from a capitalised word there, and losing a name costs more).
    shouting = bool(letters) and all(c.isupper() for c in letters)
    out: list[str] = []
    seen: set[str] = set()
    for segment in _SEPARATORS.split(text):
        segment = segment.strip()
        if not segment:
            continue
        if _FILENAME.match(segment):
            date = _date_of(segment)
            phrase = f"dated {date}" if date else ""
        else:
            date = _date_of(segment)
            rest = _BOILERPLATE.sub(" ", segment)
            words = [w.strip(".'-") for w in _WORD.findall(rest)]
            kept = [w if (not shouting and (w[:1].isupper() or w.isupper())) or any(c.isdigit() for c in w) else w.lower()
                    for w in words if w and w.lower() not in _VISUAL]
            # Function words stay between content words ("harbour at night"), never at a phrase's edges.
            while kept and kept[0].lower() in _STOPWORDS:
                kept.pop(0)
            while kept and kept[-1].lower() in _STOPWORDS:
                kept.pop()
            phrase = " ".join(kept)
            if date and date not in phrase:
                phrase = f"{phrase} dated {date}".strip() if not _DATE.search(phrase) else phrase
        key = phrase.lower()
        if phrase and key not in seen:
            seen.add(key)
            out.append(phrase)
    return out


def fuse_one(caption: str, alttext: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Rule 4: the visual caption, then what the AltText knows that the caption does not say, within max_chars."""
    cap = _normalise(caption)
    lower = cap.lower()
    extra = [k for k in knowledge(alttext) if k.lower() not in lower]
    if not extra:
        return _cut(cap, max_chars)
    if not cap:
        return _cut(f"{LABEL} {'; '.join(extra)}.", max_chars)
    head = _cut(cap, max_chars)
    if not head.endswith((".", "!", "?")):
        head += "."
    if len(head) > max_chars:
        return _cut(head, max_chars)
    taken: list[str] = []
    for k in extra:
        candidate = f"{head} {LABEL} {'; '.join(taken + [k])}."
        if len(candidate) > max_chars:
            break
        taken.append(k)
    return f"{head} {LABEL} {'; '.join(taken)}." if taken else head


def _check(captions: Sequence[str], alttexts: Sequence[str]) -> None:
    if len(captions) != len(alttexts):
        raise ValueError(f"{len(captions)} captions but {len(alttexts)} alt texts")


class TemplateFuser:
    """`fusion: template`: the caption plus the AltText's non-visual knowledge (module doc, rules 1-4)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def fuse(self, captions: list[str], alttexts: list[str]) -> list[str]:
        _check(captions, alttexts)
        return [fuse_one(c, a, self.max_chars) for c, a in zip(captions, alttexts)]


class NoneFuser:
    """`fusion: none`: the captioner's caption as it is."""

    def fuse(self, captions: list[str], alttexts: list[str]) -> list[str]:
        _check(captions, alttexts)
        return list(captions)


def make_template(args: Mapping[str, Any], ctx: Any) -> TemplateFuser:
    """Factory of `fusion: template`; args: `max_chars` (default 400)."""
    n = args.get("max_chars", DEFAULT_MAX_CHARS)
    if isinstance(n, bool) or not isinstance(n, int) or not 16 <= n <= MAX_MAX_CHARS:
        raise ConfigError(f"expected an integer from 16 to {MAX_MAX_CHARS}, got {n!r}", "fusion.args.max_chars")
    return TemplateFuser(n)


def make_none(args: Mapping[str, Any], ctx: Any) -> NoneFuser:
    """Factory of `fusion: none`."""
    return NoneFuser()
