"""Benchmark 5, checkpoints: save and load throughput against the disk's own bandwidth, and the training stall.

A model of about --params parameters (a stack of square Linear layers) with
AdamW state is checkpointed exactly as pretraining does it
(clipfleet_worker.checkpoint.CheckpointWriter: torch.save through a hashing
writer into the temp file, fsync, rename) and restored exactly as a resume
does it (VerifiedCheckpoint: each file read once, its digest checked, then
loaded with weights_only). The baseline is `dd` on the same directory in
the same run: a sequential write of as many bytes with conv=fsync, and a
sequential read of them. Reads are cold for both: each file is evicted from
the page cache first (posix_fadvise DONTNEED after fsync; no global cache
drop, the machine is shared), so both read from the disk.

The stall: a training loop of the same model runs a fixed number of steps
with one save after the first step, synchronous or asynchronous
(checkpoint.async), and without a save; each mode's writer lives through
the run as a rank's does, its first save (the one-time allocation of the
snapshot buffers) a warm-up reported apart (firstBlocked). The asynchronous
save defers the copy of the parameters and AdamW state to its thread while
the next step's forward and backward run, and the step waits for it before
its update (CheckpointWriter.settle(), as apply_update does); the stall is
everything the training thread blocks on because of the save: save() plus
that wait (blocked = saveBlocked + settleBlocked). Also the loop's extra
wall time over the loop without a save (the background copy and write
compete with training for the same cores).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import time

import torch

from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker.snapshot import update_only_tensors


def build(params: int, width: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Square Linear layers adding up to about `params` parameters, with AdamW state (one step taken)."""
    per_layer = width * width + width
    layers = max(1, round(params / per_layer))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train_step(model, opt, width)
    return model, opt


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, width: int, batch: int = 4, writer: ckpt.CheckpointWriter | None = None) -> float:
    """One step; with a writer, its deferred snapshot copy is settled before the update (as apply_update
    does). Returns the seconds that settle blocked."""
    x = torch.randn(batch, width)
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    settled = writer.settle() if writer is not None else 0.0
    opt.step()
    return settled


def payload(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> dict:
    """Rank 0's files, as tasks/pretrain.py builds them."""
    return {
        ckpt.rank_file(0): {"rng": ckpt.rng_state(), "step": step},
        ckpt.MODEL_FILE: model.state_dict(),
        ckpt.TRAINER_FILE: {"optimizer": opt.state_dict(), "step": step, "config_sha256": "0" * 64},
    }


def evict(path: str) -> None:
    """Drops one file's pages from the page cache (they are clean: written with fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def save(root: str, step: int, files: dict, async_save: bool = False) -> tuple[float, str, list[ckpt.WrittenFile]]:
    written: list = []
    writer = ckpt.CheckpointWriter(root, 1, 0, async_save)
    stalled = writer.save(step, files, lambda d, fs, s, w: written.extend(fs))
    writer.wait()
    return stalled, os.path.join(root, ckpt.checkpoint_dir_name(step, 1)), written


def load(directory: str, files: list[ckpt.WrittenFile]) -> float:
    """What a resume does: VerifiedCheckpoint (presence and sizes), then each file read once,
    its digest checked, and loaded (weights_only)."""
    for f in files:
        evict(os.path.join(directory, f.path))
    t0 = time.perf_counter()
    verified = ckpt.VerifiedCheckpoint.verified(directory, {f.path: (f.sha256, f.size) for f in files})
    for f in files:
        verified.load(f.path)
    return time.perf_counter() - t0


def dd_write(path: str, nbytes: int) -> float:
    mib = max(1, math.ceil(nbytes / 2**20))
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"], check=True, capture_output=True)
    return time.perf_counter() - t0


def dd_read(path: str) -> float:
    evict(path)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    return time.perf_counter() - t0


def stall_loop(model, opt, width: int, steps: int, writer: ckpt.CheckpointWriter | None, step0: int, defer: bool = True) -> dict[str, float]:
    """With one save after the first step (none without a writer): the seconds save() blocked, the
    seconds the updates waited for its deferred copy (defer: parameters and AdamW state deferred,
    as the training loop does; False: everything copied in save()), and the loop's wall seconds."""
    save_blocked = settled = 0.0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        settled += train_step(model, opt, width, writer=writer)
        if step == 1 and writer is not None:
            tensors = update_only_tensors(model, opt) if defer else ()
            save_blocked = writer.save(step0 + step, payload(model, opt, step0 + step), lambda *a: None, tensors)
    if writer is not None:
        writer.wait()
    return {"blocked": save_blocked + settled, "saveBlocked": save_blocked, "settleBlocked": settled, "loop": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, help="scratch directory on the disk to measure")
    p.add_argument("--params", type=int, default=150_000_000)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stall-repeats", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    model, opt = build(args.params, args.width)
    n_params = sum(q.numel() for q in model.parameters())
    runs = []
    for r in range(args.repeats):
        root = os.path.join(args.dir, f"ckpt-{r}")
        files = payload(model, opt, r + 1)
        saved, directory, written = save(root, r + 1, files)
        nbytes = sum(f.size for f in written)
        loaded = load(directory, written)
        dd_file = os.path.join(args.dir, "dd.bin")
        w = dd_write(dd_file, nbytes)
        rd = dd_read(dd_file)
        dd_bytes = os.path.getsize(dd_file)
        os.remove(dd_file)
        shutil.rmtree(root)
        runs.append({"bytes": nbytes, "saveSeconds": saved, "loadSeconds": loaded, "ddBytes": dd_bytes, "ddWriteSeconds": w, "ddReadSeconds": rd})
    # Enough steps that the asynchronous write finishes inside the loop.
    t0 = time.perf_counter()
    for _ in range(3):
        train_step(model, opt, args.width)
    step_seconds = (time.perf_counter() - t0) / 3
    save_seconds = sorted(r["saveSeconds"] for r in runs)[len(runs) // 2]
    steps = max(4, math.ceil(1.5 * save_seconds / step_seconds) + 1)
    # One writer per mode for the whole run, as a rank keeps one: its first save (one-time
    # allocation of the asynchronous snapshot buffers) is a warm-up, timed apart (firstBlocked).
    writers = {m: ckpt.CheckpointWriter(os.path.join(args.dir, f"stall-{m}"), 1, 0, m == "async") for m in ("sync", "async")}
    first = {}
    for m, w in writers.items():
        first[m] = w.save(1, payload(model, opt, 1), lambda *a: None, update_only_tensors(model, opt)) + w.settle()
        w.wait()
        shutil.rmtree(w.root, ignore_errors=True)
    stalls = []
    for r in range(args.stall_repeats):
        row = {}
        for mode in (["none", "sync", "async"] if r % 2 == 0 else ["async", "sync", "none"]):
            row[mode] = stall_loop(model, opt, args.width, steps, writers.get(mode), 10 * (r + 1))
            if mode in writers:
                shutil.rmtree(writers[mode].root, ignore_errors=True)
        stalls.append(row)
    print(json.dumps({"params": n_params, "runs": runs, "stallSteps": steps, "stepSeconds": step_seconds, "stalls": stalls, "firstBlocked": first}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
