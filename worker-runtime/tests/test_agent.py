"""The agent against a real gRPC server: token in metadata, session loss fences the worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import pytest

from clipfleet_worker.agent import WorkerEnv
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2 as pb
from clipfleet_worker.gen.clipfleet.v1 import worker_pb2_grpc as pb_grpc

from gateway_server import serve

TOKEN = "s3cret-token"


class Gateway(pb_grpc.WorkerGatewayServicer):
    """Registers anyone with the token, then ends each session after its first message."""

    def __init__(self) -> None:
        self.seen_tokens: list[str] = []
        self.hello = threading.Event()

    def Register(self, request, context):
        md = dict(context.invocation_metadata())
        self.seen_tokens.append(md.get("authorization", ""))
        if md.get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid job token")
        return pb.Assignment(session_id="s1", rank=request.rank, world_size=1, fence_seconds=1.0, heartbeat_interval_seconds=0.2)

    def Session(self, request_iterator, context):
        first = next(request_iterator)
        assert first.WhichOneof("body") == "hello"
        self.hello.set()
        return iter(())  # the orchestrator is gone: the stream ends


@pytest.fixture()
def gateway():
    gw = Gateway()
    with serve(gw) as address:
        yield gw, address


AGENT = textwrap.dedent(
    """
    import time
    from clipfleet_worker.agent import Agent, WorkerEnv
    agent = Agent(WorkerEnv.from_environ())
    agent.register("test", 0)
    agent.start_session()
    time.sleep(30)
    print("still alive after 30 s")
    """
)


def _env(address: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        CLIPFLEET_ADDR=address,
        CLIPFLEET_JOB_ID="j-1",
        CLIPFLEET_STAGE="main",
        CLIPFLEET_ATTEMPT="1",
        CLIPFLEET_RANK="0",
    )
    env.pop("CLIPFLEET_TOKEN", None)
    env.update(extra)
    return env


def test_a_worker_that_loses_its_session_stops_itself_after_fence_seconds(gateway):
    gw, address = gateway
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", AGENT], env=_env(address, CLIPFLEET_TOKEN=TOKEN), capture_output=True, text=True, timeout=20)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    assert "stopping (fenced)" in proc.stderr
    assert "still alive" not in proc.stdout
    assert elapsed < 10, f"took {elapsed:.1f} s for a 1 s fence"
    assert gw.seen_tokens == [f"Bearer {TOKEN}"]


def test_the_token_can_come_over_stdin_and_a_wrong_one_is_refused(gateway):
    gw, address = gateway
    proc = subprocess.run(
        [sys.executable, "-c", AGENT],
        env=_env(address, CLIPFLEET_TOKEN_STDIN="1"),
        input="wrong-token\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2, proc.stderr
    assert "registration refused: invalid job token" in proc.stderr
    assert gw.seen_tokens == ["Bearer wrong-token"]


def test_worker_env_reads_the_token_from_stdin_only_when_asked():
    env = {"CLIPFLEET_ADDR": "a:1", "CLIPFLEET_JOB_ID": "j", "CLIPFLEET_STAGE": "s", "CLIPFLEET_ATTEMPT": "2", "CLIPFLEET_RANK": "1", "CLIPFLEET_TOKEN_STDIN": "1"}
    got = WorkerEnv.from_environ(env, stdin_token=lambda: "from-stdin")
    assert (got.token, got.attempt, got.rank) == ("from-stdin", 2, 1)
    with pytest.raises(SystemExit, match="CLIPFLEET_ADDR"):
        WorkerEnv.from_environ({})
