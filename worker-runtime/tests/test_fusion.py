"""Fusion of visual captions with AltText: `fusion: template` and `fusion: none` (captioning/fusion.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clipfleet_worker import synth
from clipfleet_worker.captioning import fusion
from clipfleet_worker.captioning.fusion import LABEL, fuse_one, knowledge
from clipfleet_worker.errors import ConfigError

CAPTION = "A small red circle in the top left and a big blue star in the center on a striped gray background."


@pytest.mark.parametrize(
    "alt, kept",
    [
        ("IMG_0042.jpg", []),
        ("DSC01234.JPG", []),
        ("a1b2c3d4e5.jpg", []),
        ("image (3).jpeg", []),
        ("banner_12_final_v2", []),
        ("photo_2015-03-12.png", ["dated 2015-03-12"]),
        ("Screenshot_20190412", ["dated 2019-04-12"]),
        ("buy now 50% off | top seller", []),
        ("best price free shipping", []),
        ("royalty free image", []),
        ("new arrivals 2021 collection", ["2021 collection"]),
        ("red circle sticker - stock photo", ["sticker"]),
        ("RED CIRCLE STICKER", ["sticker"]),
        ("Blue Star Icon", ["Icon"]),
        ("a small red circle in the top left", []),
        ("vector illustration", ["vector illustration"]),
        ("Wonderful Copenhagen harbour at night, Nyhavn 2019", ["Wonderful Copenhagen harbour at night", "Nyhavn 2019"]),
        ("Nike Air Max 90 - free shipping", ["Nike Air Max 90"]),
        ("Photo of the Eiffel Tower, Paris (2018)", ["Eiffel Tower", "Paris 2018"]),
        ("sticker | Sticker", ["sticker"]),
    ],
)
def test_knowledge_keeps_what_the_image_cannot_show(alt, kept):
    assert knowledge(alt) == kept


def test_template_appends_knowledge_after_the_caption():
    assert fuse_one(CAPTION, "new arrivals 2021 collection | photo_2015-03-12.png") == f"{CAPTION} {LABEL} 2021 collection; dated 2015-03-12."
    # Nothing to add: the caption unchanged (a visual AltText, even a wrong one, never overrides it).
    assert fuse_one(CAPTION, "green triangle") == CAPTION
    assert fuse_one("A red circle", "") == "A red circle"
    # A phrase the caption already says is not repeated.
    assert fuse_one("A circle on a sticker.", "red sticker") == "A circle on a sticker."
    # No caption (the captioner wrote nothing): the knowledge alone.
    assert fuse_one("", "Eiffel Tower, Paris") == f"{LABEL} Eiffel Tower; Paris."
    assert fuse_one("  ", "IMG_0001.jpg") == ""


def test_on_synthetic_alttexts_no_visual_word_leaks_into_the_fused_part():
    """Every AltText the generator writes: the part added to the caption never names a colour, shape or size."""
    visual = set(synth.COLOURS) | set(synth.SHAPES) | {"small", "tiny", "medium", "large", "big", "huge"}
    added = 0
    for i in range(600):
        rng = np.random.default_rng([5, i])
        objs = [{"colour": c, "shape": s, "size": z} for c, s, z in [("red", "circle", "small"), ("blue", "star", "large")]]
        alt = synth.alt_text(objs, rng)
        fused = fuse_one(CAPTION, alt)
        assert fused.startswith(CAPTION)
        extra = fused[len(CAPTION):]
        if extra:
            added += 1
            assert extra.startswith(f" {LABEL} ")
            words = {w.strip(".,;:").lower() for w in extra[len(LABEL) + 2 :].split()}
            assert not words & visual, (alt, fused)
    # Some synthetic AltTexts carry a date, a year or a medium ("sticker", "illustration"); most carry nothing.
    assert 0 < added < 600


def odd_strings() -> list[str]:
    rnd = random.Random(1234)
    alphabet = "aZ09 .,;|-_/\\\t\n\r\x00\x07\u200b\u202e\u0301\u00e9\u4e2d\U0001f600\ufeff\ud7ff%()[]{}\"'"
    fixed = ["", " ", "\n\n", "\x00" * 50, "|||---;;;", "A" * 20000, "word " * 5000, "\u202eevil\u202c", "e\u0301" * 300,
             "\U0001f600" * 1000, "IMG_" + "9" * 5000 + ".jpg", "2021-13-45", "19991231", "  -  |  ,  ",
             "Ünïcödé Straße Zürich 2020", "\u4e2d\u6587\u6807\u9898 2019", "\ud800\udc00".encode("utf-16", "surrogatepass").decode("utf-16")]
    return fixed + ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 300))) for _ in range(300)]


@pytest.mark.parametrize("max_chars", [16, 60, 400])
def test_fuzz_odd_strings_never_fail_and_stay_within_max_chars(max_chars):
    fuser = fusion.make_template({"max_chars": max_chars}, None)
    strings = odd_strings()
    rnd = random.Random(max_chars)
    caps = [rnd.choice(strings) for _ in strings]
    out = fuser.fuse(caps, strings)
    assert len(out) == len(strings)
    for o, c, a in zip(out, caps, strings):
        assert isinstance(o, str) and len(o) <= max_chars, (c, a, o)
        assert "\x00" not in o and "\n" not in o
        assert fuse_one(c, a, max_chars) == o  # deterministic
    assert fuser.fuse(list(reversed(caps)), list(reversed(strings))) == list(reversed(out))  # order independent


def test_a_long_caption_keeps_priority_and_is_cut_at_a_word():
    cap = "a red circle " * 100
    out = fuse_one(cap, "Eiffel Tower", max_chars=50)
    assert len(out) <= 50 and out.startswith("a red circle a red circle") and LABEL not in out
    assert not out.endswith(" ")


def test_none_returns_captions_unchanged_and_factories_check_their_args():
    assert fusion.make_none({}, None).fuse(["x ", ""], ["IMG_1.jpg", "Paris"]) == ["x ", ""]
    assert fusion.make_template({}, None).max_chars == fusion.DEFAULT_MAX_CHARS
    for bad in (0, 15, "400", True, 10**9):
        with pytest.raises(ConfigError, match="fusion.args.max_chars"):
            fusion.make_template({"max_chars": bad}, None)
    for fuser in (fusion.make_none({}, None), fusion.make_template({}, None)):
        with pytest.raises(ValueError, match="alt texts"):
            fuser.fuse(["a"], [])
