"""The torch.distributed process group of an attempt, from the orchestrator's assignment.

The orchestrator hands every rank the same rendezvous (rank 0's node address
and a port free there); ranks form a gloo group on CPU and NCCL on GPU.
Gradients are averaged with one coalesced all-reduce per step, in a fixed
order, so that a run is bit-exact across restarts at the same world size.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Callable

import torch
import torch.distributed as dist

from .accel import cuda_index


def init_process_group(backend: str, master_addr: str, master_port: int, rank: int, world_size: int, timeout_s: float = 1800.0) -> None:
    """Joins the group; also sets the torchrun variables for code that reads them."""
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    if rank != 0:
        wait_for_store(master_addr, master_port, timeout_s)
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{_bracket(master_addr)}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def wait_for_store(host: str, port: int, timeout_s: float, poll_s: float = 0.005) -> float:
    """Waits until rank 0's TCPStore accepts connections; returns the seconds waited.

    torch 1.13's store client sleeps a fixed 1 s after a refused connection, so a
    rank reaching the store before rank 0 listens lost up to a second per restart
    (bench/recovery.ts). Probing with a plain connect every few milliseconds
    means the client's own connect succeeds at once; torch 2.x is unaffected (its
    store server drops a connection that closes without a request).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
                return time.monotonic() - started
        except OSError:
            if time.monotonic() >= deadline:
                # Let torch's own connect report the failure with its usual message.
                return time.monotonic() - started
            time.sleep(poll_s)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def device_for(backend: str, local_rank: int) -> torch.device:
    """The rank's CUDA device for NCCL (selected as the current device), else CPU."""
    device = rank_device(backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def rank_device(backend: str, local_rank: int) -> torch.device:
    """The device a rank trains on, without selecting it (a user's script selects its own).

    One GPU per rank: cuda:0 when the launcher narrowed CUDA_VISIBLE_DEVICES to the rank's
    GPUs (what clipfleet's launchers do), cuda:LOCAL_RANK when every GPU is visible (accel.cuda_index).
    """
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", cuda_index(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(), local_rank))
    return torch.device("cpu")


def cuda_stats(device: torch.device) -> Callable[[], tuple[float, int]]:
    """Heartbeat hook: (utilisation 0-1, bytes allocated) of the rank's GPU; utilisation needs pynvml, else 0."""

    def stats() -> tuple[float, int]:
        try:
            util = float(torch.cuda.utilization(device)) / 100.0
        except Exception:  # pynvml missing or NVML unavailable: memory is still worth reporting
            util = 0.0
        return util, int(torch.cuda.memory_allocated(device))

    return stats


def world() -> tuple[int, int]:
    """(rank, world size), (0, 1) without a group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params: list[torch.nn.Parameter], world_size: int, bucket_bytes: int = 32 << 20) -> None:
    """All-reduce and average the gradients of `params`, coalesced into buckets in parameter order.

    A fixed bucketing and order gives the same floating-point sums on every
    run, which bit-exact restarts rely on. Parameters without a gradient are
    given zeros so every rank reduces the same layout.
    """
    if world_size == 1:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes:
            _reduce_bucket(bucket, world_size)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, world_size)


def _reduce_bucket(bucket: list[torch.Tensor], world_size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in bucket])
    dist.all_reduce(flat)
    flat.div_(world_size)
    offset = 0
    for g in bucket:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Makes every rank start from rank 0's weights (and buffers)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums a few scalars over ranks (float64), in one collective."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
