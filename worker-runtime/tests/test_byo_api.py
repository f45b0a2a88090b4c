"""The script API (clipfleet_worker.init) against a real gRPC server playing the orchestrator.

In-process tests drive a Context built by api.connect (no process-wide
hooks) and check the messages the server records; subprocess tests run a
script the way the orchestrator does, for what only a whole process shows
(an uncaught exception, SIGTERM, the exit code).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable

import grpc
import pytest

from clipfleet_worker import api
from clipfleet_worker import checkpoint as ckpt
from clipfleet_worker.agent import Agent, WorkerEnv
from clipfleet_worker.errors import ApiUsageError, CheckpointError
from clipfleet_worker.gen.clipfleet.v1 import common_pb2 as cpb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2_grpc as pb_grpc

from gateway_server import serve

TOKEN = "byo-token"
RUNTIME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_RANK = 4


def plan_of(step: int) -> list[int]:
    """The fake orchestrator's plan: recognisable indices per 0-based step."""
    return [100 * step + k for k in range(PER_RANK)]


class FakeOrchestrator(pb_grpc.WorkerGatewayServicer):
    """Registers ranks with a fixed assignment, records every session message and plan request,
    answers GetPlan from plan_of, and sends the commands a test queues."""

    def __init__(self) -> None:
        self.assignment = pb.Assignment()
        self.messages: list[pb.WorkerMessage] = []
        self.plan_requests: list[pb.PlanRequest] = []
        self.cond = threading.Condition()
        self.commands: queue.Queue[pb.Command | None] = queue.Queue()
        self.session_ended = False

    def Register(self, request, context):
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid job token")
        return self.assignment

    def Session(self, request_iterator, context):
        def read() -> None:
            try:
                for msg in request_iterator:
                    with self.cond:
                        self.messages.append(msg)
                        self.cond.notify_all()
            except grpc.RpcError:
                pass
            with self.cond:
                self.session_ended = True
                self.cond.notify_all()
            self.commands.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (cmd := self.commands.get()) is not None:
            yield cmd

    def GetPlan(self, request, context):
        with self.cond:
            self.plan_requests.append(request)
        steps = [
            pb.StepPlan(step=s, epoch=0, sample_in_epoch=s * PER_RANK, shards=[0] * PER_RANK, indices=plan_of(s), sample_ids=plan_of(s))
            for s in range(request.from_step, request.from_step + request.count)
        ]
        return pb.PlanResponse(steps=steps)

    def wait_for(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "timed out waiting for the worker"

    def of(self, kind: str) -> list[Any]:
        with self.cond:
            return [getattr(m, kind) for m in self.messages if m.WhichOneof("body") == kind]


def assignment(tmp_path, **over: Any) -> pb.Assignment:
    cfg = {"task": "command", "checkpoint": {"every_steps": 4, "every_minutes": None}, "train": {"steps": 6, "batch_size": PER_RANK}, "data": {"num_samples": 64}}
    a = pb.Assignment(
        session_id="sess-1", rank=0, world_size=1, local_rank=0, local_world_size=1, master_addr="127.0.0.1", master_port=29500,
        backend="gloo", config_json=json.dumps(cfg), start_step=0, total_steps=6, steps_per_epoch=16, global_batch=PER_RANK,
        per_rank_batch=PER_RANK, checkpoint_root=str(tmp_path / "ckpt"), attempt=1, stage="main", heartbeat_interval_seconds=0.2, fence_seconds=30,
    )
    for k, v in over.items():
        if isinstance(v, pb.CheckpointRef):
            getattr(a, k).CopyFrom(v)
        else:
            setattr(a, k, v)
    return a


@pytest.fixture()
def orchestrator():
    fake = FakeOrchestrator()
    with serve(fake) as address:
        yield fake, address
        fake.commands.put(None)  # ends a session the test left open


def worker_env(address: str) -> WorkerEnv:
    return WorkerEnv(address=address, token=TOKEN, job_id="j-1", stage="main", attempt=1, rank=0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reports_plans_checkpoints_and_finish_reach_the_orchestrator(orchestrator, tmp_path):
    fake, address = orchestrator
    fake.assignment = assignment(tmp_path)
    ctx = api.connect(Agent(worker_env(address)))
    assert (ctx.rank, ctx.world_size, ctx.start_step, ctx.total_steps, ctx.resume_dir, ctx.per_rank_batch) == (0, 1, 0, 6, None, PER_RANK)
    fake.wait_for(lambda: bool(fake.of("hello")))
    assert fake.of("hello")[0].session_id == "sess-1"

    assert ctx.plan(1) == plan_of(0) and ctx.plan(2) == plan_of(1)
    assert [(r.from_step, r.count) for r in fake.plan_requests] == [(0, 6)]  # fetched in one chunk, up to the end
    ctx.report(1, loss=2.5, lr=0.1, acc=float("nan"), tokens=7)
    fake.wait_for(lambda: len(fake.of("step")) == 1)
    rep = fake.of("step")[0]
    assert (rep.step, rep.loss, rep.lr) == (1, 2.5, 0.1)
    assert rep.step_seconds > 0 and rep.samples_per_second > 0
    assert (rep.epoch, rep.sample_in_epoch) == (0, PER_RANK)  # the cursor after step 1
    assert rep.extra["tokens"] == 7 and rep.extra["acc"] != rep.extra["acc"]  # NaN travels; the orchestrator drops it
    assert not ctx.should_checkpoint(1)

    # An on-demand checkpoint: the orchestrator asks for step 2.
    fake.commands.put(pb.Command(checkpoint_at=pb.CheckpointAt(step=2)))
    fake.wait_for(lambda: ctx.agent.commands.checkpoint_at == 2)
    ctx.report(2, loss=float("inf"))
    assert ctx.should_checkpoint(2) and not ctx.should_stop(2)
    with ctx.checkpoint(2) as d:
        d.save("state.pt", {"step": 2, "scale": 1.5})
        os.makedirs(os.path.join(d, "sub"))
        with open(os.path.join(d, "sub", ctx.rank_file("blob.bin")), "wb") as f:
            f.write(b"hello")
    fake.wait_for(lambda: len(fake.of("checkpoint")) == 1)
    written = fake.of("checkpoint")[0]
    step_dir = os.path.join(str(tmp_path / "ckpt"), "step-00000002-a1")
    assert (written.step, written.dir) == (2, step_dir)
    assert (written.cursor.epoch, written.cursor.sample_in_epoch) == (0, 2 * PER_RANK)
    files = {f.path: (f.sha256, f.size) for f in written.files}
    assert sorted(files) == ["state.pt", "sub/blob.rank-00000.bin"]
    for path, (digest, size) in files.items():
        with open(os.path.join(step_dir, path), "rb") as f:
            data = f.read()
        assert (sha(data), len(data)) == (digest, size)
    assert sorted(os.listdir(step_dir)) == ["state.pt", "sub"]  # the rank's staging directory is gone
    assert ckpt.load(os.path.join(step_dir, "state.pt")) == {"step": 2, "scale": 1.5}

    # Served: no checkpoint at 3; the cadence (every 4) and the last step (6) checkpoint.
    ctx.report(3)
    assert not ctx.should_checkpoint(3)
    assert [s for s in range(4, 7) if ctx.should_checkpoint(s)] == [4, 6]
    ctx.finish(6, params_sha256="ab" * 32, acc=0.5)
    fake.wait_for(lambda: fake.session_ended)
    fin = fake.of("finished")
    assert len(fin) == 1 and (fin[0].step, fin[0].final_params_sha256, dict(fin[0].metrics)) == (6, "ab" * 32, {"acc": 0.5})
    assert not fake.of("failure")


def test_a_symlink_or_a_name_another_rank_wrote_is_refused(orchestrator, tmp_path):
    fake, address = orchestrator
    fake.assignment = assignment(tmp_path)
    ctx = api.connect(Agent(worker_env(address)))
    step_dir = os.path.join(str(tmp_path / "ckpt"), "step-00000004-a1")
    with pytest.raises(ApiUsageError, match="symlink"):
        with ctx.checkpoint(4) as d:
            os.symlink("/etc/hostname", os.path.join(d, "model.pt"))
    os.makedirs(step_dir, exist_ok=True)
    with open(os.path.join(step_dir, "model.pt"), "wb") as f:
        f.write(b"rank 1's")
    with pytest.raises(ApiUsageError, match="rank_file"):
        with ctx.checkpoint(4) as d:
            d.save("model.pt", {"w": 1})
    assert not fake.of("checkpoint")
    ctx.close()


def test_resume_files_are_verified_before_use(orchestrator, tmp_path):
    fake, address = orchestrator
    resume_dir = tmp_path / "ckpt" / "step-00000004-a0"
    written = [ckpt.write_atomic(str(resume_dir), name, ckpt.serialize(obj)) for name, obj in [("model.pt", {"w": 2.0}), ("rng.rank-00000.pt", {"seed": 3})]]
    ref = pb.CheckpointRef(dir=str(resume_dir), step=4, files=[cpb.FileDigest(path=f.path, sha256=f.sha256, size=f.size) for f in written])
    fake.assignment = assignment(tmp_path, resume=ref, start_step=4)
    ctx = api.connect(Agent(worker_env(address)))
    assert (ctx.resume_dir, ctx.start_step, ctx.resume_files) == (str(resume_dir), 4, ["model.pt", "rng.rank-00000.pt"])
    assert ctx.load("model.pt") == {"w": 2.0} and ctx.load(ctx.rank_file("rng.pt")) == {"seed": 3}
    assert ctx.resume_path("model.pt") == str(resume_dir / "model.pt")
    (resume_dir / "extra.pt").write_bytes(ckpt.serialize({"not": "in the manifest"}))
    with pytest.raises(CheckpointError, match="not among the files"):
        ctx.load("extra.pt")
    ctx.close()

    (resume_dir / "model.pt").write_bytes(ckpt.serialize({"w": 666.0}))
    agent = Agent(worker_env(address))
    try:
        with pytest.raises(CheckpointError, match="model.pt"):
            api.connect(agent)
    finally:
        agent.close()  # init() would report the error through it first


def run_script(address: str, tmp_path, source: str, **extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("CLIPFLEET_"):
            del env[k]
    env.update(PYTHONPATH=RUNTIME, CLIPFLEET_ADDR=address, CLIPFLEET_JOB_ID="j-1", CLIPFLEET_STAGE="main", CLIPFLEET_ATTEMPT="1",
               CLIPFLEET_RANK="0", CLIPFLEET_TOKEN=TOKEN, **extra)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


FAILING = """
    import clipfleet_worker
    ctx = clipfleet_worker.init()
    for step in range(ctx.start_step + 1, ctx.total_steps + 1):
        ctx.report(step, loss=1.0)
        if step == 3:
            raise ValueError("bad batch at step %d" % step)
"""


def test_an_uncaught_exception_is_reported_with_a_stable_fingerprint(orchestrator, tmp_path):
    fake, address = orchestrator
    fake.assignment = assignment(tmp_path)
    prints = []
    for _ in range(2):
        proc = run_script(address, tmp_path, FAILING)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "ValueError: bad batch at step 3" in err  # the traceback is in the rank's log too
        fake.wait_for(lambda: len(fake.of("failure")) == len(prints) + 1)
        failure = fake.of("failure")[-1]
        assert (failure.kind, failure.message, failure.step) == ("exception", "ValueError: bad batch at step 3", 4)
        assert 'train.py", line 7' in failure.traceback and len(failure.fingerprint) == 16
        prints.append(failure.fingerprint)
    assert prints[0] == prints[1]  # the same bug at the same place: the repeated-user-error rule can see it
    assert not fake.of("finished")


STOPPING = """
    import time
    import clipfleet_worker
    ctx = clipfleet_worker.init()
    step = ctx.start_step
    while True:
        step += 1
        time.sleep(0.01)  # the step's work
        ctx.report(step)
        if ctx.should_checkpoint(step):
            with ctx.checkpoint(step) as d:
                d.save("state.pt", {"step": step})
        if ctx.should_stop(step):
            break
    ctx.finish()
    print("stopped at", step)
"""


def test_sigterm_asks_for_a_stop_and_the_script_checkpoints_then_stops(orchestrator, tmp_path):
    fake, address = orchestrator
    fake.assignment = assignment(tmp_path, total_steps=0)  # no train.steps: the script runs until told to stop
    proc = run_script(address, tmp_path, STOPPING)
    try:
        fake.wait_for(lambda: bool(fake.of("step")))
        proc.send_signal(signal.SIGTERM)
        fake.wait_for(lambda: bool(fake.of("stop_requested")))
        assert fake.of("stop_requested")[0].reason == "SIGTERM on rank 0"
        stop_at = fake.of("step")[-1].step + 3
        fake.commands.put(pb.Command(stop_at=pb.StopAt(step=stop_at, checkpoint=True, reason="SIGTERM on rank 0")))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    # The command may reach the script a step or two late; it stops at the first step it sees it, checkpointed.
    stopped = int(out.split("stopped at ")[1])
    assert stopped >= stop_at
    assert [c.step for c in fake.of("checkpoint")] == [stopped]
    assert not fake.of("finished") and not fake.of("failure")  # a stop is not the end of the run


def test_importing_the_package_stays_cheap():
    code = "import sys, clipfleet_worker; assert callable(clipfleet_worker.init); print(sorted(m for m in ('torch', 'grpc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=RUNTIME), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
