"""Checkpoint files: written atomically and hashed by each rank, verified before loading.

Phase one of the two-phase commit happens here: every rank writes its files
into the step's fresh directory (temp name, fsync, rename, fsync the
directory) and reports their sha256 and sizes. The orchestrator writes the
manifest (phase two) once every rank has reported. A rank loads only the
files of the checkpoint reference it is assigned (the files and digests of
a manifest the orchestrator signed and verified), through VerifiedCheckpoint:
every file is checked before any is loaded, and the bytes handed to
torch.load(weights_only=True), which refuses pickled code, are the very
bytes that were hashed, so a file swapped after the check is refused too. Rank 0 writes the model and trainer state (data-parallel ranks hold the
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
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

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


def write_atomic(directory: str, name: str, data: bytes) -> WrittenFile:
    """Writes `data` as directory/name via a temp file, fsyncs both; returns its digest."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_path(directory)
    return WrittenFile(path=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


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


def _to_cpu(obj: Any) -> Any:
    """A deep copy with every tensor cloned to CPU: safe to write while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes a rank's files for a step, synchronously or on a background thread (async save).

    With async save the state is copied off the training path first (CPU
    clones), so training continues while the files are written; at most one
    save is in flight, a second waits for the first. `on_written` receives
    the directory, the files and the write time, to report to the orchestrator.
    """

    def __init__(self, root: str, attempt: int, rank: int, async_save: bool) -> None:
        self.root = root
        self.attempt = attempt
        self.rank = rank
        self.async_save = async_save
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, payload: dict[str, Any], on_written) -> float:
        """Writes {file name: object}; returns the seconds the caller was stalled."""
        t0 = time.perf_counter()
        self.wait()
        directory = os.path.join(self.root, checkpoint_dir_name(step, self.attempt))
        if self.async_save:
            snapshot = _to_cpu(payload)
            stalled = time.perf_counter() - t0
            self._thread = threading.Thread(target=self._write, args=(directory, snapshot, on_written, stalled), name="clipfleet-ckpt", daemon=True)
            self._thread.start()
            return stalled
        self._write(directory, payload, on_written, None)
        return time.perf_counter() - t0

    def _write(self, directory: str, payload: dict[str, Any], on_written, stalled: float | None) -> None:
        t0 = time.perf_counter()
        try:
            files = [write_atomic(directory, name, serialize(obj)) for name, obj in sorted(payload.items())]
            write_seconds = time.perf_counter() - t0
            on_written(directory, files, write_seconds if stalled is None else stalled, write_seconds)
        except BaseException as err:  # reported by wait() on the training thread
            self._error = err
            if stalled is None:
                raise

    def wait(self) -> None:
        """Blocks until the in-flight save (if any) is written; re-raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
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


def _load_bytes(data: bytes, path: str) -> Any:
    """torch.load with weights_only (no pickled code) of bytes in memory, undoing serialize()'s float encoding."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    def of(cls, ref) -> "VerifiedCheckpoint":
        """From an assignment's CheckpointRef; every file is verified before this returns."""
        return cls.verified(ref.dir, {f.path: (f.sha256, int(f.size)) for f in ref.files})

    @classmethod
    def verified(cls, directory: str, files: dict[str, tuple[str, int]]) -> "VerifiedCheckpoint":
        """From a directory and its manifest's {path: (sha256, size)}; every file is verified before this returns."""
        c = cls(directory, files)
        verify(c.directory, [(path, digest, size) for path, (digest, size) in c.files.items()])
        return c

    def has(self, name: str) -> bool:
        return name in self.files

    def load(self, name: str) -> Any:
        """The object in file `name`, which must be one of the manifest's and still match its digest."""
        return _load_bytes(self.read(name), os.path.join(self.directory, name))

    def read(self, name: str) -> bytes:
        """The bytes of file `name`, which must be one of the manifest's and still match its digest."""
        full = os.path.join(self.directory, name)
        if name not in self.files:
            raise CheckpointError("is not among the files of the checkpoint's signed manifest; not loaded", full)
        digest, size = self.files[name]
        with open(full, "rb") as f:
            data = f.read()
        if len(data) != size:
            raise CheckpointError(f"has {len(data)} bytes, the manifest says {size} (changed since it was verified?)", full)
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise CheckpointError(f"sha256 {got[:12]} does not match the manifest's {digest[:12]} (changed since it was verified?)", full)
        return data
