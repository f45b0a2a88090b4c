import json
import random
from collections import Counter

import pytest

from clipfleet_worker.data import all_captions, caption_sources, choose_caption, choose_caption_pair

BOTH = {"alt": "web alt text", "vecap": "a red circle in the top left"}
KEYS = [f"{i:09d}" for i in range(10_000)]


def test_choice_is_pure_in_seed_epoch_key_whatever_the_reader():
    probs = {"alt": 0.5, "vecap": 0.5}
    reference = {k: choose_caption(BOTH, probs, 7, 3, k) for k in KEYS[:2000]}
    # Any world size / rank split and any read order gives the same choice per key.
    for world in (1, 2, 3, 8):
        for rank in range(world):
            mine = KEYS[:2000][rank::world]
            order = list(mine)
            random.Random(world * 100 + rank).shuffle(order)
            for k in order:
                assert choose_caption(BOTH, probs, 7, 3, k) == reference[k]


def test_choice_changes_across_epochs_and_seeds():
    probs = {"alt": 0.5, "vecap": 0.5}
    e0 = [choose_caption(BOTH, probs, 0, 0, k)[0] for k in KEYS[:1000]]
    e1 = [choose_caption(BOTH, probs, 0, 1, k)[0] for k in KEYS[:1000]]
    s1 = [choose_caption(BOTH, probs, 1, 0, k)[0] for k in KEYS[:1000]]
    assert 350 < sum(a != b for a, b in zip(e0, e1)) < 650
    assert 350 < sum(a != b for a, b in zip(e0, s1)) < 650


@pytest.mark.parametrize("probs", [{"alt": 0.5, "vecap": 0.5}, {"alt": 0.2, "vecap": 0.8}])
def test_empirical_frequencies_match_probabilities(probs):
    counts = Counter(choose_caption(BOTH, probs, 11, 0, k)[0] for k in KEYS)
    for source, p in probs.items():
        assert abs(counts[source] / len(KEYS) - p) < 0.02


def test_fallback_renormalises_over_present_sources():
    probs = {"alt": 0.2, "vecap": 0.5, "syn": 0.3}
    only_alt_syn = {"alt": "a", "syn": "s"}
    picks = Counter(choose_caption(only_alt_syn, probs, 0, 0, k)[0] for k in KEYS)
    assert set(picks) == {"alt", "syn"}
    # P(alt) = 0.2 directly + 0.5 * 0.2/0.5 via fallback = 0.4.
    assert abs(picks["alt"] / len(KEYS) - 0.4) < 0.02
    assert choose_caption({"alt": "a"}, {"vecap": 1.0}, 0, 0, "k") is None
    assert choose_caption({"vecap": "v"}, {"alt": 0.0, "vecap": 1.0}, 0, 0, "k") == ("vecap", "v")


def test_both_mode_pairs_alt_with_the_other_source():
    probs = {"alt": 0.5, "vecap": 0.5}
    assert choose_caption_pair(BOTH, probs, 0, 0, "k") == (("alt", BOTH["alt"]), ("vecap", BOTH["vecap"]))
    only_vecap = {"vecap": "v"}
    assert choose_caption_pair(only_vecap, probs, 0, 0, "k") == (("vecap", "v"), ("vecap", "v"))
    assert choose_caption_pair({"alt": "a"}, probs, 0, 0, "k") == (("alt", "a"), ("alt", "a"))
    assert choose_caption_pair({}, probs, 0, 0, "k") is None


def test_sources_of_a_sample_alt_json_field_and_syn_list():
    members = {
        "txt": b"  IMG_0001.jpg \n",
        "json": json.dumps({"vecap": "a blue star", "url": "http://x", "empty": "  "}).encode(),
        "syn.json": json.dumps({"syn_text": ["s0", "s1", "s2"]}).encode(),
    }
    got = caption_sources(members, ["alt", "vecap", "syn", "empty", "missing"], 0, 0, "k")
    assert got["alt"] == "IMG_0001.jpg" and got["vecap"] == "a blue star"
    assert got["syn"] in {"s0", "s1", "s2"} and "empty" not in got and "missing" not in got
    # The syn element is keyed: stable for a key, spread over keys.
    assert caption_sources(members, ["syn"], 0, 0, "k") == {"syn": got["syn"]}
    spread = Counter(caption_sources(members, ["syn"], 0, 0, k)["syn"] for k in KEYS[:3000])
    assert all(800 < spread[s] < 1200 for s in ("s0", "s1", "s2"))
    assert all_captions(members, ["syn", "alt"]) == {"syn": ["s0", "s1", "s2"], "alt": ["IMG_0001.jpg"]}


def test_corrupt_json_member_means_missing_captions():
    members = {"txt": b"alt", "json": b"{not json"}
    assert caption_sources(members, ["alt", "vecap"], 0, 0, "k") == {"alt": "alt"}
