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
