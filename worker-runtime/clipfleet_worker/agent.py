"""The rank's session with the orchestrator.

A worker process registers (authenticating with the job token), receives its
assignment, then keeps one bidirectional stream open: heartbeats and reports
go up, commands (checkpoint at a step, stop, fenced) come down. The
orchestrator owns every decision; the agent only relays. When the session is
lost for longer than the assignment's fence_seconds the worker stops itself,
so no rank outlives an orchestrator that gave up on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import queue
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import grpc

from . import __version__
from .gen.clipfleet.v1 import worker_pb2 as pb
from .gen.clipfleet.v1 import worker_pb2_grpc as pb_grpc

# Exit codes of a worker process (the orchestrator reads the reason from reports, these are for humans).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_FENCED = 3

PHASES = {
    "starting": pb.PHASE_STARTING,
    "rendezvous": pb.PHASE_RENDEZVOUS,
    "loading": pb.PHASE_LOADING,
    "training": pb.PHASE_TRAINING,
    "checkpointing": pb.PHASE_CHECKPOINTING,
    "evaluating": pb.PHASE_EVALUATING,
    "stopping": pb.PHASE_STOPPING,
}


@dataclass(frozen=True)
class WorkerEnv:
    """What the launcher tells a rank through its environment (the token never on a command line)."""

    address: str
    token: str
    job_id: str
    stage: str
    attempt: int
    rank: int
    # PEM of the CA that signed the orchestrator's worker-gateway certificate; empty: a plain connection.
    tls_ca: str = ""

    @staticmethod
    def from_environ(environ: dict[str, str] | None = None, stdin_token: Callable[[], str] | None = None) -> "WorkerEnv":
        """Reads CLIPFLEET_* variables; the token comes from CLIPFLEET_TOKEN or, over SSH, from stdin."""
        env = dict(os.environ if environ is None else environ)
        missing = [k for k in ("CLIPFLEET_ADDR", "CLIPFLEET_JOB_ID", "CLIPFLEET_STAGE", "CLIPFLEET_ATTEMPT", "CLIPFLEET_RANK") if k not in env]
        if missing:
            raise SystemExit(f"clipfleet worker: missing environment {', '.join(missing)} (workers are started by the orchestrator)")
        token = env.get("CLIPFLEET_TOKEN", "")
        if not token and env.get("CLIPFLEET_TOKEN_STDIN") == "1":
            token = (stdin_token or (lambda: sys.stdin.readline().strip()))()
        return WorkerEnv(
            address=env["CLIPFLEET_ADDR"],
            token=token,
            job_id=env["CLIPFLEET_JOB_ID"],
            stage=env["CLIPFLEET_STAGE"],
            attempt=int(env["CLIPFLEET_ATTEMPT"]),
            rank=int(env["CLIPFLEET_RANK"]),
            tls_ca=env.get("CLIPFLEET_TLS_CA", ""),
        )


@dataclass
class Commands:
    """Commands received from the orchestrator, read by the training loop at step boundaries."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    checkpoint_at: int | None = None
    stop_at: int | None = None
    stop_checkpoint: bool = False
    stop_reason: str = ""
    fenced: str | None = None
    committed: list[int] = field(default_factory=list)

    def due(self, step: int) -> tuple[bool, bool, bool]:
        """(checkpoint requested, stop requested, checkpoint before stopping) for a rank about to finish `step`."""
        with self.lock:
            ckpt = self.checkpoint_at is not None and step >= self.checkpoint_at
            stop = self.fenced is not None or (self.stop_at is not None and step >= self.stop_at)
            return ckpt, stop, stop and self.stop_checkpoint and self.fenced is None

    def checkpoint_done(self, step: int) -> None:
        with self.lock:
            if self.checkpoint_at is not None and step >= self.checkpoint_at:
                self.checkpoint_at = None


class SessionLost(Exception):
    """The orchestrator is gone (or fenced this attempt)."""


# Shards asked for per GetShards page (the server may return fewer).
SHARDS_PAGE = 4096
# Most step reports coalesced into one message (the orchestrator refuses more than 256).
MAX_COALESCED = 64
# How long a rank other than 0 holds a step report for more to go up with it (at most half the
# heartbeat interval, so liveness never lapses). Rank 0 reports at once: its step is what the
# orchestrator's stop-step rule (ranks within one step of each other) and progress rest on; the
# other ranks' reports feed per-job histograms, the data audit and hang detection, which a fraction
# of a second does not change. Per step that is one message plus a fraction instead of one per
# rank: the orchestrator's cost is per message (grpc-js's receive path), not per report.
REPORT_HOLD_SECONDS = 0.5

Shards = list[tuple[str, int]]


def manifest_id(train: Sequence[tuple[str, int]], val: Sequence[tuple[str, int]]) -> str:
    """The id of a stage's shard lists, as the orchestrator computes it (data/shard-pages.ts manifestIdOf)."""
    h = hashlib.sha256()
    for split, shards in (("train", train), ("val", val)):
        for url, samples in shards:
            h.update(f"{split} {samples} {len(url.encode())}:{url}\n".encode())
    return h.hexdigest()


def shard_cache_dir() -> str:
    """Where a node keeps the shard lists its ranks fetched (one file per manifest id, checked against it)."""
    return os.environ.get("CLIPFLEET_SHARD_LIST_CACHE") or os.path.join(tempfile.gettempdir(), f"clipfleet-shard-lists-{os.getuid()}")


def read_cached_shards(directory: str, mid: str) -> tuple[Shards, Shards] | None:
    """The node's copy of a manifest's lists, when it is there and hashes to its id (anything else is ignored)."""
    try:
        with open(os.path.join(directory, f"{mid}.json"), encoding="utf-8") as f:
            data = json.load(f)
        train = [(str(u), int(n)) for u, n in data["train"]]
        val = [(str(u), int(n)) for u, n in data["val"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (train, val) if manifest_id(train, val) == mid else None


def write_cached_shards(directory: str, mid: str, train: Shards, val: Shards) -> None:
    """Keeps the lists for the node's other ranks (atomically; a failure only costs them the fetch)."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{mid}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"train": train, "val": val}, f)
        os.replace(tmp, os.path.join(directory, f"{mid}.json"))
    except OSError:
        pass


def heartbeat_due(now: float, last_sent: float, interval: float) -> bool:
    """A heartbeat only when nothing went up for an interval: step reports are liveness too."""
    return now - last_sent >= interval


def coalesce(msgs: list[pb.WorkerMessage]) -> list[pb.WorkerMessage]:
    """Runs of queued step reports as one StepReports message each (at most MAX_COALESCED), order kept."""
    out: list[pb.WorkerMessage] = []
    run: list[pb.StepReport] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(pb.WorkerMessage(step=run[0]))
        elif run:
            out.append(pb.WorkerMessage(steps=pb.StepReports(reports=run)))
        run.clear()

    for m in msgs:
        if m.WhichOneof("body") == "step":
            run.append(m.step)
            if len(run) >= MAX_COALESCED:
                flush()
        else:
            flush()
            out.append(m)
    flush()
    return out


class PlanCache:
    """A rank's StepPlans by 0-based step, fetched `chunk` steps at a time (one GetPlan per chunk):
    an attempt's plan is fixed, and each call costs the orchestrator more than its steps do."""

    def __init__(self, fetch: Callable[[int, int], list[pb.StepPlan]], end: int | None, chunk: int) -> None:
        self._fetch = fetch
        self._end = end
        self._chunk = max(1, chunk)
        self._plans: dict[int, pb.StepPlan] = {}

    def get(self, index: int) -> pb.StepPlan:
        if index not in self._plans:
            count = self._chunk if self._end is None else max(1, min(self._chunk, self._end - index))
            plans = self._fetch(index, count)
            # Keep the previous step: the cursor of a checkpoint after it comes from its plan.
            self._plans = {k: v for k, v in self._plans.items() if k >= index - 1}
            self._plans.update((int(p.step), p) for p in plans)
            if index not in self._plans:
                raise RuntimeError(f"the plan for steps {index}..{index + count - 1} did not include step {index}")
        return self._plans[index]

    def peek(self, index: int) -> pb.StepPlan | None:
        return self._plans.get(index)


def is_step(msg: pb.WorkerMessage) -> bool:
    return msg.WhichOneof("body") == "step"


def take_batch(get: Callable[[float | None], pb.WorkerMessage | None], first: pb.WorkerMessage, hold: float,
               now: Callable[[], float]) -> tuple[list[pb.WorkerMessage], bool]:
    """The messages to send with `first`: what is queued behind it, and, when `first` is a step
    report and `hold` > 0, what arrives within `hold` seconds of it, until a message that is not a
    step report (it goes up at once, with what was held before it). get(timeout) blocks at most
    `timeout` seconds (None: do not block) and raises queue.Empty. Returns the batch, and whether the
    end of the stream (None) was taken."""
    batch = [first]
    deadline = now() + hold if hold > 0 and is_step(first) else None
    while len(batch) < MAX_COALESCED:
        try:
            if deadline is None:
                nxt = get(None)
            else:
                remaining = deadline - now()
                nxt = get(remaining) if remaining > 0 else get(None)
        except queue.Empty:
            break
        if nxt is None:
            return batch, True
        batch.append(nxt)
        if not is_step(nxt):
            deadline = None
    return batch, False


class Agent:
    """Registration, the session stream, heartbeats, and plan requests of one rank."""

    def __init__(self, env: WorkerEnv) -> None:
        self.env = env
        options = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if env.tls_ca:
            # The gateway serves TLS: the job token then never crosses the network in clear.
            creds = grpc.ssl_channel_credentials(root_certificates=env.tls_ca.encode())
            self.channel = grpc.secure_channel(env.address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(env.address, options=options)
        self.stub = pb_grpc.WorkerGatewayStub(self.channel)
        self.metadata = (("authorization", f"Bearer {env.token}"),)
        self.commands = Commands()
        self.assignment: pb.Assignment | None = None
        # SimpleQueue: its put is reentrant, so the SIGTERM handler (lifecycle.py), which runs on the
        # main thread between any two bytecodes, may send even while that thread is inside send().
        self._out: queue.SimpleQueue[pb.WorkerMessage | None] = queue.SimpleQueue()
        self._step = 0
        self._phase = "starting"
        self._closed = threading.Event()
        # close() was called: what is sent from now on is dropped.
        self.closing = False
        self._session_ok = threading.Event()
        self._lost_since: float | None = None
        self._threads: list[threading.Thread] = []
        self.gpu_stats: Callable[[], tuple[float, int]] | None = None
        # When a message last went up (time.monotonic()): heartbeats are skipped while others flow.
        self._last_sent = time.monotonic()
        self._shards: tuple[Shards, Shards] | None = None

    # -- registration ------------------------------------------------------

    def register(self, torch_version: str, cuda_devices: int, timeout: float = 60.0) -> pb.Assignment:
        """Registers, retrying while the orchestrator is starting; a refusal (token, fence, version) exits."""
        req = pb.RegisterRequest(
            job_id=self.env.job_id,
            stage=self.env.stage,
            attempt=self.env.attempt,
            rank=self.env.rank,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            runtime_version=__version__,
            python_version=platform.python_version(),
            torch_version=torch_version,
            cuda_devices=cuda_devices,
        )
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                self.assignment = self.stub.Register(req, metadata=self.metadata, timeout=30)
                return self.assignment
            except grpc.RpcError as err:
                code = err.code()
                if code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(2.0, delay * 2)
                    continue
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                    print(f"clipfleet worker: registration refused: {err.details()}", file=sys.stderr, flush=True)
                    raise SystemExit(EXIT_FENCED if code == grpc.StatusCode.FAILED_PRECONDITION else EXIT_CONFIG)
                raise

    # -- session -------------------------------------------------------------

    def start_session(self) -> None:
        """Opens the stream and starts the heartbeat and command threads."""
        assert self.assignment is not None
        a = self.assignment
        self._out.put(pb.WorkerMessage(hello=pb.Hello(session_id=a.session_id)))
        self._spawn(self._session_loop, "clipfleet-session")
        self._spawn(self._heartbeat_loop, "clipfleet-heartbeat")
        self._spawn(self._fence_watch, "clipfleet-fence")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def report_hold_seconds(self) -> float:
        """How long this rank holds a step report for others to go up with it (REPORT_HOLD_SECONDS)."""
        if self.env.rank == 0 or self.assignment is None:
            return 0.0
        interval = max(0.1, self.assignment.heartbeat_interval_seconds or 1.0)
        return min(REPORT_HOLD_SECONDS, interval / 2)

    def _outgoing(self) -> Iterator[pb.WorkerMessage]:
        hold = self.report_hold_seconds()

        def get(timeout: float | None) -> pb.WorkerMessage | None:
            return self._out.get_nowait() if timeout is None else self._out.get(timeout=timeout)

        while True:
            msg = self._out.get()
            if msg is None:
                return
            # What queued behind it (the stream was slow), and on ranks other than 0 what follows
            # within the hold: step reports go up coalesced.
            batch, end = take_batch(get, msg, hold, time.monotonic)
            for m in coalesce(batch) if len(batch) > 1 else batch:
                yield m
            if end:
                return

    def _session_loop(self) -> None:
        try:
            responses = self.stub.Session(self._outgoing(), metadata=self.metadata)
            self._session_ok.set()
            self._lost_since = None
            for cmd in responses:
                self._on_command(cmd)
            # The orchestrator ended the stream: it finished with us or fenced us.
        except grpc.RpcError as err:
            if not self._closed.is_set():
                print(f"clipfleet worker: session with the orchestrator lost: {err.code().name}: {err.details()}", file=sys.stderr, flush=True)
                if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    with self.commands.lock:
                        self.commands.fenced = err.details() or "fenced"
        finally:
            self._session_ok.clear()
            if self._lost_since is None:
                self._lost_since = time.monotonic()

    def _on_command(self, cmd: pb.Command) -> None:
        kind = cmd.WhichOneof("body")
        c = self.commands
        with c.lock:
            if kind == "checkpoint_at":
                c.checkpoint_at = cmd.checkpoint_at.step
            elif kind == "stop_at":
                c.stop_at = cmd.stop_at.step
                c.stop_checkpoint = cmd.stop_at.checkpoint
                c.stop_reason = cmd.stop_at.reason
            elif kind == "fenced":
                c.fenced = cmd.fenced.reason or "fenced"
            elif kind == "committed":
                c.committed.append(cmd.committed.step)
        if kind == "fenced":
            print(f"clipfleet worker: fenced by the orchestrator: {cmd.fenced.reason}", file=sys.stderr, flush=True)
            # The orchestrator kills the gang anyway; do not linger if a collective blocks the loop.
            threading.Timer(5.0, lambda: os._exit(EXIT_FENCED)).start()

    def _heartbeat_loop(self) -> None:
        assert self.assignment is not None
        interval = max(0.1, self.assignment.heartbeat_interval_seconds or 1.0)
        wait = interval
        while not self._closed.wait(wait):
            now = time.monotonic()
            if not heartbeat_due(now, self._last_sent, interval):
                # A report went up within the interval: it was the heartbeat; look again when this one is due.
                wait = max(0.05, self._last_sent + interval - now)
                continue
            wait = interval
            util, mem = self.gpu_stats() if self.gpu_stats else (0.0, 0)
            self.send(pb.WorkerMessage(heartbeat=pb.Heartbeat(phase=PHASES.get(self._phase, 0), gpu_utilization=util, gpu_memory_bytes=mem)))

    def _fence_watch(self) -> None:
        """Stops the process when the session stays lost longer than fence_seconds."""
        assert self.assignment is not None
        fence = self.assignment.fence_seconds or 30.0
        while not self._closed.wait(0.5):
            since = self._lost_since
            if since is not None and time.monotonic() - since > fence:
                print(f"clipfleet worker: no session with the orchestrator for {fence:.0f} s: stopping (fenced)", file=sys.stderr, flush=True)
                os._exit(EXIT_FENCED)

    # -- reports -------------------------------------------------------------

    def send(self, msg: pb.WorkerMessage) -> None:
        if not self._closed.is_set():
            self._last_sent = time.monotonic()
            self._out.put(msg)

    def set_progress(self, step: int, phase: str) -> None:
        self._step = step
        self._phase = phase

    def plan(self, from_step: int, count: int, split: str = "train") -> list[pb.StepPlan]:
        """The samples this rank reads in steps [from_step, from_step + count)."""
        assert self.assignment is not None
        try:
            resp = self.stub.GetPlan(
                pb.PlanRequest(session_id=self.assignment.session_id, from_step=from_step, count=count, split=split),
                metadata=self.metadata,
                timeout=60,
            )
        except grpc.RpcError as err:
            raise SessionLost(f"plan request failed: {err.code().name}: {err.details()}") from err
        return list(resp.steps)

    def shards(self, split: str = "train") -> Shards:
        """The stage's train or val shards as (url, samples): from the node's cache when it holds this
        manifest, else paged with GetShards once (and cached for the node's other ranks)."""
        if self._shards is None:
            self._shards = self._fetch_shards()
        return self._shards[1] if split == "val" else self._shards[0]

    def _fetch_shards(self) -> tuple[Shards, Shards]:
        a = self.assignment
        assert a is not None
        if a.train_shard_count == 0 and a.val_shard_count == 0:
            return [], []
        cache = shard_cache_dir()
        cached = read_cached_shards(cache, a.manifest_id)
        if cached is not None:
            return cached
        lists = (self._pages("train", a.train_shard_count), self._pages("val", a.val_shard_count))
        if manifest_id(*lists) != a.manifest_id:
            raise SessionLost(f"shard lists do not match manifest {a.manifest_id}")
        write_cached_shards(cache, a.manifest_id, *lists)
        return lists

    def _pages(self, split: str, count: int) -> Shards:
        assert self.assignment is not None
        out: Shards = []
        token = ""
        while len(out) < count:
            try:
                resp = self.stub.GetShards(
                    pb.ShardsRequest(session_id=self.assignment.session_id, manifest_id=self.assignment.manifest_id, split=split, page_token=token, page_size=SHARDS_PAGE),
                    metadata=self.metadata,
                    timeout=60,
                )
            except grpc.RpcError as err:
                raise SessionLost(f"shard list request failed: {err.code().name}: {err.details()}") from err
            out.extend((s.url, int(s.samples)) for s in resp.shards)
            token = resp.next_page_token
            if not token or not resp.shards:
                break
        if len(out) != count:
            raise SessionLost(f"{split} shard list has {len(out)} shards, the assignment says {count}")
        return out
    def lease(self, commit: pb.RecaptionCommit | None) -> pb.LeaseReply:
        """task recaption: report the output shard just written (persisted before the reply) and lease the next."""
        assert self.assignment is not None
        req = pb.LeaseRequest(session_id=self.assignment.session_id)
        if commit is not None:
            req.commit.CopyFrom(commit)
        try:
            return self.stub.Lease(req, metadata=self.metadata, timeout=60)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise RuntimeError(f"lease refused: {err.details()}") from None
            raise SessionLost(f"lease request failed: {err.code().name}: {err.details()}") from err

    def close(self, drain_seconds: float = 5.0) -> None:
        """Sends what is queued, half-closes the stream, and stops the threads; once (later calls return)."""
        if self.closing:
            return
        self.closing = True
        self._out.put(None)
        deadline = time.monotonic() + drain_seconds
        while not self._out.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._closed.set()
        for t in self._threads:
            if t.name == "clipfleet-session":
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.channel.close()
