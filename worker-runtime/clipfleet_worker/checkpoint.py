"""Checkpoint files: written atomically and hashed by each rank, verified before loading.

Phase one of the two-phase commit happens here: every rank writes its files
into the step's fresh directory (temp name, fsync, rename, fsync the
directory) and reports their sha256 and sizes. The orchestrator writes the
manifest (phase two) once every rank has reported. A rank loads only the
files of the checkpoint reference it is assigned (the files and digests of
a manifest the orchestrator signed and verified), through VerifiedCheckpoint:
every file's presence and size are checked before any is loaded, and each
file is read once, into one buffer, hashed there and checked against its
digest before anything in it is unpickled; the bytes handed to
torch.load(weights_only=True), which refuses pickled code, are the very
bytes that were hashed, so a file swapped after the check is refused too.
Saving streams torch.save through a hashing writer straight into the temp
file (no in-memory copy of the serialized bytes). Rank 0 writes the model and trainer state (data-parallel ranks hold the
same weights); every rank writes its own RNG states.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from .errors import CheckpointError
from .snapshot import Pending, SnapshotBuffers

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def checkpoint_dir_name(step: int, attempt: int) -> str:
    """Must match orchestrator/src/checkpoints/catalogue.ts checkpointDirName."""
    return f"step-{step:08d}-a{attempt}"


def cursor_after(epoch: int, sample_in_epoch: int, global_batch: int, steps_per_epoch: int) -> tuple[int, int]:
    """Data cursor after a step that started at (epoch, sample_in_epoch): the next step's first sample
    (the epoch rolls over at its end). A checkpoint records it; the orchestrator resumes the plan there."""
    nxt = sample_in_epoch + global_batch
    if steps_per_epoch and nxt >= steps_per_epoch * global_batch:
        return epoch + 1, 0
    return epoch, nxt


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the checkpoint directory
    sha256: str
    size: int


def fsync_path(path: str) -> None:
    """Makes a file's bytes, or a directory's entries (a rename into it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A file-like sink for torch.save: every write goes straight to the file and into the sha256."""

    def __init__(self, f) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        mv = memoryview(data)
        self._h.update(mv)
        self.size += mv.nbytes
        return self._f.write(mv)

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _commit_atomic(directory: str, name: str, fill) -> WrittenFile:
    """Writes directory/name via a temp file (fill(sink) writes the bytes), fsyncs the file and the
    directory after the rename; the digest and size are of the bytes as they went out."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb", buffering=1 << 20) as f:
            sink = _HashingWriter(f)
            fill(sink)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # A save that failed half way (torch.save raised, disk full) leaves no temp file behind.
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    os.replace(tmp, final)
    fsync_path(directory)
    return WrittenFile(path=name, sha256=sink.hexdigest(), size=sink.size)


def write_atomic(directory: str, name: str, data: bytes) -> WrittenFile:
    """Writes `data` as directory/name via a temp file, fsyncs both; returns its digest."""
    return _commit_atomic(directory, name, lambda sink: sink.write(data))


def save_atomic(directory: str, name: str, obj: Any) -> WrittenFile:
    """torch.save of `obj` straight into the temp file through a hashing writer (no in-memory copy
    of the serialized bytes; the sha256 computed as the bytes go out), then fsync and rename."""
    return _commit_atomic(directory, name, lambda sink: torch.save(_encode(obj), sink))


# torch 1.13's weights_only unpickler has no opcode for Python floats (torch 2 has), and
# optimizer and RNG states hold floats; they travel as tagged 0-d float64 tensors instead.
_FLOAT_TAG = "__clipfleet_float__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, float):
        return {_FLOAT_TAG: torch.tensor(obj, dtype=torch.float64)}
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_encode(v) for v in obj)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and _FLOAT_TAG in obj:
            return float(obj[_FLOAT_TAG].item())
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v) for v in obj)
    return obj


def serialize(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(_encode(obj), buf)
    return buf.getvalue()


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in a form weights_only loading accepts (tensors, lists, numbers)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": py[0],
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": py[2] if py[2] is not None else float("nan"),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    gauss = state["python_gauss"]
    random.setstate((int(state["python_version"]), tuple(int(x) for x in state["python_state"].tolist()), None if gauss != gauss else float(gauss)))
    np.random.set_state(
        ("MT19937", state["numpy_key"].numpy().astype(np.uint32), int(state["numpy_pos"]), int(state["numpy_has_gauss"]), float(state["numpy_gauss"]))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointWriter:
    """Writes a rank's files for a step, synchronously or on a background thread (async save).

    With async save the state is copied off the training path first (into
    CPU snapshot buffers allocated once and reused, SnapshotBuffers) and
    training continues while the files are written; at most one save is in
    flight, a second waits for the first. The tensors passed as `defer`
    (parameters and optimizer state: only the update changes them) are
    copied on the writer thread while the next step's forward and backward
    run; the training thread must call settle() before its update. The
    stall is save()'s blocking time plus settle()'s. `on_written` receives
    the directory, the files, the stall and the write time, to report to the orchestrator.
    """

    def __init__(self, root: str, attempt: int, rank: int, async_save: bool) -> None:
        self.root = root
        self.attempt = attempt
        self.rank = rank
        self.async_save = async_save
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._snapshots = SnapshotBuffers()
        # The in-flight save's deferred copy: set once complete; when it ended, and when the
        # training thread first waited for it (settle()), which together give the stall.
        self._copied: threading.Event | None = None
        self._copy_end = 0.0
        self._settle_start: float | None = None

    def save(self, step: int, payload: dict[str, Any], on_written, defer: Iterable[torch.Tensor] = ()) -> float:
        """Writes {file name: object}; returns the seconds the caller was stalled (the deferred
        copy's wait, if any, is settle()'s)."""
        t0 = time.perf_counter()
        self.wait()
        directory = os.path.join(self.root, checkpoint_dir_name(step, self.attempt))
        if self.async_save:
            ptrs = frozenset(t.data_ptr() for t in defer if t.numel())
            snapshot, pending = self._snapshots.copy(payload, ptrs)
            stalled = time.perf_counter() - t0
            self._copied, self._settle_start = threading.Event(), None
            self._thread = threading.Thread(target=self._copy_and_write, args=(directory, snapshot, pending, self._copied, on_written, stalled),
                                            name="clipfleet-ckpt", daemon=True)
            self._thread.start()
            return stalled
        self._write(directory, payload, on_written, None)
        return time.perf_counter() - t0

    def settle(self) -> float:
        """Blocks until the in-flight save's deferred copy is complete; returns the seconds blocked.
        Call it before anything changes a deferred tensor (the optimizer step)."""
        copied = self._copied
        if copied is None or copied.is_set():
            return 0.0
        t0 = time.perf_counter()
        if self._settle_start is None:
            self._settle_start = t0
        copied.wait()
        return time.perf_counter() - t0

    def _copy_and_write(self, directory: str, snapshot: dict[str, Any], pending: Pending, copied: threading.Event, on_written, stalled: float) -> None:
        try:
            self._snapshots.copy_pending(pending)
        except BaseException as err:  # reported by wait(); settle() must not hang on it
            self._error = err
            return
        finally:
            self._copy_end = time.perf_counter()
            copied.set()
        self._write(directory, snapshot, on_written, stalled)

    def _settled_seconds(self) -> float:
        """How long settle() blocked for the in-flight copy: from its first call to the copy's end
        (0 when it was called after the end, or not yet: then it will not block)."""
        start = self._settle_start
        return 0.0 if start is None else max(0.0, self._copy_end - start)

    def _write(self, directory: str, payload: dict[str, Any], on_written, stalled: float | None) -> None:
        t0 = time.perf_counter()
        try:
            files = [save_atomic(directory, name, obj) for name, obj in sorted(payload.items())]
            write_seconds = time.perf_counter() - t0
            on_written(directory, files, write_seconds if stalled is None else stalled + self._settled_seconds(), write_seconds)
        except BaseException as err:  # reported by wait() on the training thread
            self._error = err
            if stalled is None:
                raise

    def wait(self) -> None:
        """Blocks until the in-flight save (if any) is written; re-raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._copied = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(directory: str, files: list[tuple[str, str, int]]) -> None:
    """Checks every (path, sha256, size) before anything is loaded; raises CheckpointError naming the file."""
    for path, digest, size in files:
        full = os.path.join(directory, path)
        if not os.path.exists(full):
            raise CheckpointError("missing", full)
        actual = os.path.getsize(full)
        if actual != size:
            raise CheckpointError(f"has {actual} bytes, the manifest says {size} (truncated?)", full)
        got = sha256_file(full)
        if got != digest:
            raise CheckpointError(f"sha256 {got[:12]} does not match the manifest's {digest[:12]}", full)


def load(path: str) -> Any:
    """torch.load with weights_only of a file this process wrote itself (tests, tools).

    Tasks never call it on a checkpoint they are assigned: they load through
    VerifiedCheckpoint, which reads only the manifest's files and checks them.
    """
    with open(path, "rb") as f:
        return _load_bytes(f.read(), path)


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without BytesIO's copy of a bytearray."""

    def __init__(self, data) -> None:
        self._mv = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), len(self._mv) - self._pos)
        if n <= 0:
            return 0
        memoryview(b).cast("B")[:n] = self._mv[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mv)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


_READ_CHUNK = 8 << 20


def read_verified(full: str, digest: str, size: int, changed: str = "") -> bytearray:
    """The file's bytes, read once into one buffer and hashed there as they arrive; raises
    CheckpointError (nothing unpickled yet) when the size or the sha256 is not the manifest's."""
    try:
        f = open(full, "rb", buffering=0)
    except FileNotFoundError:
        raise CheckpointError("missing", full) from None
    with f:
        actual = os.fstat(f.fileno()).st_size
        if actual != size:
            raise CheckpointError(f"has {actual} bytes, the manifest says {size} (truncated?{changed})", full)
        try:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        buf = bytearray(size)
        mv = memoryview(buf)
        h = hashlib.sha256()
        pos = 0
        while pos < size:
            n = f.readinto(mv[pos : pos + _READ_CHUNK])
            if not n:
                break
            h.update(mv[pos : pos + n])
            pos += n
        if pos != size or f.read(1):
            raise CheckpointError(f"changed size while it was read (the manifest says {size} bytes){changed}", full)
    got = h.hexdigest()
    if got != digest:
        raise CheckpointError(f"sha256 {got[:12]} does not match the manifest's {digest[:12]}{changed}", full)
    return buf


def _load_bytes(data, path: str) -> Any:
    """torch.load with weights_only (no pickled code) of bytes in memory, undoing serialize()'s float encoding."""
    try:
        obj = torch.load(_MemoryFile(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot be loaded: {err}", path) from err
    return _decode(obj)


class VerifiedCheckpoint:
    """A committed checkpoint as a rank may read it: its directory and the files of its signed manifest.

    `files` maps a path (relative to `directory`) to its (sha256, size), as
    the orchestrator sent them from the manifest it verified. Nothing else in
    the directory is ever opened (a file dropped there later is not loaded),
    and each load checks the bytes it hands to torch against the digest.
    """

    def __init__(self, directory: str, files: dict[str, tuple[str, int]]) -> None:
        self.directory = directory
        self.files = dict(files)

    @classmethod
    def of(cls, ref, eager: bool = False) -> "VerifiedCheckpoint":
        """From an assignment's CheckpointRef (see verified())."""
        return cls.verified(ref.dir, {f.path: (f.sha256, int(f.size)) for f in ref.files}, eager)

    @classmethod
    def verified(cls, directory: str, files: dict[str, tuple[str, int]], eager: bool = False) -> "VerifiedCheckpoint":
        """From a directory and its manifest's {path: (sha256, size)}; every file's presence and size
        are checked before this returns (a missing or truncated file fails here, before any load);
        each file's digest is checked when it is read, before it is unpickled (read()), so a load
        reads each file once. eager: every digest checked now as well (the script API, whose
        scripts may open resume files by path), at the cost of a second read at load."""
        c = cls(directory, files)
        if eager:
            verify(c.directory, [(path, digest, size) for path, (digest, size) in c.files.items()])
            return c
        for path, (_, size) in c.files.items():
            full = os.path.join(c.directory, path)
            if not os.path.exists(full):
                raise CheckpointError("missing", full)
            actual = os.path.getsize(full)
            if actual != size:
                raise CheckpointError(f"has {actual} bytes, the manifest says {size} (truncated?)", full)
        return c

    def has(self, name: str) -> bool:
        return name in self.files

    def load(self, name: str) -> Any:
        """The object in file `name`, which must be one of the manifest's and still match its digest."""
        return _load_bytes(self.read(name), os.path.join(self.directory, name))

    def read(self, name: str) -> bytearray:
        """The bytes of file `name`, which must be one of the manifest's: read once, hashed in the
        buffer they were read into, and returned only if they match its digest."""
        full = os.path.join(self.directory, name)
        if name not in self.files:
            raise CheckpointError("is not among the files of the checkpoint's signed manifest; not loaded", full)
        digest, size = self.files[name]
        return read_verified(full, digest, size, " (changed since it was verified?)")
