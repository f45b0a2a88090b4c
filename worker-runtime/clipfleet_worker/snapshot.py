"""CPU snapshots of a checkpoint's tensors, in buffers reused by every save, taken in two parts.

An asynchronous save must write the state of the step it was asked at,
while training goes on. The tensors that only the optimizer update changes
(the parameters and the optimizer's state, `defer`) need not be copied on
the training thread: the next step's forward and backward only read them,
so their copy runs on the checkpoint thread (torch's copy_ releases the
GIL: on a second core) until the training thread settles it right before
the update (CheckFreq, Mohan et al., FAST'21). Everything else (buffers that
a training forward changes, such as BatchNorm's running statistics, RNG
states, small tensors) is copied at once, and the payload's structure, its
numbers and strings are captured then too.
"""

from __future__ import annotations

from typing import Any

import torch

# (snapshot buffer, live source) pairs whose copy is still to be done.
Pending = list[tuple[torch.Tensor, torch.Tensor]]


class SnapshotBuffers:
    """CPU copies of a payload's tensors in buffers allocated once and reused by every later save.

    A tensor is addressed by its path in the payload (file name, keys,
    indices); its buffer is reused while shape, dtype and layout match (a
    changed one gets a fresh buffer). Pinned memory when CUDA is there, so
    the device->host copy is the only work. Buffers are handed to the
    writer thread; the next snapshot waits for that write (at most one save
    in flight), so a buffer is never overwritten while it is being written.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, torch.Tensor] = {}
        self._pin = torch.cuda.is_available()
        # Deferred device->host copies go on a stream of their own, so they do not queue behind
        # (or hold up) the next step's kernels on the training stream.
        self._stream = torch.cuda.Stream() if self._pin else None
        self.allocated = 0  # buffers allocated so far (tests: none after the first save)

    def copy(self, payload: Any, defer: frozenset[int] = frozenset()) -> tuple[Any, Pending]:
        """The payload with every tensor replaced by its buffer. A tensor whose data_ptr is in
        `defer` is not copied yet: its (buffer, source) pair is returned for copy_pending();
        every other tensor is copied (and, on CUDA, complete) before this returns."""
        pending: Pending = []
        with torch.no_grad():
            out = self._copy(payload, (), defer, pending)
        if self._pin:
            torch.cuda.synchronize()
            if self._stream is not None and any(src.is_cuda for _, src in pending):
                # The deferred copies follow everything queued on the training stream so far
                # (the update that produced this state), whichever thread issues them.
                self._stream.wait_stream(torch.cuda.current_stream())
        return out, pending

    def copy_pending(self, pending: Pending) -> None:
        """The deferred copies, complete when this returns (on any thread)."""
        if self._stream is not None and any(src.is_cuda for _, src in pending):
            # The sources live on (parameters and optimizer state): no record_stream needed.
            with torch.no_grad(), torch.cuda.stream(self._stream):
                for buf, src in pending:
                    buf.copy_(src, non_blocking=src.is_cuda)
            self._stream.synchronize()
            return
        with torch.no_grad():
            for buf, src in pending:
                buf.copy_(src)

    def _copy(self, obj: Any, path: tuple, defer: frozenset[int], pending: Pending) -> Any:
        if isinstance(obj, torch.Tensor):
            src = obj.detach()
            if src.layout != torch.strided:
                return src.to("cpu", copy=True)
            buf = self._bufs.get(path)
            if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
                buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=self._pin and src.is_cuda)
                self._bufs[path] = buf
                self.allocated += 1
            if src.numel() and src.data_ptr() in defer:
                pending.append((buf, src))
            else:
                buf.copy_(src, non_blocking=self._pin and src.is_cuda)
            return buf
        if isinstance(obj, dict):
            return {k: self._copy(v, path + (k,), defer, pending) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._copy(v, path + (i,), defer, pending) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return tuple(self._copy(v, path + (i,), defer, pending) for i, v in enumerate(obj))
        return obj


def update_only_tensors(model: torch.nn.Module, optimizer: Any) -> list[torch.Tensor]:
    """The tensors that only an optimizer update changes: the model's parameters and the
    optimizer's state (moments, step counts). Not the buffers: a training forward changes
    BatchNorm's running statistics, so they are copied when the save is taken."""
    out = list(model.parameters())
    for state in optimizer.state.values():
        out.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return out
