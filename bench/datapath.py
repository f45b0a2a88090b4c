"""Benchmark 4, data path: samples/s of the worker's loader against bare loops over the same shards.

The loader is clipfleet_worker.data.loader.PlanLoader as pretraining uses it
(tar index and random access, caption choice, keyed random resized crop and
flip, CLIP normalisation, byte tokenisation, batching, prefetch threads),
fed a sequential plan over the given shards. Two baselines read the same
shard files front to back with tarfile, one image per sample (the member the
loader decodes; a sample's seg/depth PNG maps are not images of their own):

- `bare`: decodes each image with PIL and nothing else (what the loader was
  compared with until 2026-12-06: the ratio then includes the preprocessing
  every CLIP pipeline pays);
- `minimum`: the least a CLIP sample needs: decode (a reduced-scale JPEG
  decode where the region is 2x the output or more), one bicubic resize of
  the centre square to the output size, normalisation to a float tensor,
  on as many threads as the loader has. loader / minimum measures only the
  loader's own overhead (random access, captions, keyed augmentation,
  tokenisation, batching, prefetch).

All run after a warm-up pass, so the shards are in the page cache for each;
they alternate over --repeats rounds. Prints one JSON line.

    PYTHONPATH=worker-runtime python3 bench/datapath.py --data DIR --image-size 224 --repeats 3
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import json
import os
import pstats
import sys
import tarfile
import time

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from clipfleet_worker.data.loader import PlanLoader, StepSlice
from clipfleet_worker.data.transforms import center_geometry, draft_box, resample_box, source_box, to_normalized_tensor
from clipfleet_worker.tokenizers import build_tokenizer

# A sample's image is its first member with one of these extensions, in this order (the loader's _find_image).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def shard_list(data: str) -> list[tuple[str, int]]:
    """The train shards of a dataset directory with their sample counts (its sizes.json)."""
    with open(os.path.join(data, "sizes.json")) as f:
        sizes = json.load(f)
    return [(os.path.join(data, name), int(n)) for name, n in sorted(sizes.items()) if name.startswith("train-")]


def sample_images(url: str) -> Iterator[bytes]:
    """The image bytes of each sample of a shard, front to back: one per sample, as the loader reads it.

    Members are grouped by WebDataset key (the path up to the first dot of the
    file name), so a sample's `seg.png` and `depth.png` label maps are not
    images of their own: counting them (as these loops did until 2026-12-06)
    made the baselines decode and resize three images a sample, PNG maps that
    the loader does not touch in pretraining.
    """
    with tarfile.open(url) as tar:
        key: str | None = None
        found: dict[str, tarfile.TarInfo] = {}
        for member in [*tar, None]:
            if member is not None and not member.isfile():
                continue
            this = None
            if member is not None:
                head, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                this = f"{head}/{stem}"
            if this != key and found:
                first = next(found[e] for e in IMAGE_EXTS if e in found)
                data = tar.extractfile(first)
                assert data is not None
                yield data.read()
                found = {}
            if member is None:
                break
            key = this
            if ext in IMAGE_EXTS:
                found[ext] = member


def bare_decode(shards: list[tuple[str, int]]) -> int:
    """Decodes every sample's image of every shard, sequentially; returns how many."""
    n = 0
    for url, _ in shards:
        for data in sample_images(url):
            Image.open(io.BytesIO(data)).convert("RGB")
            n += 1
    return n


def minimum_pass(shards: list[tuple[str, int]], image_size: int, threads: int) -> int:
    """Decode, resize and normalise every image of the shards on `threads` threads; returns how many."""

    def one(data: bytes) -> None:
        img = Image.open(io.BytesIO(data))
        box = draft_box(img, source_box(center_geometry(img.width, img.height, image_size), img.width, img.height), image_size)
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        to_normalized_tensor(resample_box(rgb, box, image_size, Image.Resampling.BICUBIC, False))

    def shard(url: str) -> int:
        n = 0
        for data in sample_images(url):
            one(data)
            n += 1
        return n

    if threads <= 1:
        return sum(shard(url) for url, _ in shards)
    # One torch thread per decode thread, as the loader's.
    with ThreadPoolExecutor(max_workers=threads, initializer=lambda: torch.set_num_threads(1)) as pool:
        return sum(pool.map(shard, [url for url, _ in shards]))


def loader_pass(shards: list[tuple[str, int]], image_size: int, batch: int, threads: int, prefetch: int) -> int:
    """Iterates PlanLoader over every full batch of the shards, in order; returns the samples loaded."""
    starts = [0]
    for _, n in shards:
        starts.append(starts[-1] + n)
    steps = starts[-1] // batch

    def fetch(from_step: int, count: int) -> list[StepSlice]:
        out = []
        for step in range(from_step, min(steps, from_step + count)):
            ids = list(range(step * batch, (step + 1) * batch))
            where = [bisect.bisect_right(starts, i) - 1 for i in ids]
            out.append(StepSlice(step=step, epoch=0, sample_in_epoch=step * batch, shards=where, indices=[i - starts[s] for i, s in zip(ids, where)], sample_ids=ids))
        return out

    cfg = {
        "seed": 0,
        "data": {"captions": {"alt": 0.5, "vecap": 0.5}, "caption_mode": "sample", "augment": {"crop_scale": [0.9, 1.0], "crop_ratio": [0.75, 1.3333333], "hflip": 0.0}},
    }
    tokenizer = build_tokenizer({"type": "byte", "vocab": None})
    n = 0
    with PlanLoader(
        shards=shards, fetch_plan=fetch, start_step=0, end_step=steps, task="pretrain", cfg=cfg,
        tokenize=lambda texts: tokenizer(texts, 77), image_size=image_size, threads=threads, prefetch_steps=prefetch,
    ) as loader:
        for b in loader:
            n += int(b.valid.sum())
    return n


def profile_decode(shards: list[tuple[str, int]], image_size: int) -> None:
    """cProfile of the loader's per-sample work, run on this thread (the loader's pool threads escape cProfile)."""
    from clipfleet_worker.data.loader import LoaderConfig, ShardSet, _decode_sample

    cfg = LoaderConfig.from_cfg(
        {"seed": 0, "data": {"captions": {"alt": 0.5, "vecap": 0.5}, "caption_mode": "sample", "augment": {"crop_scale": [0.9, 1.0], "crop_ratio": [0.75, 1.3333333], "hflip": 0.0}}},
        "pretrain", image_size, "train", [u for u, _ in shards],
    )
    tokenizer = build_tokenizer({"type": "byte", "vocab": None})
    shardset = ShardSet(shards)
    prof = cProfile.Profile()
    prof.enable()
    for s, (_, n) in enumerate(shards):
        for i in range(n):
            _decode_sample(shardset, cfg, lambda texts: tokenizer(texts, 77), s, i, 0, None)
    prof.disable()
    shardset.close()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def timed(fn, *args) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of the whole process (every thread), and fn's count."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0, n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="dataset directory (train-*.tar and sizes.json)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="loader decode threads (data.loader_threads)")
    p.add_argument("--prefetch", type=int, default=4, help="data.prefetch_steps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also profile a 1-thread loader pass with cProfile (top functions on stderr)")
    args = p.parse_args()
    shards = shard_list(args.data)
    bare_decode(shards)  # warm-up: page cache, PIL plugins
    runs: list[dict[str, float]] = []
    # Samples per CPU second (all threads): what each pass costs, less sensitive to a busy machine than wall time.
    cpu_runs: list[dict[str, float]] = []
    for r in range(args.repeats):
        # Alternate the order, so a trend in the machine's load favours none.
        order = ["bare", "minimum", "minimum1", "loader", "loader1"]
        if r % 2:
            order.reverse()
        run: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for kind in order:
            if kind == "bare":
                secs, cpu_secs, n = timed(bare_decode, shards)
            elif kind.startswith("minimum"):
                secs, cpu_secs, n = timed(minimum_pass, shards, args.image_size, 1 if kind == "minimum1" else args.threads)
            else:
                secs, cpu_secs, n = timed(loader_pass, shards, args.image_size, args.batch, args.threads if kind == "loader" else 1, args.prefetch)
            run[kind] = n / secs
            cpu[kind] = n / cpu_secs
        runs.append(run)
        cpu_runs.append(cpu)
    if args.profile:
        profile_decode(shards, args.image_size)
    print(json.dumps({"runs": runs, "cpuRuns": cpu_runs, "threads": args.threads, "imageSize": args.image_size, "batch": args.batch, "samples": sum(n for _, n in shards), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
