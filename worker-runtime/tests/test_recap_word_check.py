"""examples/recap_word_check.py: the word-level check of recaptioned shards that `make experiment-veclip` reports."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("recap_word_check", os.path.join(HERE, "..", "..", "examples", "recap_word_check.py"))
assert spec and spec.loader
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def shard(path: str, samples: list[tuple[str, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, (recap, vecap) in enumerate(samples):
            for ext, data in (("json", json.dumps({"vecap": vecap}).encode()), ("recap.txt", recap.encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_counts_the_generated_words_found_in_the_own_caption_and_ignores_the_fused_alt_text(tmp_path):
    shard(str(tmp_path / "a.tar"), [
        ("a red circle and a blue star. Alt text: green square", "A red circle on gray"),  # colours 1/2, shapes 1/2
        ("a yellow ring", "a yellow ring"),  # colours 1/1, shapes 1/1
    ])
    pairs = check.pairs_of(str(tmp_path), "recap.txt")
    assert pairs[0][0] == "a red circle and a blue star."
    assert check.precision(pairs, check.COLOURS) == pytest.approx(2 / 3)
    assert check.precision(pairs, check.SHAPES) == pytest.approx(2 / 3)


def test_no_recaptioned_sample_is_an_error(tmp_path, capsys):
    assert check.main(["x", str(tmp_path)]) == 2
    assert "no sample with recap.txt" in capsys.readouterr().err
