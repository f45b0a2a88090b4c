"""How much of what a captioner wrote is about its image: `make experiment-veclip` runs this on the recaptioned shards.

For every sample of the recaptioned shards (DIR/*.tar), the colour and shape
words of the generated caption (the `recap.txt` member, without the fused
"Alt text:" part) are looked up in the sample's own ground-truth visual
caption (the `vecap` field of its `.json` member, which the synthetic
generator wrote from the scene), and, as the chance baseline, in the
caption of another sample drawn at random (seeded). A captioner that sees
its images scores well above the baseline; one that writes plausible words
regardless of the image scores near it. Prints a markdown table.

Usage: python3 examples/recap_word_check.py examples/data/veclip-recap [FIELD]
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import sys
import tarfile

COLOURS = set("red green blue yellow purple orange cyan magenta pink brown beige olive slate gray grey black white teal navy maroon gold silver".split())
SHAPES = set("circle square triangle star cross ring hexagon diamond pentagon ellipse rectangle".split())


def words(text: str, vocab: set[str]) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w in vocab}


def pairs_of(folder: str, field: str) -> list[tuple[str, str]]:
    """(generated caption, ground-truth VeCap) per sample, over every shard of the folder."""
    out: list[tuple[str, str]] = []
    for path in sorted(glob.glob(os.path.join(folder, "*.tar"))):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for info in tar:
                f = tar.extractfile(info) if info.isfile() else None
                if f is not None:
                    key, _, ext = info.name.partition(".")
                    members.setdefault(key, {})[ext] = f.read()
        for m in members.values():
            if field in m and "json" in m:
                generated = m[field].decode("utf-8").split(" Alt text:")[0]
                out.append((generated, str(json.loads(m["json"]).get("vecap", ""))))
    return out


def precision(pairs: list[tuple[str, str]], vocab: set[str]) -> float:
    """Of the vocabulary words the generated captions use, the fraction their reference caption contains."""
    hit = total = 0
    for generated, reference in pairs:
        g = words(generated, vocab)
        hit += len(g & words(reference, vocab))
        total += len(g)
    return hit / total if total else float("nan")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    field = argv[2] if len(argv) > 2 else "recap.txt"
    pairs = pairs_of(argv[1], field)
    if not pairs:
        print(f"recap_word_check: no sample with {field} and .json in {argv[1]}/*.tar", file=sys.stderr)
        return 2
    refs = [r for _, r in pairs]
    shuffled = list(zip([g for g, _ in pairs], random.Random(0).sample(refs, len(refs))))
    print(f"Words of the generated captions ({len(pairs)} samples) found in the image's own ground-truth caption, and in another image's (chance):\n")
    print("| words | own image | another image (chance) |\n|---|---|---|")
    for name, vocab in (("colour", COLOURS), ("shape", SHAPES)):
        print(f"| {name} | {precision(pairs, vocab):.3f} | {precision(shuffled, vocab):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
