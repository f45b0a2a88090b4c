"""Benchmark 1's baseline: the worker's own training code, started by hand, with no orchestrator.

Start one process per rank with torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE), as one would
without clipfleet:

    PYTHONPATH=worker-runtime RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
        python3 bench/baseline_train.py --job job.json --out result.json

job.json holds the resolved stage config (what the orchestrator sends as
Assignment.config_json), the shard list with sample counts, and the step
counts. The ranks form a real gloo group and run clipfleet_worker.tasks.
pretrain.run, the same code path as under `clipfleet run`; only the agent is
replaced by a local object: the data plan is computed here (sequential,
unshuffled: the orchestrator's plan with data.shuffle false), step reports
are kept as (step, seconds) and nothing is sent anywhere. Rank 0 writes
its step times and the final parameters' digest to --out and prints them.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import time

import torch

from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker import distributed as D
from clipfleet_worker.agent import Commands
from clipfleet_worker.gen.clipfleet.v1 import common_pb2 as cpb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.tasks import pretrain
from clipfleet_worker.tasks.common import FaultInjection, TaskContext, set_threads


class LocalAgent:
    """What the training loop needs from an agent, with no orchestrator behind it."""

    def __init__(self, shards: list[tuple[str, int]], val: list[tuple[str, int]], global_batch: int, steps_per_epoch: int, rank: int, world_size: int) -> None:
        self.commands = Commands()  # never receives one: no checkpoint or stop requests
        self.lists = {"train": shards, "val": val}
        self.starts = [0]
        for _, n in shards:
            self.starts.append(self.starts[-1] + n)
        self.global_batch, self.steps_per_epoch = global_batch, steps_per_epoch
        self.rank, self.world_size = rank, world_size
        self.steps: list[tuple[int, float, float]] = []  # (step, seconds, data wait seconds)
        self.final_params_sha256 = ""

    def send(self, msg: pb.WorkerMessage) -> None:
        kind = msg.WhichOneof("body")
        if kind == "step":
            self.steps.append((int(msg.step.step), float(msg.step.step_seconds), float(msg.step.data_wait_seconds)))
        elif kind == "finished":
            self.final_params_sha256 = msg.finished.final_params_sha256

    def set_progress(self, step: int, phase: str) -> None:
        pass

    def shards(self, split: str = "train") -> list[tuple[str, int]]:
        return self.lists["val" if split == "val" else "train"]

    def plan(self, from_step: int, count: int, split: str = "train") -> list[pb.StepPlan]:
        """Steps [from_step, from_step + count) of the unshuffled plan: epoch positions in order."""
        per = self.global_batch // self.world_size
        out = []
        for step in range(from_step, from_step + count):
            first = (step % self.steps_per_epoch) * self.global_batch
            ids = list(range(first + self.rank * per, first + (self.rank + 1) * per))
            shards = [bisect.bisect_right(self.starts, i) - 1 for i in ids]
            out.append(
                pb.StepPlan(
                    step=step,
                    epoch=step // self.steps_per_epoch,
                    sample_in_epoch=first,
                    shards=shards,
                    indices=[i - self.starts[s] for i, s in zip(ids, shards)],
                    sample_ids=ids,
                )
            )
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="JSON: config, train_shards, val_shards, total_steps, global_batch, steps_per_epoch, work_dir")
    parser.add_argument("--out", required=True, help="rank 0 writes its step times here (JSON)")
    args = parser.parse_args()
    with open(args.job) as f:
        job = json.load(f)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cfg = job["config"]
    # What worker.main does before the task: threads (CLIPFLEET_THREADS wins), determinism.
    set_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if cfg["train"].get("deterministic", True):
        torch.use_deterministic_algorithms(True, warn_only=True)
    D.init_process_group("gloo", os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world)

    train = [(str(u), int(n)) for u, n in job["train_shards"]]
    gb, spe = int(job["global_batch"]), int(job["steps_per_epoch"])
    a = pb.Assignment(
        session_id="baseline", rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
        master_addr=os.environ["MASTER_ADDR"], master_port=int(os.environ["MASTER_PORT"]), backend="gloo",
        config_json=json.dumps(cfg), config_sha256="0" * 64, start_step=0, total_steps=int(job["total_steps"]),
        steps_per_epoch=spe, global_batch=gb, per_rank_batch=gb // world, checkpoint_root=os.path.join(job["work_dir"], "checkpoints"),
        attempt=1, stage=str(cfg["name"]), run_dir=job["work_dir"], cursor=cpb.DataCursor(epoch=0, sample_in_epoch=0),
    )
    val = [(str(u), int(n)) for u, n in job["val_shards"]]
    agent = LocalAgent(train, val, gb, spe, rank, world)
    ctx = TaskContext(
        agent=agent,  # type: ignore[arg-type]  # duck-typed stand-in for agent.Agent
        assignment=a,
        cfg=cfg,
        rank=rank,
        world_size=world,
        device=D.device_for("gloo", local_rank),
        writer=ckpt.CheckpointWriter(a.checkpoint_root, a.attempt, rank, bool(cfg["checkpoint"].get("async"))),
        fault=FaultInjection("", rank, a.attempt),
    )
    t0 = time.perf_counter()
    pretrain.run(ctx)
    wall = time.perf_counter() - t0
    D.destroy()
    if rank == 0:
        result = {"steps": agent.steps, "finalParamsSha256": agent.final_params_sha256, "wallSeconds": wall}
        with open(args.out, "w") as f:
            json.dump(result, f)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
