"""A rank loads only the files of its signed manifest, and only while they match their digests.

The orchestrator sends a checkpoint reference built from a manifest it
signed and verified (the digests of an imported init checkpoint are taken at
submit). These tests swap real torch files under the worker's feet: before
the worker's check, between its check and the load, and add a file the
manifest does not list.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker.errors import CheckpointError
from clipfleet_worker.gen.clipfleet.v1 import common_pb2 as cpb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.tasks.common import load_init_weights, load_resume


def write_checkpoint(directory: str, seed: int) -> pb.CheckpointRef:
    """model.pt and trainer.pt of a small model, as a rank writes them, and the reference to them."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    files = [
        ckpt.write_atomic(directory, ckpt.MODEL_FILE, ckpt.serialize(model.state_dict())),
        ckpt.write_atomic(directory, ckpt.TRAINER_FILE, ckpt.serialize({"step": 5, "lr": 0.1})),
    ]
    ref = pb.CheckpointRef(dir=directory, step=5)
    for f in files:
        ref.files.append(cpb.FileDigest(path=f.path, sha256=f.sha256, size=f.size))
    return ref


def test_verified_files_load_bit_exact(tmp_path):
    ref = write_checkpoint(str(tmp_path / "a"), seed=1)
    torch.manual_seed(1)
    expected = torch.nn.Linear(8, 4).state_dict()
    state = load_init_weights(pb.Assignment(init=ref))
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert load_resume(pb.Assignment(resume=ref)).load(ckpt.TRAINER_FILE) == {"step": 5, "lr": 0.1}


def test_a_file_swapped_after_the_digest_was_taken_is_refused(tmp_path):
    """Another checkpoint's model.pt (same shapes, same size, other weights) in place of the one hashed at submit."""
    ref = write_checkpoint(str(tmp_path / "a"), seed=1)
    other = write_checkpoint(str(tmp_path / "b"), seed=2)
    assert ref.files[0].size == other.files[0].size and ref.files[0].sha256 != other.files[0].sha256
    shutil.copyfile(os.path.join(other.dir, ckpt.MODEL_FILE), os.path.join(ref.dir, ckpt.MODEL_FILE))
    with pytest.raises(CheckpointError, match="sha256 .* does not match the manifest's"):
        load_init_weights(pb.Assignment(init=ref))


def test_a_file_swapped_between_the_check_and_the_load_is_refused(tmp_path):
    ref = write_checkpoint(str(tmp_path / "a"), seed=1)
    other = write_checkpoint(str(tmp_path / "b"), seed=2)
    verified = load_resume(pb.Assignment(resume=ref))
    os.replace(os.path.join(other.dir, ckpt.MODEL_FILE), os.path.join(ref.dir, ckpt.MODEL_FILE))
    with pytest.raises(CheckpointError, match="changed since it was verified"):
        verified.load(ckpt.MODEL_FILE)
    assert verified.load(ckpt.TRAINER_FILE)["step"] == 5


def test_a_file_the_manifest_does_not_list_is_never_loaded(tmp_path):
    """A rank file dropped into the directory later (as if the world had grown) is not read."""
    ref = write_checkpoint(str(tmp_path / "a"), seed=1)
    ckpt.write_atomic(ref.dir, ckpt.rank_file(3), ckpt.serialize({"rng": {}, "step": 5}))
    verified = load_resume(pb.Assignment(resume=ref))
    assert not verified.has(ckpt.rank_file(3))
    with pytest.raises(CheckpointError, match="not among the files of the checkpoint's signed manifest"):
        verified.load(ckpt.rank_file(3))


def test_a_save_streams_through_the_hashing_writer_and_its_digest_is_the_files(tmp_path):
    """save_atomic writes torch.save's bytes straight to the file; the digest and size it reports are the file's."""
    torch.manual_seed(3)
    state = {"w": torch.randn(64, 64), "lr": 0.25, "nested": [torch.arange(5), (1, 2.5)]}
    f = ckpt.save_atomic(str(tmp_path), ckpt.MODEL_FILE, state)
    full = tmp_path / ckpt.MODEL_FILE
    assert (f.size, f.sha256) == (full.stat().st_size, ckpt.sha256_file(str(full)))
    assert f.sha256 == ckpt.write_atomic(str(tmp_path / "b"), ckpt.MODEL_FILE, ckpt.serialize(state)).sha256  # same bytes as before
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    back = ckpt.VerifiedCheckpoint.verified(str(tmp_path), {f.path: (f.sha256, f.size)}).load(f.path)
    assert torch.equal(back["w"], state["w"]) and back["lr"] == 0.25 and torch.equal(back["nested"][0], state["nested"][0]) and back["nested"][1] == (1, 2.5)


def test_a_truncated_or_corrupt_file_fails_typed_before_anything_is_unpickled(tmp_path, monkeypatch):
    ref = write_checkpoint(str(tmp_path / "a"), seed=1)
    model = os.path.join(ref.dir, ckpt.MODEL_FILE)
    data = open(model, "rb").read()
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1))
    with open(model, "wb") as f:
        f.write(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_resume(pb.Assignment(resume=ref))
    with open(model, "wb") as f:
        f.write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(CheckpointError, match="sha256 .* does not match the manifest's"):
        load_resume(pb.Assignment(resume=ref)).load(ckpt.MODEL_FILE)
    assert loads == []


def test_asynchronous_saves_reuse_their_snapshot_buffers_and_write_bit_exact(tmp_path):
    """The second and later asynchronous saves allocate nothing; each writes the state as it was at save()."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    writer = ckpt.CheckpointWriter(str(tmp_path), 1, 0, async_save=True)
    written: dict[int, list] = {}
    expected = {}
    for step in range(1, 4):
        opt.zero_grad()
        model(torch.randn(2, 16)).sum().backward()
        opt.step()
        expected[step] = {k: v.clone() for k, v in model.state_dict().items()}
        payload = {ckpt.MODEL_FILE: model.state_dict(), ckpt.TRAINER_FILE: {"optimizer": opt.state_dict(), "step": step}}
        writer.save(step, payload, lambda d, fs, s, w, step=step: written.__setitem__(step, fs))
        if step == 1:
            allocated = writer._snapshots.allocated
        with torch.no_grad():  # training goes on while the write is in flight
            for p in model.parameters():
                p.add_(1.0)
    writer.wait()
    assert allocated > 0 and writer._snapshots.allocated == allocated
    for step, files in written.items():
        directory = os.path.join(str(tmp_path), ckpt.checkpoint_dir_name(step, 1))
        got = ckpt.VerifiedCheckpoint.verified(directory, {f.path: (f.sha256, f.size) for f in files}).load(ckpt.MODEL_FILE)
        assert all(torch.equal(got[k], expected[step][k]) for k in expected[step])


def test_a_save_that_fails_half_way_leaves_no_temp_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        ckpt.save_atomic(str(tmp_path), ckpt.MODEL_FILE, {"w": torch.zeros(1000), "bad": Unpicklable()})
    assert os.listdir(tmp_path) == []
