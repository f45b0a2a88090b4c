"""The agent's control-plane economies: heartbeats skipped while reports flow, queued step reports
coalesced, the shard lists paged by reference (GetShards) and kept per node, checked by their id."""

from __future__ import annotations

import json
import os
import threading

import grpc
import pytest

from clipfleet_worker import agent as A
from clipfleet_worker.agent import Agent, SessionLost, WorkerEnv
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2_grpc as pb_grpc

from gateway_server import serve

TOKEN = "tok"


# ---------------------------------------------------------------- pure parts


def test_a_heartbeat_is_due_only_after_an_interval_with_nothing_sent():
    # A fake clock: seconds since the last message that went up (a step report or a heartbeat).
    assert not A.heartbeat_due(10.0, 9.5, 1.0)
    assert A.heartbeat_due(10.0, 9.0, 1.0)
    assert A.heartbeat_due(12.0, 9.0, 1.0)
    # Step reports every 0.5 s for 10 s: with a 1 s interval no heartbeat is ever due.
    last = 0.0
    beats = 0
    for tick in range(1, 201):
        now = tick * 0.05
        if tick % 10 == 0:
            last = now  # a step report went up
        if A.heartbeat_due(now, last, 1.0):
            beats += 1
            last = now
    assert beats == 0
    # Reports stop at t=10: heartbeats resume, one per interval.
    for tick in range(201, 401):
        now = tick * 0.05
        if A.heartbeat_due(now, last, 1.0):
            beats += 1
            last = now
    assert beats == 10


def step(n: int) -> pb.WorkerMessage:
    return pb.WorkerMessage(step=pb.StepReport(step=n, loss=1.0))


def test_queued_step_reports_go_up_as_one_message_in_order_around_other_messages():
    hb = pb.WorkerMessage(heartbeat=pb.Heartbeat(phase=pb.PHASE_TRAINING))
    out = A.coalesce([step(1), step(2), step(3), hb, step(4), pb.WorkerMessage(finished=pb.Finished(step=4))])
    kinds = [m.WhichOneof("body") for m in out]
    assert kinds == ["steps", "heartbeat", "step", "finished"]
    assert [r.step for r in out[0].steps.reports] == [1, 2, 3]
    assert out[2].step.step == 4


def test_a_long_queue_is_cut_into_batches_of_at_most_max_coalesced():
    out = A.coalesce([step(i) for i in range(A.MAX_COALESCED * 2 + 1)])
    assert [len(m.steps.reports) if m.WhichOneof("body") == "steps" else 1 for m in out] == [A.MAX_COALESCED, A.MAX_COALESCED, 1]
    assert [r.step for m in out[:2] for r in m.steps.reports] == list(range(A.MAX_COALESCED * 2))


class ScriptedQueue:
    """Messages that arrive at given times on a fake clock; get(timeout) advances the clock to the
    next arrival, or by `timeout` and raises queue.Empty, as SimpleQueue.get would."""

    def __init__(self, arrivals: list[tuple[float, pb.WorkerMessage | None]]) -> None:
        self.arrivals = list(arrivals)
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def get(self, timeout: float | None) -> pb.WorkerMessage | None:
        import queue

        limit = self.t + (timeout or 0.0)
        if self.arrivals and self.arrivals[0][0] <= limit:
            at, msg = self.arrivals.pop(0)
            self.t = max(self.t, at)
            return msg
        self.t = limit
        raise queue.Empty


def test_a_rank_other_than_0_holds_step_reports_until_the_hold_ends():
    # Reports every 0.2 s; the hold 0.5 s from the first: steps 1-3 go up together, 4 starts the next.
    q = ScriptedQueue([(0.2, step(2)), (0.4, step(3)), (0.6, step(4))])
    batch, end = A.take_batch(q.get, step(1), 0.5, q.now)
    assert [m.step.step for m in batch] == [1, 2, 3] and not end
    assert q.t == 0.5


def test_rank_0_sends_at_once_what_is_not_already_queued():
    q = ScriptedQueue([(0.0, step(2)), (0.2, step(3))])
    batch, _ = A.take_batch(q.get, step(1), 0.0, q.now)
    assert [m.step.step for m in batch] == [1, 2]
    assert q.t == 0.0


def test_a_message_that_is_not_a_step_report_ends_the_hold_and_goes_up_with_what_was_held():
    finished = pb.WorkerMessage(finished=pb.Finished(step=2))
    q = ScriptedQueue([(0.1, step(2)), (0.15, finished), (0.3, step(3))])
    batch, _ = A.take_batch(q.get, step(1), 0.5, q.now)
    assert [m.WhichOneof("body") for m in batch] == ["step", "step", "finished"]
    assert q.t == 0.15
    # The end of the stream (close()) ends it too, and says so.
    q = ScriptedQueue([(0.1, step(2)), (0.2, None)])
    batch, end = A.take_batch(q.get, step(1), 0.5, q.now)
    assert [m.step.step for m in batch] == [1, 2] and end


def test_a_held_batch_is_at_most_max_coalesced_reports():
    q = ScriptedQueue([(0.001 * i, step(i)) for i in range(2, A.MAX_COALESCED + 10)])
    batch, _ = A.take_batch(q.get, step(1), 0.5, q.now)
    assert len(batch) == A.MAX_COALESCED


def test_the_hold_is_half_the_heartbeat_interval_at_most_and_none_on_rank_0():
    def agent(rank: int, interval: float) -> Agent:
        a = Agent.__new__(Agent)
        a.env = WorkerEnv(address="x", token="t", job_id="j", stage="main", attempt=1, rank=rank)
        a.assignment = pb.Assignment(heartbeat_interval_seconds=interval)
        return a

    assert agent(0, 1.0).report_hold_seconds() == 0.0
    assert agent(1, 1.0).report_hold_seconds() == A.REPORT_HOLD_SECONDS
    assert agent(3, 0.4).report_hold_seconds() == 0.2


def test_the_built_in_loader_fetches_many_steps_of_plan_per_call():
    from clipfleet_worker.tasks.common import PLAN_STEPS, plan_steps_per_fetch

    calls: list[tuple[int, int]] = []

    def fetch(from_step: int, count: int) -> list[pb.StepPlan]:
        calls.append((from_step, count))
        return [pb.StepPlan(step=s) for s in range(from_step, from_step + count)]

    assert plan_steps_per_fetch(32) == PLAN_STEPS
    assert plan_steps_per_fetch(4096) == 4 and plan_steps_per_fetch(10**6) == 1
    cache = A.PlanCache(fetch, 100, plan_steps_per_fetch(32))
    assert [cache.get(i).step for i in range(100)] == list(range(100))
    assert calls == [(0, 64), (64, 36)]


def test_the_manifest_id_matches_the_orchestrators_canonical_form():
    # The same lines data/shard-pages.ts hashes; a non-ASCII url counts its utf-8 bytes.
    import hashlib

    train, val = [("/d/a.tar", 3), ("/d/é.tar", 5)], [("/d/v.tar", 2)]
    want = hashlib.sha256("train 3 8:/d/a.tar\ntrain 5 9:/d/é.tar\nval 2 8:/d/v.tar\n".encode()).hexdigest()
    assert A.manifest_id(train, val) == want
    assert A.manifest_id(val, train) != want


def test_a_node_cache_file_that_does_not_hash_to_its_id_is_ignored(tmp_path):
    train, val = [("/d/a.tar", 3)], []
    mid = A.manifest_id(train, val)
    A.write_cached_shards(str(tmp_path), mid, train, val)
    assert A.read_cached_shards(str(tmp_path), mid) == (train, val)
    # Another process (or user) rewrote it: a different list under the same id is not believed.
    (tmp_path / f"{mid}.json").write_text(json.dumps({"train": [["/elsewhere.tar", 3]], "val": []}))
    assert A.read_cached_shards(str(tmp_path), mid) is None
    (tmp_path / f"{mid}.json").write_text("{not json")
    assert A.read_cached_shards(str(tmp_path), mid) is None


# ---------------------------------------------------------------- against a real gRPC server


class PagingGateway(pb_grpc.WorkerGatewayServicer):
    """Pages a fixed shard list by offset tokens, at most `page` shards a page; counts the calls."""

    def __init__(self, train: list[tuple[str, int]], val: list[tuple[str, int]], page: int, lie: bool = False) -> None:
        self.lists = {"train": train, "val": val}
        self.page = page
        self.lie = lie
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def Register(self, request, context):
        return pb.Assignment(
            session_id="s1", rank=request.rank, world_size=1, manifest_id=A.manifest_id(self.lists["train"], self.lists["val"]),
            train_shard_count=len(self.lists["train"]), val_shard_count=len(self.lists["val"]),
        )

    def GetShards(self, request, context):
        md = dict(context.invocation_metadata())
        if md.get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid job token")
        with self.lock:
            self.calls.append((request.split, request.page_token, request.page_size))
        shards = self.lists[request.split or "train"]
        start = int(request.page_token or "0")
        end = min(len(shards), start + min(self.page, request.page_size or self.page))
        page = shards[start:end]
        if self.lie:
            page = [(u + ".other", n) for u, n in page]
        return pb.ShardsResponse(shards=[pb.Shard(url=u, samples=n) for u, n in page], next_page_token=str(end) if end < len(shards) else "", total=len(shards))


def make_agent(address: str) -> Agent:
    ag = Agent(WorkerEnv(address=address, token=TOKEN, job_id="j", stage="main", attempt=1, rank=0))
    ag.register("test", 0)
    return ag


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "lists"
    monkeypatch.setenv("CLIPFLEET_SHARD_LIST_CACHE", str(d))
    return d


def test_the_shard_lists_are_paged_once_then_read_from_the_node_cache(cache_dir):
    train = [(f"/data/train-{i:05d}.tar", 100 + i) for i in range(25)]
    val = [(f"/data/val-{i:05d}.tar", 10) for i in range(7)]
    gw = PagingGateway(train, val, page=10)
    with serve(gw) as address:
        first = make_agent(address)
        assert first.shards("train") == train
        assert first.shards("val") == val
        assert first.shards("train") == train  # cached in the process: no more calls
        assert [(s, t) for s, t, _ in gw.calls] == [("train", ""), ("train", "10"), ("train", "20"), ("val", "")]
        assert all(size == A.SHARDS_PAGE for _, _, size in gw.calls)
        assert os.path.exists(cache_dir / f"{first.assignment.manifest_id}.json")
        # Another rank of the node: its lists come from the node cache, no GetShards at all.
        gw.calls.clear()
        second = make_agent(address)
        assert second.shards("train") == train and second.shards("val") == val
        assert gw.calls == []


def test_lists_that_do_not_hash_to_the_assignments_manifest_id_are_refused(cache_dir):
    gw = PagingGateway([("/data/a.tar", 5), ("/data/b.tar", 6)], [], page=1, lie=True)
    with serve(gw) as address:
        ag = make_agent(address)
        with pytest.raises(SessionLost, match="do not match manifest"):
            ag.shards("train")
        assert not cache_dir.exists() or os.listdir(cache_dir) == []


def test_a_stage_without_shards_asks_for_none(cache_dir):
    gw = PagingGateway([], [], page=4)
    with serve(gw) as address:
        ag = make_agent(address)
        assert ag.shards("train") == [] and ag.shards("val") == []
        assert gw.calls == []
