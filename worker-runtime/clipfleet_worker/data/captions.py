"""Caption sources of a sample and the per-sample, per-epoch caption choice.

Sources (the keys of DataSpec.captions):
- `alt`: the `.txt` member, the web AltText: one caption per line (blank
  lines ignored), as CLIP_benchmark's retrieval sets keep several;
- `syn`: one element of `syn.json`'s `syn_text` list (DataCompDR layout),
  picked by a keyed draw so it too is a pure function of (seed, epoch, key);
- any other name: a `<name>.txt` member when the sample has one (what a
  recaption stage writes, e.g. `vecap.txt`), else a string field of the
  `.json` member (`vecap` for VeCLIP).
Empty or whitespace-only captions count as missing, unless the caller keeps
them (`data.empty_captions: keep`): then one is the caption "".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from .keyed import keyed_uniform

ALT = "alt"
SYN = "syn"


def _json_member(members: Mapping[str, bytes], ext: str) -> dict:
    raw = members.get(ext)
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        # A corrupt metadata member makes its captions missing, like a corrupt image makes a sample skipped.
        return {}
    return data if isinstance(data, dict) else {}


def _cleaned(items: Iterable[object]) -> list[str]:
    return [t for t in (x.strip() for x in items if isinstance(x, str)) if t]


def all_captions(
    members: Mapping[str, bytes], sources: Iterable[str], keep_empty: bool = False
) -> dict[str, list[str]]:
    """Every caption of each requested source (evaluation: retrieval uses all of them).

    A `.txt` holds one caption per line (so a caption cannot contain a
    newline); a `.json` field may hold a string or a list of strings
    (COCO-style multi-caption). keep_empty: a source that is present but has
    only empty or whitespace captions gives the one caption "".
    """
    meta: dict | None = None
    out: dict[str, list[str]] = {}
    for source in sources:
        items: list[object] | None = None
        if source == ALT:
            raw = members.get("txt")
            if raw is not None:
                items = list(raw.decode("utf-8", errors="replace").splitlines())
        elif source == SYN:
            syn = _json_member(members, "syn.json").get("syn_text")
            if isinstance(syn, list):
                items = syn
        elif f"{source}.txt" in members:
            items = list(members[f"{source}.txt"].decode("utf-8", errors="replace").splitlines())
        else:
            if meta is None:
                meta = _json_member(members, "json")
            value = meta.get(source)
            if value is not None:
                items = value if isinstance(value, list) else [value]
        if items is None:
            continue
        texts = _cleaned(items)
        if not texts and keep_empty and (not items or any(isinstance(x, str) for x in items)):
            texts = [""]
        if texts:
            out[source] = texts
    return out


def caption_sources(
    members: Mapping[str, bytes],
    sources: Iterable[str],
    seed: int,
    epoch: int,
    key: str,
    keep_empty: bool = False,
) -> dict[str, str]:
    """One caption per available source, as choose_caption expects.

    Sources holding several captions (a multi-line `.txt`, syn_text, a list
    field) contribute one, picked by a keyed draw.
    """
    out: dict[str, str] = {}
    for source, texts in all_captions(members, sources, keep_empty).items():
        if len(texts) == 1:
            out[source] = texts[0]
        else:
            u = keyed_uniform(seed, epoch, key, f"caption-pick/{source}")
            out[source] = texts[min(int(u * len(texts)), len(texts) - 1)]
    return out


def _draw(order: list[str], probs: Mapping[str, float], u: float) -> str:
    total = sum(probs[s] for s in order)
    target = u * total
    acc = 0.0
    for s in order:
        acc += probs[s]
        if target < acc:
            return s
    return order[-1]


def _choose_among(
    available: Mapping[str, str], probs: Mapping[str, float], seed: int, epoch: int, key: str, purpose: str
) -> tuple[str, str] | None:
    order = sorted(s for s, p in probs.items() if p > 0)
    if not order:
        return None
    chosen = _draw(order, probs, keyed_uniform(seed, epoch, key, purpose))
    if chosen in available:
        return chosen, available[chosen]
    present = [s for s in order if s in available]
    if not present:
        return None
    # Renormalise over what this sample has, with an independent draw so the fallback is unbiased.
    chosen = _draw(present, probs, keyed_uniform(seed, epoch, key, purpose + "-fallback"))
    return chosen, available[chosen]


def choose_caption(
    sources_available: Mapping[str, str], probs: Mapping[str, float], seed: int, epoch: int, key: str
) -> tuple[str, str] | None:
    """Pick (source, text) for one sample: a pure function of (seed, epoch, key).

    A hash-derived uniform is compared with the cumulative probabilities in
    sorted source order. When the chosen source is missing in this sample,
    the choice falls back to the present sources with positive probability,
    renormalised. None when the sample has none of them (it is skipped).
    """
    return _choose_among(sources_available, probs, seed, epoch, key, "caption")


def choose_caption_pair(
    sources_available: Mapping[str, str], probs: Mapping[str, float], seed: int, epoch: int, key: str
) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """caption_mode "both" (MobileCLIP DR's summed loss): (AltText, other caption).

    The second caption is drawn from the non-`alt` sources with positive
    probability, renormalised. A sample lacking one of the two repeats the
    other in both slots, so the batch keeps its shape; None if it has neither.
    """
    alt = (ALT, sources_available[ALT]) if ALT in sources_available else None
    others = {s: p for s, p in probs.items() if s != ALT}
    other = _choose_among(sources_available, others, seed, epoch, key, "caption-b")
    if alt is None and other is None:
        return None
    return (alt or other, other or alt)  # type: ignore[return-value]
