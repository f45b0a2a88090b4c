"""Asynchronous saves with the parameters' and optimizer state's copy deferred past the next forward and backward.

The copy of the tensors only the update changes runs on the writer thread
(CheckpointWriter.save(defer=...)); the training thread settles it right
before the optimizer step (apply_update). The file written must be the one
a synchronous save of the same step writes, however slow the copy.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import torch

from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker.snapshot import update_only_tensors
from clipfleet_worker.tasks.common import apply_update

TRAIN = {"grad_clip": None, "on_nan": "fail"}


def trainer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model with a BatchNorm (its running statistics change in every training forward) and AdamW, one step taken."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    forward_backward(model)
    opt.step()
    return model, opt


def forward_backward(model: torch.nn.Module) -> None:
    model.train()
    model(torch.randn(8, 16)).square().mean().backward()


def payload(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> dict:
    return {
        ckpt.rank_file(0): {"rng": ckpt.rng_state(), "step": step},
        ckpt.MODEL_FILE: model.state_dict(),
        ckpt.TRAINER_FILE: {"optimizer": opt.state_dict(), "step": step},
    }


def fake_ctx(writer: ckpt.CheckpointWriter) -> SimpleNamespace:
    """What apply_update uses of a TaskContext, for one rank on the CPU."""
    return SimpleNamespace(
        writer=writer,
        world_size=1,
        device=torch.device("cpu"),
        fault=SimpleNamespace(before_update=lambda step: None),
        agent=SimpleNamespace(commands=SimpleNamespace(due=lambda step: (False, False, False))),
    )


def written_digests(writer: ckpt.CheckpointWriter, step: int, files: dict, defer=()) -> dict[str, list[ckpt.WrittenFile]]:
    out: dict[str, list[ckpt.WrittenFile]] = {}
    writer.save(step, files, lambda d, fs, s, w: out.__setitem__("files", fs), defer)
    return out


def test_a_deferred_asynchronous_save_writes_the_same_bytes_as_a_synchronous_one(tmp_path):
    model, opt = trainer()
    files = payload(model, opt, 7)
    sync = written_digests(ckpt.CheckpointWriter(str(tmp_path / "sync"), 1, 0, async_save=False), 7, files)
    writer = ckpt.CheckpointWriter(str(tmp_path / "async"), 1, 0, async_save=True)
    for step in (7, 8):  # the second save reuses the first one's buffers
        if step == 8:
            files = payload(model, opt, 8)
            sync = written_digests(ckpt.CheckpointWriter(str(tmp_path / "sync"), 1, 0, async_save=False), 8, files)
        got = written_digests(writer, step, files, update_only_tensors(model, opt))
        # The next step runs while the copy may be in flight: the forward changes the BatchNorm
        # statistics (copied at save()), the update the parameters and moments (after settle()).
        opt.zero_grad(set_to_none=True)
        forward_backward(model)
        writer.settle()
        opt.step()
        writer.wait()
        assert [(f.path, f.sha256, f.size) for f in got["files"]] == [(f.path, f.sha256, f.size) for f in sync["files"]]


def test_the_update_waits_for_a_slow_deferred_copy(tmp_path, monkeypatch):
    """The copy thread holds off until the optimizer steps (or 1 s passes): without apply_update's
    settle() the update would run first and the checkpoint would hold the next step's parameters."""
    model, opt = trainer()
    writer = ckpt.CheckpointWriter(str(tmp_path), 1, 0, async_save=True)
    stepped = threading.Event()
    real_step = opt.step

    def step_and_tell(*args, **kwargs):
        stepped.set()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(opt, "step", step_and_tell)
    real_copy = writer._snapshots.copy_pending

    def slow_copy(pending):
        stepped.wait(timeout=1.0)
        real_copy(pending)

    monkeypatch.setattr(writer._snapshots, "copy_pending", slow_copy)
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moments = [s["exp_avg"].clone() for s in opt.state.values()]
    got = written_digests(writer, 3, payload(model, opt, 3), update_only_tensors(model, opt))
    opt.zero_grad(set_to_none=True)
    forward_backward(model)
    params = [p for p in model.parameters() if p.requires_grad]
    apply_update(fake_ctx(writer), 4, 0.0, 8, params, opt, torch.cuda.amp.GradScaler(enabled=False), TRAIN)
    writer.wait()
    assert stepped.is_set()
    directory = os.path.join(str(tmp_path), ckpt.checkpoint_dir_name(3, 1))
    saved = ckpt.VerifiedCheckpoint.verified(directory, {f.path: (f.sha256, f.size) for f in got["files"]})
    state = saved.load(ckpt.MODEL_FILE)
    assert all(torch.equal(state[k], expected_model[k]) for k in expected_model)
    moments = [s["exp_avg"] for s in saved.load(ckpt.TRAINER_FILE)["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, expected_moments))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected_model.values()))


def test_a_failed_deferred_copy_does_not_hang_the_update_and_is_raised_by_wait(tmp_path, monkeypatch):
    model, opt = trainer()
    writer = ckpt.CheckpointWriter(str(tmp_path), 1, 0, async_save=True)

    def broken(pending):
        raise RuntimeError("copy failed")

    monkeypatch.setattr(writer._snapshots, "copy_pending", broken)
    writer.save(1, payload(model, opt, 1), lambda *a: None, update_only_tensors(model, opt))
    writer.settle()
    try:
        writer.wait()
    except RuntimeError as err:
        assert "copy failed" in str(err)
    else:
        raise AssertionError("wait() did not raise the copy's error")
    assert not os.path.exists(os.path.join(str(tmp_path), ckpt.checkpoint_dir_name(1, 1)))
