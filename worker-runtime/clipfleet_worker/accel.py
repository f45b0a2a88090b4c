"""The GPU path's decisions, kept as pure functions so they are tested on CPU.

torch 1.13 (Debian's, on our CPU nodes) and torch 2.x (the GPU nodes) both
run the worker; what differs is decided here, from the torch version and the
device, never by trying and catching:

- fused AdamW: torch >= 2.0 on CUDA (one kernel for the whole update);
- autocast dtype from `train.precision` (bf16 only where the GPU has it);
- `train.compile`: torch.compile on torch >= 2.0, else eager with a warning;
- which CUDA device a rank uses (the launcher narrows CUDA_VISIBLE_DEVICES);
- deterministic kernels (cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first call);
- host-to-device copies: pinned memory and the next batch's copy on a side
  stream, overlapped with the current step's compute (DeviceFeeder).
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch

# cuBLAS's deterministic workspace setting (torch docs, "Reproducibility").
CUBLAS_DETERMINISTIC = ":4096:8"


def torch_major_minor(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string such as "1.13.1", "2.3.0+cu121" or "2.5.0a0"."""
    m = re.match(r"^(\d+)\.(\d+)", version)
    if m is None:
        raise ValueError(f"not a torch version: {version!r}")
    return int(m.group(1)), int(m.group(2))


def use_fused_adamw(torch_version: str, device_type: str) -> bool:
    """Whether AdamW runs fused: torch >= 2.0 (where `fused=True` exists) and a CUDA device (its only kernel)."""
    return device_type == "cuda" and torch_major_minor(torch_version) >= (2, 0)


def autocast_dtype(precision: str, device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on a device; None: fp32, no autocast.

    `precision` is a GPU setting: CPU ranks train in fp32 whatever the spec
    says, so a spec gives the same parameters on every CPU node (and in the
    CPU tests) whichever precision its GPU runs use.
    `auto` is bf16 where the GPU supports it (Ampere and later), else fp32;
    `bf16` on a GPU without it is fp32 too, rather than emulated.
    """
    if device_type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision in ("auto", "bf16"):
        return torch.bfloat16 if bf16_supported else None
    raise ValueError(f"unknown precision {precision!r}")


def autocast_for(precision: str, device: torch.device) -> ContextManager[Any]:
    """The autocast context of a training or evaluation step (see autocast_dtype)."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = autocast_dtype(precision, device.type, bf16)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def uses_grad_scaler(precision: str, device_type: str) -> bool:
    """fp16 on a GPU needs loss scaling (bf16 has fp32's range and does not)."""
    return device_type == "cuda" and precision == "fp16"


def grad_scaler(precision: str, device: torch.device) -> Any:
    """A GradScaler, enabled only for fp16 on a GPU (torch.amp's on torch >= 2.3, torch.cuda.amp's before)."""
    enabled = uses_grad_scaler(precision, device.type)
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def compile_decision(enabled: bool, torch_version: str, has_compile: bool) -> tuple[bool, str | None]:
    """(compile or not, a warning) for `train.compile`.

    torch < 2.0 has no torch.compile: the stage runs eager, with a warning in
    the rank's log, rather than failing a spec that is correct on the GPU nodes.
    """
    if not enabled:
        return False, None
    if torch_major_minor(torch_version) < (2, 0) or not has_compile:
        return False, f"train.compile ignored: torch {torch_version} has no torch.compile (needs 2.0 or later); running eager"
    return True, None


def maybe_compile(module: torch.nn.Module, enabled: bool, log: Callable[[str], None] = print) -> Callable[..., Any]:
    """torch.compile(module) when `train.compile` is on and torch has it, else the module itself.

    Only the forward call goes through the compiled wrapper: parameters,
    state dicts (no `_orig_mod.` prefix in checkpoints) and the other methods
    stay the module's own, so checkpoints are the same either way.
    """
    use, warning = compile_decision(enabled, torch.__version__, hasattr(torch, "compile"))
    if warning is not None:
        log(f"clipfleet worker: warning: {warning}")
    if not use:
        return module
    log("clipfleet worker: train.compile: compiling the model's forward with torch.compile")
    return torch.compile(module)  # type: ignore[attr-defined]


def cuda_index(visible_devices: str | None, device_count: int, local_rank: int) -> int:
    """Index of a rank's CUDA device among those it can see.

    The orchestrator's launcher sets CUDA_VISIBLE_DEVICES to the rank's own
    GPUs (`cluster.gpus_per_worker` of them), so its device is cuda:0. Without
    that narrowing (plain torchrun, every GPU visible) rank LOCAL_RANK takes
    device LOCAL_RANK, as torchrun scripts do.
    """
    if device_count < 1:
        raise ValueError("no CUDA device visible")
    if visible_devices is not None and visible_devices.strip() != "":
        return 0
    if local_rank >= device_count:
        raise ValueError(f"LOCAL_RANK {local_rank} but only {device_count} CUDA devices visible")
    return local_rank


def deterministic_setup(enabled: bool, environ: dict[str, str] | None = None) -> None:
    """`train.deterministic`: deterministic kernels, and cuBLAS's workspace setting they need on GPU.

    CUBLAS_WORKSPACE_CONFIG must be in the environment before cuBLAS's first
    call; a value the user set is kept.
    """
    if not enabled:
        return
    env = os.environ if environ is None else environ
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_adamw(groups: list[dict[str, Any]], device_type: str, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused where use_fused_adamw says so (the same update up to float rounding, in one kernel), else torch's default."""
    if use_fused_adamw(torch.__version__, device_type):
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def refit_fused(optimizer: torch.optim.Optimizer, device_type: str) -> None:
    """After loading an optimizer state: this node's fused choice replaces the saved one.

    load_state_dict keeps the saving rank's param-group options, `fused` among
    them, so a checkpoint from a fused GPU run would ask for the fused kernel
    on a CPU node (an error before torch 2.4) and a CPU checkpoint would turn
    it off on a GPU node.
    """
    fused = use_fused_adamw(torch.__version__, device_type)
    for group in optimizer.param_groups:
        if "fused" in group:
            group["fused"] = fused


def _tensor_fields(batch: Any) -> list[str]:
    return [k for k, v in vars(batch).items() if isinstance(v, torch.Tensor)]


class DeviceFeeder:
    """Yields batches whose tensors are on `device`, the next one's copy overlapped with this step.

    On CUDA each batch's tensors are pinned (page-locked, so the copy is a DMA
    the GPU runs asynchronously) and copied with non_blocking=True on a side
    stream while the caller computes on the current one: batch s+1 is taken
    from the loader and its copy issued when batch s is handed out. The
    caller's stream waits for that copy before using it, and the tensors are
    recorded on the caller's stream so their memory is not reused early. On
    CPU it is a plain pass-through, one batch at a time (`.to(cpu)` of a CPU
    tensor is the tensor itself). Batches are any object with tensor
    attributes (loader.Batch); other attributes are left as they are.
    """

    def __init__(self, batches: Iterable[Any], device: torch.device) -> None:
        self._it = iter(batches)
        self.device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next: Any = None
        self._done = False
        if self._stream is not None:
            self._preload()

    def _preload(self) -> None:
        assert self._stream is not None
        try:
            batch = next(self._it)
        except StopIteration:
            self._next, self._done = None, True
            return
        with torch.cuda.stream(self._stream):
            for name in _tensor_fields(batch):
                t = getattr(batch, name)
                host = t if t.is_pinned() else t.pin_memory()  # the loader stacks images pinned already
                setattr(batch, name, host.to(self.device, non_blocking=True))
        self._next = batch

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._stream is None:
            batch = next(self._it)
            for name in _tensor_fields(batch):
                setattr(batch, name, getattr(batch, name).to(self.device))
            return batch
        if self._done:
            raise StopIteration
        batch = self._next
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        for name in _tensor_fields(batch):
            getattr(batch, name).record_stream(current)
        self._preload()
        return batch


def precision_label(precision: str, device_type: str, bf16_supported: bool) -> str:
    """What `train.precision` becomes on a device, in words: "fp32", "bf16 autocast", "fp16 autocast with GradScaler"."""
    dtype = autocast_dtype(precision, device_type, bf16_supported)
    if dtype is None:
        return "fp32"
    label = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] + " autocast"
    return label + " with GradScaler" if uses_grad_scaler(precision, device_type) else label


def path_line(device: torch.device, train: dict[str, Any], sdpa: bool) -> str:
    """One log line naming the path a rank takes (`make gpu-check` reads it): device, precision,
    attention kernel (`sdpa`: whether models/attention.py will call SDPA), AdamW, compile."""
    where = str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = precision_label(str(train.get("precision", "auto")), device.type, bf16)
    adamw = "fused" if use_fused_adamw(torch.__version__, device.type) else "for-each"
    use, _ = compile_decision(bool(train.get("compile")), torch.__version__, hasattr(torch, "compile"))
    return (f"clipfleet worker: path: device {where}, {precision}, attention {'sdpa' if sdpa else 'math'}, "
            f"AdamW {adamw}, compile {'on' if use else 'off'}, torch {torch.__version__}")


def cuda_memory_line(device: torch.device) -> str | None:
    """A log line with the rank's peak GPU memory (read by `make gpu-check`); None on CPU."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device)
    return f"clipfleet worker: cuda peak memory allocated {peak} bytes ({peak / 2**30:.2f} GiB) on {torch.cuda.get_device_name(device)}"
