"""`synth`, `convert` and `index` subcommands of `python3 -m clipfleet_worker` (merged by __main__.py).

Kept apart from the worker entry so dataset tooling needs no orchestrator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .convert import ConvertParams, convert
from .data.indexer import build_index
from .data.shards import expand_urls
from .errors import ClipfleetWorkerError, ConfigError
from .synth import SYNTH_DEFAULTS, SynthParams, generate

EXIT_USER_ERROR = 2


def add_subcommands(sub: "argparse._SubParsersAction") -> None:
    """Register `synth` and `convert` on an existing subparsers object (for __main__.py)."""
    p = sub.add_parser("synth", help="generate the synthetic shapes dataset (WebDataset shards)")
    d = SYNTH_DEFAULTS
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train", type=int, default=d["train"], help=f"number of train samples (default {d['train']})")
    p.add_argument("--val", type=int, default=d["val"], help=f"number of val samples (default {d['val']})")
    p.add_argument("--shards", type=int, default=d["shards"], help=f"number of train shards (default {d['shards']})")
    p.add_argument("--val-shards", type=int, help="number of val shards (default ceil(shards / 4); 0 without val samples)")
    p.add_argument("--seed", type=int, default=d["seed"], help=f"generator seed (default {d['seed']})")
    p.add_argument("--size", type=int, default=d["size"], help=f"image side in pixels (default {d['size']})")
    p.set_defaults(run=_run_synth)

    c = sub.add_parser("convert", help="pack a folder of images with captions and/or masks/depth into WebDataset shards")
    c.add_argument(
        "--images",
        required=True,
        help="directory of .jpg/.jpeg/.png/.webp images (searched recursively), with same-stem .txt/.json caption files",
    )
    c.add_argument("--masks", help="directory of .png class-id masks (same relative stems)")
    c.add_argument("--depth", help="directory of 16-bit .png depth maps in millimetres (same relative stems)")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--shards", type=int, default=1, help="shards to split the samples over, 1 to the sample count (default 1)")
    c.add_argument("--split", default="train", help="shard name prefix (train, val, ...)")
    c.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="mask id 0 -> 255 (ignore), k -> k-1 (ADE20k, NYUv2)",
    )
    c.add_argument("--classes", help="class names: one per line, or a JSON list; written to classes.json")
    c.set_defaults(run=_run_convert)

    x = sub.add_parser("index", help="count, hash and index shards (local, http(s)://, pipe:) for data.index")
    x.add_argument("patterns", nargs="+", help="shard patterns (brace ranges, :: lists)")
    x.add_argument("--out", help="output directory (default: the shards' directory; required for remote shards)")
    x.add_argument("--jobs", type=int, default=8, help="shards read at once")
    x.set_defaults(run=_run_index)


def _run_synth(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    result = generate(SynthParams(args.out, args.train, args.val, args.shards, args.size, args.seed, args.val_shards))
    return {
        "out": result.out,
        "train_shards": len(result.train_shards),
        "val_shards": len(result.val_shards),
        "samples": sum(result.sizes.values()),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _run_convert(args: argparse.Namespace) -> dict:
    result = convert(
        ConvertParams(
            images=args.images,
            masks=args.masks,
            depth=args.depth,
            out=args.out,
            shards=args.shards,
            split=args.split,
            reduce_zero_label=args.reduce_zero_label,
            classes=args.classes,
        )
    )
    return result.summary(args.out)


def _run_index(args: argparse.Namespace) -> dict:
    if args.jobs < 1:
        raise ConfigError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    return build_index(
        expand_urls(args.patterns), args.out, jobs=args.jobs, log=lambda line: print(line, file=sys.stderr, flush=True)
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed synth/convert command: JSON summary on stdout, user errors on stderr (exit 2)."""
    try:
        summary = args.run(args)
    except ClipfleetWorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps(summary, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: `python3 -m clipfleet_worker.cli_data synth|convert ...`."""
    parser = argparse.ArgumentParser(prog="clipfleet_worker")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
