"""examples/byo/train_ddp.py under a hand-made torchrun environment (no orchestrator): 2 real
processes over gloo, local checkpoints, and a run killed after a checkpoint that resumes bit-exactly."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from typing import Callable

RUNTIME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(os.path.dirname(RUNTIME), "examples", "byo", "train_ddp.py")
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, **extra: str) -> list[subprocess.Popen]:
    """The example's ranks as torchrun would start them, each logging to workdir/rank-N.log."""
    os.makedirs(workdir, exist_ok=True)
    port = str(free_port())
    procs = []
    for rank in range(WORLD):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFLEET_")}
        env.update(PYTHONPATH=RUNTIME, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                   LOCAL_WORLD_SIZE=str(WORLD), GROUP_RANK="0", ROLE_RANK=str(rank), TORCHELASTIC_RESTART_COUNT="0", OMP_NUM_THREADS="1", **extra)
        log = open(os.path.join(workdir, f"rank-{rank}.log"), "w")
        procs.append(subprocess.Popen([sys.executable, EXAMPLE], cwd=str(workdir), env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def finish(workdir, procs: list[subprocess.Popen]) -> str:
    """Waits for every rank to succeed; rank 0's log."""
    for rank, p in enumerate(procs):
        assert p.wait(timeout=180) == 0, open(os.path.join(workdir, f"rank-{rank}.log")).read()
    return open(os.path.join(workdir, "rank-0.log")).read()


def params_sha(log: str) -> str:
    m = re.search(r"step 40 params sha256 ([0-9a-f]{64})", log)
    assert m, log
    return m.group(1)


def wait_until(pred: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_local_run_killed_after_a_checkpoint_resumes_to_the_same_parameters(tmp_path):
    whole = tmp_path / "whole"
    expected = params_sha(finish(whole, launch(whole)))
    steps = sorted(os.listdir(whole / "clipfleet-checkpoints"))
    assert steps == ["step-00000010-a0", "step-00000020-a0", "step-00000030-a0", "step-00000040-a0"]
    assert sorted(os.listdir(whole / "clipfleet-checkpoints" / "step-00000040-a0")) == [
        "local-manifest.json", "model.pt", "optimizer.pt", "rng.rank-00000.pt", "rng.rank-00001.pt"]

    # Rank 1 blocks when it reports step 25 (rank 0 then waits in the next all-reduce): the run
    # cannot get past step 25, so step 20's checkpoint is the last to complete.
    broken = tmp_path / "broken"
    procs = launch(broken, CLIPFLEET_FAULT="hang@25:rank=1")
    manifest = broken / "clipfleet-checkpoints" / "step-00000020-a0" / "local-manifest.json"
    try:
        wait_until(lambda: manifest.exists() or any(p.poll() is not None for p in procs))
        assert manifest.exists() and all(p.poll() is None for p in procs)
    finally:
        for p in procs:  # kill one, then the rest of the gang, as the orchestrator would
            p.kill()
            p.wait()
    assert not (broken / "clipfleet-checkpoints" / "step-00000030-a0").exists()

    log = finish(broken, launch(broken))
    assert "resuming from" in log and "step-00000020-a0 (step 20)" in log
    assert params_sha(log) == expected
