"""Plan-fed batch loading: the orchestrator says which samples, we decode them.

PlanLoader turns StepSlices (per rank, per step: shard index + index in shard
+ global sample id) into fixed-shape Batches. A producer thread fetches plan
chunks ahead and submits one decode task per sample to a thread pool (PIL
releases the GIL while decoding); the consumer blocks only when a step is not
ready yet, and that blocked time is reported as data-wait. iterate_split does
the same for sequential evaluation over a whole split.

Failure policy: a sample that cannot be decoded (corrupt image bytes, no
caption, missing label map, a bad gzipped member) is skipped and counted by
reason (SKIP_REASONS), its slot zero-filled and marked invalid so batch
shapes never change. A broken shard (truncated, not a tar, index past its
end) is a DataError naming the shard, raised to the
consumer. A label map with a wrong layout (8-bit depth, RGB mask, size
mismatch) is a dataset error, also a DataError.

The pieces live beside this module: loaderconfig (what a stage config
compiles to, the skip reasons), shardset (the job's shard indexes), decode
(one sample, on a decode thread), prefetch (the producer thread, the pool and
the queue of steps) and pages (huge pages for the step tensors). Their public
names stay importable from here.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .decode import _decode_sample, _Sample
from .loaderconfig import (  # noqa: F401 - re-exported: the loader's public names stay importable from here
    DEPTH_EXT,
    EMPTY_CAPTIONS,
    IMAGE_EXTS,
    SEG_EXT,
    SKIP_REASONS,
    TASKS,
    LoaderConfig,
    StepSlice,
    Tokenize,
    resolve_num_classes,
    seg_class_names,
)
from .prefetch import _Prefetcher
from .shardset import ShardSet
from .sources import ShardSource


@dataclass
class Batch:
    """A decoded step. Slots of skipped samples are zeros (seg: ignore) with valid False."""

    step: int
    epoch: int
    sample_in_epoch: int
    images: torch.Tensor  # [N, 3, S, S] float32, CLIP-normalised
    valid: torch.Tensor  # [N] bool
    sample_ids: list[int]
    keys: list[str]
    skipped: int
    skip_reasons: dict[str, int]
    tokens: torch.Tensor | None = None  # [N, ctx] (captioned tasks)
    tokens_b: torch.Tensor | None = None  # [N, ctx] caption_mode "both": the non-AltText caption
    caption_sources: list[str | None] = field(default_factory=list)
    seg: torch.Tensor | None = None  # [N, S, S] int64, ignore_index where unlabelled
    depth: torch.Tensor | None = None  # [N, S, S] float32 metres, 0 = invalid
    seg_out_of_range: int = 0  # pixels whose class id was >= num_classes (set to ignore)
    data_wait: float = 0.0  # seconds the consumer blocked waiting for this batch


@dataclass
class EvalBatch:
    """A batch of a sequential split scan, for retrieval / zero-shot / dense metrics."""

    images: torch.Tensor
    valid: torch.Tensor
    sample_ids: list[int]  # position of each sample in the whole split (shard order)
    keys: list[str]
    captions: list[dict[str, list[str]]]  # per sample: source -> every caption of it
    labels: torch.Tensor  # [N] int64 class index from .json label/cls or .cls; -1 if none
    skipped: int
    skip_reasons: dict[str, int]
    seg: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    seg_out_of_range: int = 0
    data_wait: float = 0.0


def _zero_skipped(smp: _Sample, slot: torch.Tensor) -> _Sample:
    """A skipped sample's row of the step's images (torch.empty) becomes zeros."""
    if smp.reason is not None:
        slot.zero_()
    return smp


def _valid(samples: list[_Sample]) -> torch.Tensor:
    """Which rows of the step's images hold a sample (the others are zeros)."""
    return torch.tensor([smp.reason is None for smp in samples], dtype=torch.bool)


def _stack_dense(samples: list[_Sample], cfg: LoaderConfig) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    n, size = len(samples), cfg.image_size
    seg = depth = None
    if cfg.dense == "seg":
        seg = torch.full((n, size, size), cfg.ignore_index, dtype=torch.int64)
    if cfg.dense == "depth":
        depth = torch.zeros(n, size, size, dtype=torch.float32)
    oor = 0
    for j, smp in enumerate(samples):
        if smp.reason is not None:
            continue
        if seg is not None:
            seg[j] = torch.from_numpy(smp.seg)
        if depth is not None:
            depth[j] = torch.from_numpy(smp.depth)
        oor += smp.out_of_range
    return seg, depth, oor


def skip_counts(reasons: dict[str, int]) -> list[float]:
    """Counts in SKIP_REASONS order, then "other": a fixed-length vector ranks can all-reduce."""
    out = [float(reasons.get(r, 0)) for r in SKIP_REASONS]
    out.append(float(sum(n for r, n in reasons.items() if r not in SKIP_REASONS)))
    return out


def skips_by_reason(counts: Sequence[float]) -> dict[str, int]:
    """The non-zero entries of a skip_counts vector, by reason."""
    return {r: int(n) for r, n in zip((*SKIP_REASONS, "other"), counts) if n}


def _skips(samples: list[_Sample]) -> tuple[int, dict[str, int]]:
    reasons = Counter(smp.reason for smp in samples if smp.reason is not None)
    return sum(reasons.values()), dict(reasons)


class PlanLoader:
    """Iterates Batches for steps [start_step, end_step) in order, fed by the orchestrator's plan.

    fetch_plan(from_step, count) returns the StepSlices of this rank for
    `count` consecutive steps (it may return fewer; it is called again).
    Prefetching starts at construction; call close() (or use `with`).
    """

    def __init__(
        self,
        shards: Sequence[tuple[str, int]],
        fetch_plan: Callable[[int, int], list[StepSlice]],
        start_step: int,
        end_step: int,
        task: str,
        cfg: dict,
        tokenize: Tokenize | None,
        image_size: int,
        threads: int,
        prefetch_steps: int,
        split: str = "train",
        cache_dir: str | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.config = LoaderConfig.from_cfg(cfg, task, image_size, split, [u for u, _ in shards])
        self._pin = pin_memory  # images stacked into page-locked memory (a CUDA rank: accel.DeviceFeeder copies them)
        if self.config.wants_captions and tokenize is None:
            raise ConfigError(f"task {task}: a tokenizer is required to load captions")
        self._shardset = ShardSet(shards, cache_dir, ShardSource.from_cfg(cfg))
        self._tokenize = tokenize
        self._fetch_plan = fetch_plan
        self._start, self._end = int(start_step), int(end_step)
        self._chunk = max(1, int(prefetch_steps))
        # Shape/dtype of a token row, so an all-skipped step still has a tokens tensor.
        self._token_row = tokenize([""])[0] if (self.config.wants_captions and tokenize is not None) else None
        self._prefetcher = _Prefetcher(self._slices, self._decode, threads, prefetch_steps, image_size, pin_memory)

    def _slices(self) -> Iterator[StepSlice]:
        step = self._start
        while step < self._end:
            count = min(self._chunk, self._end - step)
            plans = self._fetch_plan(step, count)
            if not plans:
                raise RuntimeError(f"fetch_plan({step}, {count}) returned no steps")
            for sl in plans:
                if sl.step != step:
                    raise RuntimeError(f"plan out of order: expected step {step}, got {sl.step}")
                yield sl
                step += 1
                if step >= self._end:
                    return

    def _decode(self, s: int, i: int, epoch: int, slot: torch.Tensor) -> _Sample:
        return _zero_skipped(_decode_sample(self._shardset, self.config, self._tokenize, s, i, epoch, None, slot), slot)

    def __iter__(self) -> "PlanLoader":
        return self

    def __next__(self) -> Batch:
        t0 = time.perf_counter()
        got = self._prefetcher.next()
        if got is None:
            raise StopIteration
        sl, images, samples = got
        cfg = self.config
        valid = _valid(samples)
        skipped, reasons = _skips(samples)
        batch = Batch(
            step=sl.step,
            epoch=sl.epoch,
            sample_in_epoch=sl.sample_in_epoch,
            images=images,
            valid=valid,
            sample_ids=list(sl.sample_ids),
            keys=[smp.key for smp in samples],
            skipped=skipped,
            skip_reasons=reasons,
            caption_sources=[smp.source if smp.reason is None else None for smp in samples],
        )
        if self._token_row is not None:
            batch.tokens = self._stack_tokens(samples, "tokens")
            if cfg.caption_mode == "both":
                batch.tokens_b = self._stack_tokens(samples, "tokens_b")
        batch.seg, batch.depth, batch.seg_out_of_range = _stack_dense(samples, cfg)
        batch.data_wait = time.perf_counter() - t0
        return batch

    def _stack_tokens(self, samples: list[_Sample], attr: str) -> torch.Tensor:
        assert self._token_row is not None
        out = torch.zeros((len(samples),) + tuple(self._token_row.shape), dtype=self._token_row.dtype)
        for j, smp in enumerate(samples):
            if smp.reason is None:
                out[j] = getattr(smp, attr)
        return out

    def close(self) -> None:
        """Stop prefetching and release shard files; safe to call twice."""
        self._prefetcher.close()
        self._shardset.close()

    def __enter__(self) -> "PlanLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [lo, hi) of a split for one rank; sizes differ by at most one."""
    return total * rank // world_size, total * (rank + 1) // world_size


def iterate_split(
    shards: Sequence[tuple[str, int]],
    batch_size: int,
    image_size: int,
    *,
    caption_sources: Sequence[str] = ("alt",),
    dense: str | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    rank: int = 0,
    world_size: int = 1,
    threads: int = 2,
    prefetch_batches: int = 2,
    cache_dir: str | None = None,
    source: ShardSource | None = None,
) -> Iterator[EvalBatch]:
    """Sequential scan of a split for evaluation, val transform, in shard order.

    Rank r of world_size reads a contiguous block (split_range); sample_ids are
    positions in the whole split so results can be gathered and re-ordered.
    The last batch may be short. dense "seg"/"depth" also loads label maps.
    """
    if dense == "seg" and num_classes is None:
        raise ConfigError("iterate_split: dense='seg' needs num_classes")
    task = {"seg": "finetune-seg", "depth": "finetune-depth", None: "eval"}[dense]
    cfg = LoaderConfig(
        task=task,
        seed=0,
        image_size=int(image_size),
        captions={},
        caption_mode="sample",
        augment=None,
        num_classes=num_classes,
        ignore_index=ignore_index,
    )
    shardset = ShardSet(shards, cache_dir, source)
    starts = [0]
    for _, n in shardset.shards:
        starts.append(starts[-1] + n)
    lo, hi = split_range(starts[-1], rank, world_size)

    def slices() -> Iterator[StepSlice]:
        for b, first in enumerate(range(lo, hi, batch_size)):
            ids = list(range(first, min(first + batch_size, hi)))
            where = [bisect.bisect_right(starts, p) - 1 for p in ids]
            yield StepSlice(b, 0, first, where, [p - starts[s] for p, s in zip(ids, where)], ids)

    sources = tuple(caption_sources) if dense is None else ()

    def decode(s: int, i: int, epoch: int, slot: torch.Tensor) -> _Sample:
        return _zero_skipped(_decode_sample(shardset, cfg, None, s, i, epoch, sources, slot), slot)

    prefetcher = _Prefetcher(slices, decode, threads, prefetch_batches, cfg.image_size)
    try:
        while True:
            t0 = time.perf_counter()
            got = prefetcher.next()
            if got is None:
                return
            sl, images, samples = got
            valid = _valid(samples)
            skipped, reasons = _skips(samples)
            seg, depth, oor = _stack_dense(samples, cfg)
            yield EvalBatch(
                images=images,
                valid=valid,
                sample_ids=list(sl.sample_ids),
                keys=[smp.key for smp in samples],
                captions=[smp.captions for smp in samples],
                labels=torch.tensor([smp.label for smp in samples], dtype=torch.int64),
                skipped=skipped,
                skip_reasons=reasons,
                seg=seg,
                depth=depth,
                seg_out_of_range=oor,
                data_wait=time.perf_counter() - t0,
            )
    finally:
        prefetcher.close()
        shardset.close()
