"""Byte and CLIP-BPE tokenizers: known ids, CLIP row layout, truncation, round trips, file errors."""

from __future__ import annotations

import gzip

import pytest
import torch

from clipfleet_worker.errors import ConfigError
from clipfleet_worker.tokenizers import (
    BpeTokenizer,
    ByteTokenizer,
    basic_clean,
    build_tokenizer,
    bytes_to_unicode,
    clip_word_pattern,
)

# A tiny merges file in bpe_simple_vocab_16e6.txt.gz format: header, then "a b" merges by rank.
MERGES = ["h e", "l l", "he ll", "hell o</w>", "c a", "ca t</w>"]


@pytest.fixture
def bpe_file(tmp_path):
    path = tmp_path / "vocab.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return str(path)


def byte_id(ch: str, end_of_word: bool = False) -> int:
    """Id of a one-byte symbol: CLIP orders the 256 byte symbols as bytes_to_unicode's values."""
    symbols = list(bytes_to_unicode().values())
    return symbols.index(bytes_to_unicode()[ord(ch)]) + (256 if end_of_word else 0)


def test_byte_tokenizer_layout_and_round_trip():
    tok = build_tokenizer({"type": "byte", "vocab": None})
    assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (259, 257, 258, 0)
    ids = tok(["ab", "h\u00e9 "], context_length=8)
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    assert ids[0].tolist() == [257, ord("a") + 1, ord("b") + 1, 258, 0, 0, 0, 0]
    assert ids[1, :5].tolist() == [257, 105, 0xC3 + 1, 0xA9 + 1, 258]  # UTF-8 bytes, whitespace stripped
    assert tok.decode(ids[1].tolist()) == "h\u00e9"
    assert int(ids.max()) <= tok.eot_id


def test_truncation_keeps_eot_last():
    tok = ByteTokenizer()
    ids = tok("a long caption that does not fit", context_length=6)
    assert ids.shape == (1, 6)
    assert ids[0].tolist() == [257, ord("a") + 1, ord(" ") + 1, ord("l") + 1, ord("o") + 1, 258]
    assert int(ids.argmax()) == 5  # the text tower pools here


def test_bpe_known_ids(bpe_file):
    tok = build_tokenizer({"type": "bpe", "vocab": bpe_file})
    # 256 byte symbols + 256 end-of-word forms + 6 merges + SOT + EOT
    assert tok.vocab_size == 520 and (tok.sot_id, tok.eot_id) == (518, 519)
    assert tok.encode("hello cat") == [512 + 3, 512 + 5]
    # Cleaned and lowercased; punctuation runs are their own words.
    assert tok.encode("  Hello,   CAT!") == [515, byte_id(",", True), 517, byte_id("!", True)]
    # A partial merge: h e -> he, but (he, l) and (l, l</w>) are not merges.
    assert tok.encode("hell") == [512, byte_id("l"), byte_id("l", True)]
    rows = tok(["hello cat", "hello cat cat cat"], context_length=4)
    assert rows.tolist() == [[518, 515, 517, 519], [518, 515, 517, 519]]
    assert tok(["hello"], context_length=3).tolist() == [[518, 515, 519]]
    assert tok(["hello cat"], context_length=3).tolist() == [[518, 515, 519]]


def test_bpe_round_trip_and_unicode_bytes(bpe_file):
    tok = BpeTokenizer(bpe_file)
    assert tok.decode(tok.encode("Hello cat")).strip() == "hello cat"
    ids = tok.encode("caf\u00e9")  # "ca" merges; the 2 bytes of e-acute fall back to byte symbols
    assert ids[:2] == [516, byte_id("f")] and len(ids) == 4 and tok.decode(ids).strip() == "caf\u00e9"
    assert tok.decode(tok("hello", context_length=8)[0].tolist()).strip() == "hello"


def test_clip_word_pattern_matches_clip_regex_behaviour():
    pat = clip_word_pattern()
    assert pat.findall("it's 12 caf\u00e9s!! a_b \u00b2x <|endoftext|>") == [
        "it", "'s", "1", "2", "caf\u00e9s", "!!", "a", "_", "b", "\u00b2", "x", "<|endoftext|>"
    ]


def test_basic_clean_approximates_ftfy():
    assert basic_clean(" Tom &amp;amp; Jerry ") == "Tom & Jerry"
    assert basic_clean("\u201cit\u2019s\u201d \ufb01ne \uff21\uff22") == "\"it's\" fine AB"
    assert basic_clean("e\u0301") == "\u00e9"  # NFC


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not gzip at all", "cannot read BPE merges file"),
        (gzip.compress(b"#version\nh e\n")[:-6], "cannot read BPE merges file"),
        (gzip.compress(b"#version\nh e\nthree parts here\n"), "line 3 is 'three parts here'"),
        (gzip.compress(b"#version\n\xff\xfe\n"), "cannot read BPE merges file"),
    ],
)
def test_corrupt_vocab_is_a_config_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as err:
        build_tokenizer({"type": "bpe", "vocab": str(path)})
    assert str(path) in str(err.value) and err.value.field == "model.tokenizer.vocab"


def test_tokenizer_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        build_tokenizer({"type": "bpe", "vocab": str(tmp_path / "missing.gz")})
    with pytest.raises(ConfigError, match=r"model\.tokenizer\.vocab: the bpe tokenizer needs a merges file"):
        build_tokenizer({"type": "bpe", "vocab": None})
    with pytest.raises(ConfigError, match=r"model\.tokenizer\.type: expected \"byte\" or \"bpe\", got 't5'"):
        build_tokenizer({"type": "t5", "vocab": None})
