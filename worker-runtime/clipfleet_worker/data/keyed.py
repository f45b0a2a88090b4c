"""Per-sample randomness as a pure function of (seed, epoch, sample key, purpose).

Caption choice and augmentation must not depend on which rank, thread or
world size reads a sample, nor on what was read before it (a restart with a
different world size must see the same draws). Hashing the identity gives
that for free; the purpose string keeps the streams of different decisions
independent.
"""

from __future__ import annotations

import hashlib
import random

_TWO_53 = float(1 << 53)


def keyed_uniform(seed: int, epoch: int, key: str, purpose: str) -> float:
    """One uniform in [0, 1) derived from blake2b of the sample's identity."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}/{purpose}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / _TWO_53


def keyed_rng(seed: int, epoch: int, key: str, purpose: str) -> random.Random:
    """A private random.Random for decisions needing several draws.

    random.Random seeded with an int is reproducible across platforms and
    Python 3 versions; only `.random()` is used on it so no version-dependent
    integer helpers are involved.
    """
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}/{purpose}".encode(), digest_size=16).digest()
    return random.Random(int.from_bytes(digest, "big"))
