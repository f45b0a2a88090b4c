"""Tokenizers: a file-free byte tokenizer and OpenAI CLIP's byte-level BPE.

Both produce CLIP-layout rows: SOT, tokens, EOT, zero padding, with EOT the
largest id (the text tower pools at argmax). The BPE is CLIP's
SimpleTokenizer re-implemented with the standard library: ftfy and the
`regex` module are not available, so text cleanup approximates ftfy's
defaults (HTML unescape, NFC, straight quotes, ligatures, full-width ASCII,
control characters; no mojibake repair) and the word pattern is rebuilt for
`re` with exact Unicode letter/number classes from unicodedata. On clean
English text the ids equal CLIP's.
"""

from __future__ import annotations

import functools
import gzip
import html
import logging
import re
import sys
import unicodedata
import zlib
from typing import Any, Iterable, Mapping, Sequence

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

# CLIP keeps the first 49152 - 256 - 2 merges of bpe_simple_vocab_16e6.txt.gz, giving 49408 ids.
MAX_MERGES = 49152 - 256 - 2


class Tokenizer:
    """Text -> CLIP-layout id rows. Subclasses define encode/decode and the special ids."""

    vocab_size: int
    sot_id: int
    eot_id: int
    pad_id: int = 0

    def encode(self, text: str) -> list[int]:
        """Ids of one text, without SOT/EOT."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids: SOT skipped, stops at EOT (so a padded row decodes to its text)."""
        raise NotImplementedError

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
        """LongTensor [N, context_length]: SOT ... EOT then pad_id; too-long texts are cut, EOT kept last."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def whitespace_clean(text: str) -> str:
    """Collapse whitespace runs to one space and strip (CLIP's whitespace_clean)."""
    return re.sub(r"\s+", " ", text).strip()


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids: pad 0, byte b -> b + 1, SOT 257, EOT 258. Needs no vocabulary file."""

    vocab_size = 259
    sot_id = 257
    eot_id = 258

    def encode(self, text: str) -> list[int]:
        """Byte ids of the whitespace-cleaned text (case kept)."""
        return [b + 1 for b in whitespace_clean(text).encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        """Text from byte ids; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD."""
        return bytes(i - 1 for i in ids if 1 <= i <= 256).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character map (BPE works on these characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _ranges(cps: list[int]) -> str:
    parts, start, prev = [], cps[0], cps[0]
    for cp in cps[1:] + [-2]:
        if cp != prev + 1:
            parts.append(re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
            start = cp
        prev = cp
    return "".join(parts)


@functools.lru_cache(maxsize=1)
def clip_word_pattern() -> re.Pattern[str]:
    """CLIP's pre-tokenizer regex with \\p{L} / \\p{N} spelled as exact unicodedata classes (built once, ~0.2 s)."""
    letters, numbers = [], []
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat[0] == "L":
            letters.append(cp)
        elif cat[0] == "N":
            numbers.append(cp)
    L, N = _ranges(letters), _ranges(numbers)
    return re.compile(
        rf"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[{L}]+|[{N}]|[^\s{L}{N}]+", re.IGNORECASE
    )


_FTFY_TABLE = {
    **{cp: chr(cp - 0xFEE0) for cp in range(0xFF01, 0xFF5F)},  # full-width ASCII
    0x3000: " ",
    0x2018: "'", 0x2019: "'", 0x201A: "'", 0x201B: "'",
    0x201C: '"', 0x201D: '"', 0x201E: '"', 0x201F: '"',
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl", 0xFB05: "st", 0xFB06: "st",
    0x0132: "IJ", 0x0133: "ij",
    **{cp: None for cp in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), *range(0x7F, 0xA0), 0xFEFF]},
}


def basic_clean(text: str) -> str:
    """Stand-in for CLIP's ftfy.fix_text + double html.unescape + strip (no mojibake repair)."""
    text = unicodedata.normalize("NFC", text).translate(_FTFY_TABLE)
    return html.unescape(html.unescape(text)).strip()


class BpeTokenizer(Tokenizer):
    """OpenAI CLIP's byte-level BPE from a bpe_simple_vocab_16e6.txt.gz-format merges file.

    Ids: 256 byte symbols, their 256 end-of-word forms, one id per merge,
    then SOT and EOT (49408 ids with the real file). Text is cleaned and lowercased as CLIP does.
    """

    _CACHE_LIMIT = 200_000

    def __init__(self, merges_path: str) -> None:
        self.path = merges_path
        merges = _read_merges(merges_path)
        byte_symbols = list(bytes_to_unicode().values())
        vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_id = self.encoder["<|startoftext|>"]
        self.eot_id = self.encoder["<|endoftext|>"]
        self.pattern = clip_word_pattern()
        self._cache: dict[str, str] = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}

    def bpe(self, token: str) -> str:
        """Space-separated BPE symbols of one pre-token (already mapped through bytes_to_unicode)."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """CLIP ids of one text (cleaned, lowercased), without SOT/EOT."""
        ids: list[int] = []
        text = whitespace_clean(basic_clean(text)).lower()
        for token in self.pattern.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[sym] for sym in self.bpe(mapped).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids as CLIP decodes it (end-of-word marks become spaces), stopping at EOT.

        Stopping matters for padded rows: the pad id 0 is also the "!" token.
        """
        kept = []
        for i in ids:
            if i == self.eot_id:
                break
            if i != self.sot_id:
                kept.append(i)
        text = "".join(self.decoder[i] for i in kept)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


def _read_merges(path: str) -> list[tuple[str, str]]:
    try:
        with gzip.open(path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read BPE merges file {path}: {e}", "model.tokenizer.vocab") from None
    merges = []
    # Line 0 is a "#version" header; CLIP ignores everything past MAX_MERGES.
    for lineno, line in enumerate(lines[1 : MAX_MERGES + 1], start=2):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"corrupt BPE merges file {path}: line {lineno} is {line[:40]!r}, expected 'a b'",
                              "model.tokenizer.vocab")
        merges.append((parts[0], parts[1]))
    return merges


def build_tokenizer(cfg: Mapping[str, Any]) -> Tokenizer:
    """A tokenizer from the spec's model.tokenizer dict: {"type": "byte"} or {"type": "bpe", "vocab": path}."""
    kind = cfg.get("type")
    vocab = cfg.get("vocab")
    if kind == "byte":
        if vocab:
            log.warning("model.tokenizer.vocab (%s) has no effect with the byte tokenizer", vocab)
        return ByteTokenizer()
    if kind == "bpe":
        if not vocab:
            raise ConfigError("the bpe tokenizer needs a merges file (bpe_simple_vocab_16e6.txt.gz format)",
                              "model.tokenizer.vocab")
        return BpeTokenizer(str(vocab))
    raise ConfigError(f'expected "byte" or "bpe", got {kind!r}', "model.tokenizer.type")
