"""Shard lists: WebDataset-style URL patterns and per-shard sample counts.

Users already have img2dataset / DataComp shard sets named with brace ranges
(`train-{00000..00099}.tar`) and `::`-joined sources; counts come from a
`sizes.json` next to the shards or img2dataset's `<shard>_stats.json`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import ConfigError, DataError

# Small JSON sidecars (classes.json) read over HTTP: hostile input, so capped.
MAX_SIDECAR_BYTES = 16 << 20
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


def expand_urls(patterns: list[str]) -> list[str]:
    """Expand shard URL patterns into the ordered list of shard URLs.

    Each pattern may join several sources with `::`; each source may hold brace
    groups: numeric ranges `{00000..00099}` (optionally `{0..10..2}`; a leading
    zero on either end pads every number to the wider end's width, as the
    braceexpand package does) and lists `{a,b}`. Groups nest and multiply.
    """
    out: list[str] = []
    for pattern in patterns:
        for source in pattern.split("::"):
            source = source.strip()
            if source:
                out.extend(_expand(source, pattern))
    return out


def _expand(text: str, pattern: str) -> list[str]:
    start = _first_group(text, pattern)
    if start is None:
        return [text]
    open_at, close_at = start
    head, body, tail = text[:open_at], text[open_at + 1 : close_at], text[close_at + 1 :]
    alternatives = _alternatives(body, pattern)
    if alternatives is None:
        # A brace pair with neither a range nor a comma is literal text (as in bash).
        return [head + "{" + body + "}" + t for t in _expand(tail, pattern)]
    tails = _expand(tail, pattern)
    return [head + a + t for alt in alternatives for a in _expand(alt, pattern) for t in tails]


def _first_group(text: str, pattern: str) -> tuple[int, int] | None:
    open_at = text.find("{")
    if open_at < 0:
        if "}" in text:
            raise ConfigError(f"data shard pattern {pattern!r}: unbalanced '}}'")
        return None
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return open_at, i
    raise ConfigError(f"data shard pattern {pattern!r}: unbalanced '{{'")


def _alternatives(body: str, pattern: str) -> list[str] | None:
    m = _RANGE.match(body)
    if m:
        a, b, step_s = m.group(1), m.group(2), m.group(3)
        lo, hi = int(a), int(b)
        step = abs(int(step_s)) if step_s else 1
        if step == 0:
            raise ConfigError(f"data shard pattern {pattern!r}: range step must not be 0")
        padded = (len(a.lstrip("-")) > 1 and a.lstrip("-").startswith("0")) or (
            len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0")
        )
        width = max(len(a), len(b)) if padded else 0
        numbers = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        return [str(n).zfill(width) for n in numbers]
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if not parts:
        return None
    parts.append(current)
    return parts


def local_path(url: str) -> str:
    """The filesystem path of a shard URL; only local shards support random access."""
    if url.startswith("file://"):
        return url[len("file://") :]
    if url.startswith("file:"):
        return url[len("file:") :]
    return url


def read_sizes(urls: list[str]) -> list[int | None]:
    """Sample count of each shard, or None when no metadata names it.

    Looks up the shard's basename in a `sizes.json` in its directory, then an
    img2dataset `<shard>_stats.json` (`successes`). Counts never come from
    opening the tar here: that is TarIndex's job.
    """
    by_dir: dict[str, dict[str, int] | None] = {}
    out: list[int | None] = []
    for url in urls:
        path = local_path(url)
        directory, name = os.path.split(path)
        if directory not in by_dir:
            by_dir[directory] = _load_json(os.path.join(directory, "sizes.json"))
        sizes = by_dir[directory]
        if sizes is not None and name in sizes:
            out.append(int(sizes[name]))
            continue
        stem = name[: -len(".tar")] if name.endswith(".tar") else name.split(".", 1)[0]
        stats = _load_json(os.path.join(directory, f"{stem}_stats.json"))
        if stats is not None and "successes" in stats:
            out.append(int(stats["successes"]))
        else:
            out.append(None)
    return out


def read_classes(url: str) -> dict | None:
    """The dataset's `classes.json` (written by synth/convert) next to a shard, if any.

    Next to an http(s) shard it is fetched (small, size-capped); a pipe:
    source has no "next to", so it has none.
    """
    if url.startswith(("http://", "https://")):
        data = http_get_json(http_dir(url) + "/classes.json")
        return data if isinstance(data, dict) else None
    if url.startswith("pipe:"):
        return None
    return _load_json(os.path.join(os.path.dirname(local_path(url)), "classes.json"))


CLASSNAMES_TXT = "classnames.txt"
TEMPLATES_TXT = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class ZeroShotClasses:
    """A val set's class names, and its own prompt templates when it ships them."""

    names: list[str]
    templates: list[str] | None
    source: str  # the file the names came from


def read_zero_shot(url: str) -> ZeroShotClasses | None:
    """The zero-shot class names of the dataset a val shard belongs to, or None.

    `classes.json`'s `zero_shot` list next to the shard; else CLIP_benchmark's
    `classnames.txt` (one class a line) next to the shard or in the parent
    directory (its webdataset layout is `<dataset>/test/0.tar` with the text
    files in `<dataset>/`). Templates come from `zeroshot_classification_templates.txt`
    found the same way (one a line, `{c}` or `{}` for the class name).
    """
    if url.startswith("pipe:"):
        return None  # a command has no "next to": zero-shot needs local or http metadata
    remote = url.startswith(("http://", "https://"))
    directory = http_dir(url) if remote else os.path.dirname(local_path(url))
    places = [directory, directory.rsplit("/", 1)[0] if remote else os.path.dirname(directory)]
    names: list[str] | None = None
    source = ""
    classes = read_classes(url)
    if classes is not None and isinstance(classes.get("zero_shot"), list) and classes["zero_shot"]:
        names, source = [str(n) for n in classes["zero_shot"]], f"{directory}/classes.json"
    else:
        found = _first_lines_file(places, CLASSNAMES_TXT)
        if found is not None:
            source, names = found
    if not names:
        return None
    templates = _first_lines_file(places, TEMPLATES_TXT)
    return ZeroShotClasses(names, templates[1] if templates else None, source)


def _first_lines_file(places: list[str], name: str) -> tuple[str, list[str]] | None:
    """(path, non-blank stripped lines) of the first `name` in places that has any (http(s) places are fetched)."""
    for place in places:
        path = f"{place}/{name}" if place.startswith(("http://", "https://")) else os.path.join(place, name)
        text = _read_text(path)
        if text is None:
            continue
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line]
        if lines:
            return path, lines
    return None


def _read_text(path: str) -> str | None:
    """A small UTF-8 text file, local or over http(s) (size-capped); None when absent."""
    if path.startswith(("http://", "https://")):
        body = http_get(path)
        return None if body is None else body.decode("utf-8", errors="replace")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_SIDECAR_BYTES)
    except FileNotFoundError:
        return None


def _load_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def http_dir(url: str) -> str:
    """The directory URL of an http(s) file, without the file's query (a signed URL's) or fragment."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0], "", ""))


def http_get(url: str, timeout: float = 30.0, limit: int = MAX_SIDECAR_BYTES) -> bytes | None:
    """A small document over HTTP (sidecars next to remote shards), at most `limit` bytes; None on 404."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(limit + 1)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise DataError(f"HTTP {e.code} {e.reason}", shard=url) from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{type(e).__name__}: {getattr(e, 'reason', None) or e}", shard=url) from None
    if len(body) > limit:
        raise DataError(f"larger than {limit} bytes", shard=url)
    return body


def http_get_json(url: str, timeout: float = 30.0, limit: int = MAX_SIDECAR_BYTES) -> object | None:
    """A small JSON document over HTTP (classes.json next to remote shards); None on 404."""
    body = http_get(url, timeout, limit)
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError as e:
        raise DataError(f"invalid JSON ({e})", shard=url) from None
