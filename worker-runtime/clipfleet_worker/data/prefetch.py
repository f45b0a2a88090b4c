"""The loader's producer thread, decode pool and bounded queue of per-step futures."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

import torch

from .decode import _Sample
from .loaderconfig import StepSlice
from .pages import advise_huge_pages

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
