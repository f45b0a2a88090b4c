"""Compares two sets of cProfile dumps (e.g. ranks under `clipfleet run` vs ranks started by hand).

    python3 bench/profiling/compare.py A_DIR B_DIR [--top 25]

Prints, per function, the cumulative seconds in A and in B (summed over the
dumps of each directory) and the difference, largest difference first: where
the extra time of the slower side goes.
"""

from __future__ import annotations

import argparse
import glob
import os
import pstats


def cumulative(directory: str) -> dict[str, tuple[float, float]]:
    """{function: (cumulative seconds, own seconds)} summed over DIR/*.prof."""
    files = glob.glob(os.path.join(directory, "*.prof"))
    if not files:
        raise SystemExit(f"{directory}: no .prof files")
    stats = pstats.Stats(*files)
    out: dict[str, tuple[float, float]] = {}
    for (path, line, name), (_cc, _nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{os.path.basename(path)}:{line}({name})"
        prev = out.get(key, (0.0, 0.0))
        out[key] = (prev[0] + ct, prev[1] + tt)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--own", action="store_true", help="compare own (self) time instead of cumulative")
    args = p.parse_args()
    a, b = cumulative(args.a), cumulative(args.b)
    i = 1 if args.own else 0
    rows = [(k, a.get(k, (0.0, 0.0))[i], b.get(k, (0.0, 0.0))[i]) for k in set(a) | set(b)]
    rows.sort(key=lambda r: abs(r[1] - r[2]), reverse=True)
    print(f"{'A s':>9} {'B s':>9} {'A-B s':>9}  function ({'own' if args.own else 'cumulative'} time)")
    for k, x, y in rows[: args.top]:
        print(f"{x:9.3f} {y:9.3f} {x - y:9.3f}  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
