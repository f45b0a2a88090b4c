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
"""

from __future__ import annotations

import bisect
import io
import json
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from .captions import all_captions, caption_sources, choose_caption, choose_caption_pair
from .members import BAD_GZIP, GZIP_TOO_LARGE, MemberError, decoded_members
from .pages import advise_huge_pages
from .shards import read_classes
from .sources import ShardSource
from .tarindex import TarIndex
from .transforms import AugmentParams, image_transform, joint_transform

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SEG_EXT = "seg.png"
DEPTH_EXT = "depth.png"
TASKS = ("pretrain", "finetune-seg", "finetune-depth", "eval", "train-captioner")
EMPTY_CAPTIONS = ("skip", "keep")
# Every reason a sample is skipped for: step and eval reports carry counts by these names,
# and the orchestrator keeps them as a bounded label set.
SKIP_REASONS = (
    "no image",
    "undecodable image",
    "no caption",
    BAD_GZIP,
    GZIP_TOO_LARGE,
    f"no {SEG_EXT}",
    f"undecodable {SEG_EXT}",
    f"no {DEPTH_EXT}",
    f"undecodable {DEPTH_EXT}",
)

Tokenize = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class StepSlice:
    """One rank's samples for one step, as the orchestrator's StepPlan gives them."""

    step: int
    epoch: int
    sample_in_epoch: int
    shards: list[int]
    indices: list[int]
    sample_ids: list[int]


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


@dataclass(frozen=True)
class LoaderConfig:
    """What decoding needs from a stage config, compiled once."""

    task: str
    seed: int
    image_size: int
    captions: dict[str, float]
    caption_mode: str
    augment: AugmentParams | None  # None: val transform
    num_classes: int | None
    ignore_index: int
    empty_captions: str = "skip"  # "keep": an empty caption is the caption ""

    @property
    def wants_captions(self) -> bool:
        """Contrastive tasks and the captioner read captions; dense fine-tunes do not."""
        return self.task in ("pretrain", "eval", "train-captioner")

    @property
    def dense(self) -> str | None:
        """Which label map the task reads: "seg", "depth" or None."""
        return {"finetune-seg": "seg", "finetune-depth": "depth"}.get(self.task)

    @staticmethod
    def from_cfg(cfg: dict, task: str, image_size: int, split: str, shard_urls: Sequence[str]) -> "LoaderConfig":
        """Compile from the StageSpec JSON; train split augments, val does not."""
        if task not in TASKS:
            raise ConfigError(f"expected one of {', '.join(TASKS)}, got {task!r}", field="task")
        data = cfg["data"]
        dense = cfg.get("dense") or {}
        num_classes = resolve_num_classes(cfg, shard_urls) if task == "finetune-seg" else None
        return LoaderConfig(
            task=task,
            seed=int(cfg["seed"]),
            image_size=int(image_size),
            captions={str(k): float(v) for k, v in data["captions"].items()},
            caption_mode=str(data.get("caption_mode", "sample")),
            augment=AugmentParams.from_cfg(data["augment"]) if split == "train" else None,
            num_classes=num_classes,
            ignore_index=int(dense.get("ignore_index", 255)),
            empty_captions=_empty_captions(data),
        )


def _empty_captions(data: dict) -> str:
    mode = str(data.get("empty_captions") or "skip")
    if mode not in EMPTY_CAPTIONS:
        raise ConfigError(f"expected one of {', '.join(EMPTY_CAPTIONS)}, got {mode!r}", field="data.empty_captions")
    return mode


def resolve_num_classes(cfg: dict, shard_urls: Sequence[str]) -> int:
    """dense.num_classes, or the length of `seg_classes` in the dataset's classes.json."""
    n = (cfg.get("dense") or {}).get("num_classes")
    if n is not None:
        return int(n)
    for url in shard_urls[:1]:
        classes = read_classes(url)
        if classes is not None and isinstance(classes.get("seg_classes"), list):
            return len(classes["seg_classes"])
    raise ConfigError(
        "not set and no classes.json with seg_classes next to the shards "
        f"({shard_urls[0] if shard_urls else 'no shards'})",
        field="dense.num_classes",
    )


def seg_class_names(shard_url: str, num_classes: int) -> list[str]:
    """Names of the seg classes from the dataset's classes.json (metric-key safe), else their indices."""
    classes = read_classes(shard_url) or {}
    names = classes.get("seg_classes")
    if not isinstance(names, list) or len(names) != num_classes:
        return [str(i) for i in range(num_classes)]
    return [re.sub(r"[^A-Za-z0-9_-]+", "_", str(n)) or str(i) for i, n in enumerate(names)]


class ShardSet:
    """The job's shard list with lazily opened indexes, checked against the manifest counts."""

    def __init__(self, shards: Sequence[tuple[str, int]], cache_dir: str | None = None, source: ShardSource | None = None) -> None:
        self.shards = [(str(u), int(n)) for u, n in shards]
        self._cache_dir = cache_dir
        self._source = source or ShardSource()
        self._indexes: dict[int, TarIndex] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def index(self, s: int) -> TarIndex:
        """The TarIndex of shard s; indexing happens once, outside the global lock."""
        idx = self._indexes.get(s)
        if idx is not None:
            return idx
        if not 0 <= s < len(self.shards):
            raise DataError(f"the plan names shard {s} but the job has {len(self.shards)} shards")
        with self._lock:
            lock = self._locks.setdefault(s, threading.Lock())
        with lock:
            idx = self._indexes.get(s)
            if idx is None:
                url, expected = self.shards[s]
                idx = self._source.open(url, self._cache_dir)
                if idx.num_samples != expected:
                    raise DataError(
                        f"the manifest says {expected} samples but the shard has "
                        f"{idx.num_samples} (stale sizes.json or index?)",
                        shard=url,
                    )
                self._indexes[s] = idx
            return idx

    def close(self) -> None:
        """Close every open shard descriptor."""
        for idx in list(self._indexes.values()):
            idx.close()


@dataclass
class _Sample:
    key: str
    reason: str | None = None  # why it was skipped; None when usable
    image: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    tokens_b: torch.Tensor | None = None
    source: str | None = None
    captions: dict[str, list[str]] = field(default_factory=dict)
    label: int = -1
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    out_of_range: int = 0


def _open_image(data: bytes, load: bool = True) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    if load:
        img.load()
    return img


def _find_image(members: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in members:
            return members[ext]
    return None


def _label_of(members: dict[str, bytes]) -> int:
    raw = members.get("json")
    if raw is not None:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            for name in ("label", "cls"):
                if isinstance(meta.get(name), int):
                    return int(meta[name])
    cls = members.get("cls")
    if cls is not None:
        try:
            return int(cls.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return -1
    return -1


def _decode_sample(
    shardset: ShardSet,
    cfg: LoaderConfig,
    tokenize: Tokenize | None,
    s: int,
    i: int,
    epoch: int,
    eval_sources: Sequence[str] | None,
    slot: torch.Tensor | None = None,
) -> _Sample:
    """Read and decode one sample. DataError for a broken shard; a skip reason otherwise.

    With `slot` (the sample's [3, S, S] row of its step's image tensor) the image is
    written there and `image` stays None; see `_zero_skipped`.
    """
    idx = shardset.index(s)
    key = idx.key(i)
    out = _Sample(key=key)
    try:
        members = decoded_members(idx.read(i))
    except MemberError as e:
        out.reason = e.reason
        return out
    data = _find_image(members)
    if data is None:
        out.reason = "no image"
        return out
    if eval_sources is not None:
        out.captions = all_captions(members, eval_sources)
        out.label = _label_of(members)
    elif cfg.wants_captions:
        available = caption_sources(members, cfg.captions, cfg.seed, epoch, key, cfg.empty_captions == "keep")
        if cfg.caption_mode == "both":
            pair = choose_caption_pair(available, cfg.captions, cfg.seed, epoch, key)
            if pair is None:
                out.reason = "no caption"
                return out
            (out.source, text), (_, text_b) = pair
        else:
            choice = choose_caption(available, cfg.captions, cfg.seed, epoch, key)
            if choice is None:
                out.reason = "no caption"
                return out
            out.source, text = choice
            text_b = None
    dense = cfg.dense
    if dense is None:
        try:
            # Decoded inside the transform, which may ask for a DCT-scaled decode of a big JPEG.
            img = _open_image(data, load=False)
            out.image = image_transform(img, cfg.image_size, cfg.augment, cfg.seed, epoch, key, out=slot)
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt bytes; the sample is skipped
            out.reason = "undecodable image"
            return out
    else:
        ext = SEG_EXT if dense == "seg" else DEPTH_EXT
        if ext not in members:
            out.reason = f"no {ext}"
            return out
        try:
            img = _open_image(data)
        except Exception:  # noqa: BLE001 - see above
            out.reason = "undecodable image"
            return out
        try:
            label_map = _open_image(members[ext])
        except Exception:  # noqa: BLE001 - see above
            out.reason = f"undecodable {ext}"
            return out
        _check_label_map(label_map, img, dense, shardset.shards[s][0], key)
        seg_img, depth_img = (label_map, None) if dense == "seg" else (None, label_map)
        out.image, seg, depth = joint_transform(
            img, seg_img, depth_img, cfg.image_size, cfg.augment, cfg.seed, epoch, key, out=slot
        )
        if seg is not None:
            assert cfg.num_classes is not None
            bad = (seg >= cfg.num_classes) & (seg != cfg.ignore_index)
            out.out_of_range = int(bad.sum())
            seg[bad] = cfg.ignore_index
            out.seg = seg
        if depth is not None:
            out.depth = depth.astype(np.float32) / 1000.0
    if slot is not None:
        out.image = None  # it lives in the step's tensor
    if eval_sources is None and cfg.wants_captions and tokenize is not None:
        out.tokens = tokenize([text])[0]
        if text_b is not None:
            out.tokens_b = tokenize([text_b])[0]
    return out


def _check_label_map(m: Image.Image, img: Image.Image, dense: str, shard: str, key: str) -> None:
    if dense == "seg" and m.mode not in ("L", "P", "I", "I;16"):
        raise DataError(
            f"seg.png must be single-channel class ids, got mode {m.mode}",
            shard=shard,
            key=key,
        )
    if dense == "depth" and m.mode not in ("I", "I;16"):
        raise DataError(
            f"depth.png must be 16-bit millimetres, got mode {m.mode}",
            shard=shard,
            key=key,
        )
    if m.size != img.size:
        raise DataError(
            f"{dense} map is {m.size[0]}x{m.size[1]} but the image is "
            f"{img.size[0]}x{img.size[1]}",
            shard=shard,
            key=key,
        )


_END = object()
# How often a consumer waiting for a step looks whether the loader was closed (see _Prefetcher.next).
_CLOSE_POLL_S = 1.0


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _one_torch_thread() -> None:
    # A decode thread's torch ops (normalisation) are small: with the rank's OpenMP team they
    # would spin up threads that then busy-wait beside the other decode threads. The setting
    # is per calling thread (OpenMP's nthreads ICV); the training thread keeps its own.
    torch.set_num_threads(1)


class _Prefetcher:
    """Producer thread + decode pool + bounded queue of per-step futures."""

    def __init__(
        self,
        slices: Callable[[], Iterator[StepSlice]],
        decode: Callable[[int, int, int, torch.Tensor], _Sample],
        threads: int,
        depth: int,
        image_size: int,
        pin_memory: bool = False,
    ) -> None:
        self._slices = slices
        self._decode = decode
        self._image_size = image_size
        self._pin = pin_memory
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="clipfleet-data", initializer=_one_torch_thread)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="clipfleet-plan", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for sl in self._slices():
                if self._stop.is_set():
                    return
                assert len(sl.shards) == len(sl.indices) == len(sl.sample_ids), "StepSlice lists differ in length"
                # Decode threads write each normalised image straight into its row of the step's
                # tensor (page-locked for a CUDA rank, so the copy to the GPU is asynchronous):
                # no per-sample tensor, and no stacking copy on the training thread.
                size = self._image_size
                images = torch.empty(len(sl.shards), 3, size, size, dtype=torch.float32, pin_memory=self._pin)
                if not self._pin:  # page-locked memory is already resident
                    advise_huge_pages(images)
                futures = [
                    self._pool.submit(self._decode, s, i, sl.epoch, images[j])
                    for j, (s, i) in enumerate(zip(sl.shards, sl.indices))
                ]
                self._queue.put((sl, images, futures))
                if self._stop.is_set():
                    return
            self._queue.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            if not self._stop.is_set():
                self._queue.put(_Failure(e))

    def next(self) -> tuple[StepSlice, torch.Tensor, list[_Sample]] | None:
        """The next step's images and decoded samples, or None at the end; re-raises loader errors."""
        if self._done:
            return None
        item = self._queue.get()
        if item is _END:
            self._done = True
            return None
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        sl, images, futures = item
        try:
            _wait_step(futures, self._stop)
            return sl, images, [f.result() for f in futures]
        except BaseException:
            self._done = True
            raise

    def close(self) -> None:
        """Stop producing, drop queued work, wait for running decodes."""
        self._stop.set()
        self._done = True
        # Draining frees the producer if it is blocked on a full queue; it then sees the stop flag.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple):
                for f in item[2]:
                    f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        # fetch_plan is an RPC with its own deadline; do not hang shutdown on it forever.
        self._thread.join(timeout=10.0)


def _wait_step(futures: list[Future], stop: threading.Event) -> None:
    """Block until every decode of a step is done, one has failed, or the loader is closed.

    One wake-up for the step: waiting on each future in turn woke the consumer once
    per sample, and each wake-up takes the GIL and a core from the decode threads.
    The timeout only matters when close() runs on another thread and cancels queued
    decodes, which wait() is not told of; the caller's result() then raises.
    """
    pending: set[Future] | list[Future] = futures
    while pending and not stop.is_set():
        done, pending = wait(pending, timeout=_CLOSE_POLL_S, return_when=FIRST_EXCEPTION)
        if any(not f.cancelled() and f.exception() is not None for f in done):
            return


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
