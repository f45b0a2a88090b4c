"""The GPU path's decisions (clipfleet_worker.accel) and the attention kernel, on CPU.

What can only run on a GPU (fused AdamW kernels, bf16 autocast, the side
stream, NCCL) is checked by `make gpu-check` (bench/gpu_check.py); here are
the pure decisions it rests on, and the CPU reductions of the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipfleet_worker import accel
from clipfleet_worker.models import attention as A
from clipfleet_worker.models import build_clip, resolve_model_cfg
from clipfleet_worker.models.attention import attention_reference, scaled_dot_product_attention
from clipfleet_worker.optim import build_optimizer

TRAIN = {"lr": 1e-3, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.2}


# --- attention: one kernel everywhere, and the fallback agrees with torch's own ---------------


@pytest.mark.skipif(A._SDPA is None, reason="torch < 2.0 has no F.scaled_dot_product_attention (gpu-check runs this on torch 2)")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_sdpa_and_fallback_agree(causal, mask):
    """Outputs and gradients, in float64 so only the kernels' order of operations differs
    (tests/test_models.py checks the fallback against plain loops and nn.MultiheadAttention)."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 9, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    m = None
    if mask == "bool":
        m = torch.rand(9, 9) > 0.3
        m.fill_diagonal_(True)
    elif mask == "float":
        m = torch.randn(9, 9, dtype=torch.float64)
    fast = scaled_dot_product_attention(q, k, v, m, causal)
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    slow = attention_reference(q, k, v, m, causal)
    grads_slow = torch.autograd.grad(slow.square().sum(), (q, k, v))
    torch.testing.assert_close(fast, slow)
    for gf, gs in zip(grads_fast, grads_slow):
        torch.testing.assert_close(gf, gs)


def test_every_model_family_computes_attention_through_the_one_kernel(monkeypatch):
    """Each attention layer of the image and text towers (ViT, MCi stage 4, text) calls SDPA when torch has it."""
    calls = []

    def counting(q, k, v, attn_mask=None, is_causal=False):
        calls.append(q.shape)
        return attention_reference(q, k, v, attn_mask, is_causal)

    monkeypatch.setattr(A, "_SDPA", counting)
    for image, blocks in {"vit-tiny": 2, "mci-tiny": 1}.items():
        calls.clear()
        model = build_clip(resolve_model_cfg(image, "text-tiny", embed_dim=32), 259).eval()
        with torch.no_grad():
            model.encode_image(torch.randn(2, 3, 32, 32))
            image_calls = len(calls)
            model.encode_text(torch.randint(0, 256, (2, 16)))
        text_calls = len(calls) - image_calls
        assert text_calls == 2, f"{image}: the 2 text blocks each attend once, got {text_calls}"
        assert image_calls == blocks, f"{image}: {image_calls} attention calls, expected one per attention block ({blocks})"


@pytest.mark.parametrize(
    "has,device,deterministic,want",
    [(True, "cuda", False, True), (True, "cuda", True, False), (True, "cpu", True, True), (False, "cpu", False, False), (False, "cuda", False, False)],
)
def test_sdpa_is_used_unless_absent_or_cuda_deterministic(has, device, deterministic, want):
    """SDPA's fused CUDA backwards are non-deterministic: bit-exact restarts take the spelled-out math there."""
    assert A.use_sdpa(has, device, deterministic) is want


# --- fused AdamW ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,device,fused",
    [("1.13.1", "cuda", False), ("1.13.1", "cpu", False), ("2.0.0", "cuda", True), ("2.5.1+cu124", "cuda", True),
     ("2.3.0a0+git1234", "cpu", False), ("2.1.0", "mps", False), ("10.0", "cuda", True)],
)
def test_fused_adamw_is_torch2_on_cuda_only(version, device, fused):
    assert accel.use_fused_adamw(version, device) is fused


def test_torch_version_parsing_refuses_garbage():
    assert accel.torch_major_minor("1.13.1+cpu") == (1, 13)
    with pytest.raises(ValueError):
        accel.torch_major_minor("nightly")


def test_cpu_optimizer_is_not_fused_and_steps():
    model = nn.Linear(4, 2)
    opt = build_optimizer(model, TRAIN, "cpu")
    assert not opt.defaults.get("fused", False)
    model(torch.randn(3, 4)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_a_fused_checkpoint_resumes_unfused_on_cpu():
    """A GPU run's optimizer state (fused=True in its groups) loads and steps on a CPU node."""
    model = nn.Linear(4, 2)
    opt = build_optimizer(model, TRAIN, "cpu")
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        group["fused"] = True  # as torch 2 saves it on CUDA
    opt.load_state_dict(saved)
    assert all(g["fused"] for g in opt.param_groups)
    accel.refit_fused(opt, "cpu")
    assert not any(g["fused"] for g in opt.param_groups)
    opt.step()


# --- precision --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "precision,device,bf16,want",
    [("auto", "cuda", True, torch.bfloat16), ("auto", "cuda", False, None), ("bf16", "cuda", True, torch.bfloat16),
     ("bf16", "cuda", False, None), ("fp16", "cuda", False, torch.float16), ("fp32", "cuda", True, None),
     ("auto", "cpu", True, None), ("bf16", "cpu", True, None), ("fp16", "cpu", True, None)],
)
def test_autocast_dtype(precision, device, bf16, want):
    assert accel.autocast_dtype(precision, device, bf16) is want


def test_autocast_dtype_refuses_an_unknown_precision():
    with pytest.raises(ValueError):
        accel.autocast_dtype("fp8", "cuda", True)


def test_cpu_step_has_no_autocast_and_no_scaler():
    ctx = accel.autocast_for("bf16", torch.device("cpu"))
    with ctx:
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    assert not accel.grad_scaler("fp16", torch.device("cpu")).is_enabled()
    assert accel.uses_grad_scaler("fp16", "cuda") and not accel.uses_grad_scaler("bf16", "cuda")


# --- train.compile ------------------------------------------------------------------------------


def test_compile_decision():
    assert accel.compile_decision(False, "1.13.1", False) == (False, None)
    assert accel.compile_decision(True, "2.2.0", True) == (True, None)
    use, warning = accel.compile_decision(True, "1.13.1", False)
    assert not use and warning is not None
    assert "train.compile ignored" in warning and "1.13.1" in warning and "eager" in warning


@pytest.mark.skipif(hasattr(torch, "compile"), reason="this torch has torch.compile; the fallback is for torch 1.x")
def test_compile_on_torch1_runs_eager_and_says_so():
    model = nn.Linear(3, 3)
    lines = []
    assert accel.maybe_compile(model, True, lines.append) is model
    assert len(lines) == 1 and lines[0].startswith("clipfleet worker: warning: train.compile ignored: torch 1.")
    lines.clear()
    assert accel.maybe_compile(model, False, lines.append) is model and lines == []


# --- one GPU per rank ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "visible,count,local_rank,want",
    [("3", 1, 0, 0), ("4,5", 2, 1, 0), ("GPU-aaaa", 1, 3, 0), (None, 8, 5, 5), ("", 2, 1, 1), (None, 1, 0, 0)],
)
def test_cuda_index(visible, count, local_rank, want):
    assert accel.cuda_index(visible, count, local_rank) == want


def test_cuda_index_refuses_a_rank_without_a_device():
    with pytest.raises(ValueError):
        accel.cuda_index(None, 2, 2)
    with pytest.raises(ValueError):
        accel.cuda_index("0", 0, 0)


def test_deterministic_setup_sets_cublas_workspace_unless_set():
    was = torch.are_deterministic_algorithms_enabled()
    try:
        env: dict[str, str] = {}
        accel.deterministic_setup(True, env)
        assert env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} and torch.are_deterministic_algorithms_enabled()
        env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
        accel.deterministic_setup(True, env)
        assert env["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        env = {}
        accel.deterministic_setup(False, env)
        assert env == {}
    finally:
        torch.use_deterministic_algorithms(was)


# --- host-to-device copies --------------------------------------------------------------------


@dataclass
class _Batch:
    step: int
    images: torch.Tensor
    valid: torch.Tensor
    tokens_b: torch.Tensor | None = None


def test_device_feeder_on_cpu_is_a_lazy_pass_through():
    """On CPU: the same tensors (no copy, no pinning), one batch taken from the loader per step, not ahead."""
    taken = []
    made = [_Batch(i, torch.randn(2, 3), torch.tensor([True, False])) for i in range(3)]

    def loader():
        for b in made:
            taken.append(b.step)
            yield b

    feeder = accel.DeviceFeeder(loader(), torch.device("cpu"))
    assert taken == []
    got = []
    for b in feeder:
        assert taken[-1] == b.step, "a stop at this step must not have pulled the next batch"
        got.append(b)
    assert [b.step for b in got] == [0, 1, 2]
    for b, orig_images in zip(got, [m.images for m in made]):
        assert b.images.data_ptr() == orig_images.data_ptr() and not b.images.is_pinned()
        assert b.tokens_b is None


def test_device_feeder_empty_loader():
    assert list(accel.DeviceFeeder(iter([]), torch.device("cpu"))) == []


def test_cuda_memory_line_is_cuda_only():
    assert accel.cuda_memory_line(torch.device("cpu")) is None


# --- the training step under autocast (bf16 on CPU: the dtype paths a GPU step takes) ------------


def test_pretrain_step_under_bf16_autocast_tracks_fp32():
    """The GPU step's dtype mix (bf16 matmuls, fp32 softmax and loss), run on CPU: whole slice and
    micro-batches against cached features, loss and gradients close to fp32's."""
    from types import SimpleNamespace

    from clipfleet_worker.lifecycle import FaultInjection
    from clipfleet_worker.losses import ClipLoss
    from clipfleet_worker.tasks import pretrain

    torch.manual_seed(0)
    model = build_clip(resolve_model_cfg("vit-tiny", "text-tiny", embed_dim=32), 259)
    images, tokens = torch.randn(8, 3, 32, 32), torch.randint(0, 256, (8, 77))
    valid = torch.ones(8, dtype=torch.bool)
    ctx = SimpleNamespace(fault=FaultInjection("", 0, 1))
    scaler = accel.grad_scaler("bf16", torch.device("cpu"))

    def step(micro: int, bf16: bool) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        amp = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16)
        with amp:
            loss = pretrain._forward_backward(model, model, ClipLoss(0, 1), images, tokens, None, valid, micro, scaler, ctx, 1)
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return float(loss), grads

    for micro in (8, 4):
        loss32, g32 = step(micro, False)
        loss16, g16 = step(micro, True)
        assert abs(loss16 - loss32) < 0.02 * abs(loss32), (micro, loss16, loss32)
        assert torch.isfinite(g16).all()
        assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.98, micro


@pytest.mark.parametrize(
    "precision,device,bf16,want",
    [("auto", "cuda", True, "bf16 autocast"), ("auto", "cuda", False, "fp32"), ("fp16", "cuda", True, "fp16 autocast with GradScaler"),
     ("bf16", "cpu", True, "fp32")],
)
def test_precision_label(precision, device, bf16, want):
    """The words `make gpu-check` looks for in a GPU rank's path line."""
    assert accel.precision_label(precision, device, bf16) == want


def test_path_line_names_the_cpu_path():
    line = accel.path_line(torch.device("cpu"), {"precision": "bf16", "compile": True}, sdpa=False)
    assert line.startswith("clipfleet worker: path: device cpu, fp32, attention math, AdamW for-each, compile ")
    assert line.endswith(f"torch {torch.__version__}")
    assert ("compile on" in line) == hasattr(torch, "compile")
    assert A.sdpa_in_use("cpu") is (A._SDPA is not None)
