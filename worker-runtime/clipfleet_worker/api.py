"""The API of a user's own training script (a `task: command` stage): resume, checkpoints, progress, stop.

`ctx = clipfleet_worker.init()` works in two modes, and a script runs
unchanged in both:

- orchestrated (CLIPFLEET_ADDR set: the orchestrator launched this rank):
  the rank registers with its credentials and keeps the session the
  built-in worker keeps (heartbeats, commands, the data plan, failure
  reports with fingerprints, SIGUSR2 stacks, SIGTERM -> graceful stop, SIGUSR1 -> preemption);
  checkpoints are reported file by file and committed by the orchestrator
  once every rank has reported; settings come from the stage spec.
- local (plain torchrun, or python alone): the same calls; checkpoints go to
  a local directory (complete once rank 0 wrote its manifest after every
  rank's files), settings come from init()'s arguments, nothing is sent.

Steps are counted from 1: step N is the N-th optimizer step and
`start_step` is the number already done (the checkpoint's step on resume),
so a loop is `for step in range(ctx.start_step + 1, ctx.total_steps + 1)`.
docs/byo.md is the reference.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from . import distributed as D
from .agent import Agent, Commands, PlanCache, WorkerEnv
from .errors import ApiUsageError, CheckpointError, ConfigError
from .gen.clipfleet.v1 import common_pb2 as cpb
from .gen.clipfleet.v1 import worker_pb2 as pb
from .lifecycle import FaultInjection, die_with_parent, dump_stacks_on_sigusr2, report_failure, request_preemption, stop_gang_on_sigterm
from .preempt import PreemptionWatch

# Where plain-torchrun runs keep their checkpoints, unless CLIPFLEET_LOCAL_CHECKPOINTS says otherwise.
DEFAULT_LOCAL_CHECKPOINTS = "clipfleet-checkpoints"
# Written by rank 0 into a local step directory once every rank's files are there: the local
# counterpart of the orchestrator's manifest (the files and their digests), and the mark of completeness.
LOCAL_MANIFEST = "local-manifest.json"
# Steps of plan fetched per GetPlan call.
PLAN_CHUNK = 16


@dataclass(frozen=True)
class Settings:
    """The run as this rank sees it, compiled once: from the assignment, or from init() and torchrun's environment."""

    orchestrated: bool
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    start_step: int
    total_steps: int | None
    every_steps: int | None
    final_checkpoint: bool
    global_batch: int | None
    num_samples: int | None
    steps_per_epoch: int
    checkpoint_root: str
    attempt: int
    config: Mapping[str, Any]


@dataclass(frozen=True)
class _Decision:
    """What every rank does after `step`, taken once per step and identical on every rank."""

    step: int
    checkpoint: bool
    stop: bool


class CheckpointDir(os.PathLike):
    """The directory one rank writes its checkpoint files into, private to the rank until the block ends.

    `os.path.join(d, name)` and `open(os.path.join(d, name), "wb")` work; so
    does `d.save(name, obj)`, whose files `ctx.load(name)` reads back on
    torch 1.13 and 2.x alike. On leaving the block the files move into the
    step directory under the same relative paths.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"CheckpointDir({self.path!r})"

    def file(self, name: str) -> str:
        """The path of `name` in this directory, its parent directories created."""
        full = os.path.join(self.path, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    def save(self, name: str, obj: Any) -> None:
        """torch objects (state dicts, optimizer state, tensors, numbers) as `name`, loadable with weights_only."""
        full = self.file(name)
        ckpt.save_atomic(os.path.dirname(full), os.path.basename(full), obj)


class Context:
    """One rank of a script's run: what to resume, where the run is, and the calls that checkpoint and report."""

    def __init__(self, settings: Settings, agent: Agent | None, resume: ckpt.VerifiedCheckpoint | None, fetch_plan: Callable[[int, int], list[pb.StepPlan]] | None, fault: FaultInjection) -> None:
        self.settings = settings
        # The session with the orchestrator; None in local mode.
        self.agent = agent
        self._resume = resume
        self._plans = PlanCache(fetch_plan, settings.total_steps, PLAN_CHUNK) if fetch_plan is not None else None
        self._fault = fault
        # Local mode receives no commands: an empty Commands object answers "nothing due".
        self._commands = agent.commands if agent is not None else Commands()
        self._local = None if settings.orchestrated else _LocalCheckpoints(settings.checkpoint_root, settings.rank, settings.world_size)
        self._decision: _Decision | None = None
        self._stopped = False
        self._last_step = settings.start_step
        self._last_time = time.perf_counter()

    # -- where the run is ------------------------------------------------------

    @property
    def orchestrated(self) -> bool:
        return self.settings.orchestrated

    @property
    def rank(self) -> int:
        return self.settings.rank

    @property
    def world_size(self) -> int:
        return self.settings.world_size

    @property
    def local_rank(self) -> int:
        return self.settings.local_rank

    @property
    def local_world_size(self) -> int:
        return self.settings.local_world_size

    @property
    def start_step(self) -> int:
        """Steps already done: 0 for a fresh start, the checkpoint's step on resume."""
        return self.settings.start_step

    @property
    def total_steps(self) -> int | None:
        """train.steps of the spec (init(total_steps=) locally); None when not given."""
        return self.settings.total_steps

    @property
    def global_batch(self) -> int | None:
        return self.settings.global_batch

    @property
    def per_rank_batch(self) -> int | None:
        return None if self.settings.global_batch is None else self.settings.global_batch // self.settings.world_size

    @property
    def num_samples(self) -> int | None:
        return self.settings.num_samples

    @property
    def config(self) -> Mapping[str, Any]:
        """The resolved stage spec (orchestrated); empty locally."""
        return self.settings.config

    # -- resume ------------------------------------------------------------------

    @property
    def resume_dir(self) -> str | None:
        """The committed checkpoint directory to restore from, every file already verified; None: a fresh start."""
        return self._resume.directory if self._resume is not None else None

    @property
    def resume_files(self) -> list[str]:
        """The files of the checkpoint to restore (paths relative to resume_dir); empty for a fresh start."""
        return sorted(self._resume.files) if self._resume is not None else []

    def load(self, name: str) -> Any:
        """The object in resume file `name` (written with d.save), its bytes checked against the manifest and
        loaded with torch.load(weights_only=True): the safe way to restore."""
        return self._resumed().load(name)

    def read(self, name: str) -> bytes:
        """The bytes of resume file `name`, checked against the manifest (for files in any format)."""
        return self._resumed().read(name)

    def resume_path(self, name: str) -> str:
        """The path of resume file `name`, its digest checked now; what is opened later is not checked again
        (prefer load() or read(), which check the very bytes they return)."""
        self._resumed().read(name)
        return os.path.join(self._resumed().directory, name)

    def _resumed(self) -> ckpt.VerifiedCheckpoint:
        if self._resume is None:
            raise ApiUsageError("there is no checkpoint to resume from (ctx.resume_dir is None)")
        return self._resume

    def rank_file(self, name: str) -> str:
        """`name` made specific to this rank ("rng.pt" -> "rng.rank-00001.pt"): ranks share the step directory,
        so files every rank writes need distinct names."""
        stem, ext = os.path.splitext(name)
        return f"{stem}.rank-{self.rank:05d}{ext}"

    # -- data ----------------------------------------------------------------------

    def plan(self, step: int) -> list[int]:
        """This rank's sample indices (0 <= i < num_samples) for `step` (1-based), from the orchestrator's plan
        or, locally, a sequential split of range(num_samples) into global batches."""
        if self._plans is None:
            raise ConfigError("ctx.plan needs the dataset size and batch: init(num_samples=..., batch_size=...) (the spec's data.num_samples and train.batch_size under the orchestrator)")
        return [int(i) for i in self._plans.get(step - 1).indices]

    # -- progress ------------------------------------------------------------------

    def report(self, step: int, loss: float | None = None, *, lr: float | None = None, **metrics: float) -> None:
        """Step `step` is done: a StepReport (progress, hang detection, throughput). Every rank reports every
        step (or every few); values may be NaN or inf, unset ones are sent as NaN (the orchestrator drops them)."""
        self._fault.before_update(step)
        now = time.perf_counter()
        step_seconds = (now - self._last_time) / max(1, step - self._last_step)
        self._last_time, self._last_step = now, step
        if self.agent is None:
            return
        msg = pb.StepReport(step=step, loss=_number("loss", loss), lr=_number("lr", lr), step_seconds=step_seconds)
        if self.settings.global_batch:
            msg.samples_per_second = self.settings.global_batch / max(step_seconds, 1e-9)
        cursor = self._cursor(step)
        if cursor is not None:
            msg.epoch, msg.sample_in_epoch = cursor
        if self.settings.config.get("data", {}).get("audit") and self._plans is not None:
            # data.audit: the samples this rank's slice of the plan held, for `clipfleet audit`.
            p = self._plans.peek(step - 1)
            if p is not None:
                msg.samples.extend(int(i) for i in p.sample_ids)
        for k, v in metrics.items():
            msg.extra[k] = _number(k, v)
        self.agent.set_progress(step, "training")
        self.agent.send(pb.WorkerMessage(step=msg))

    def _cursor(self, step: int) -> tuple[int, int] | None:
        """The data cursor after `step`, when the plan of that step was used."""
        p = self._plans.peek(step - 1) if self._plans is not None else None
        if p is None:
            return None
        return ckpt.cursor_after(int(p.epoch), int(p.sample_in_epoch), int(self.settings.global_batch or 0), self.settings.steps_per_epoch)

    # -- control -------------------------------------------------------------------

    def should_checkpoint(self, step: int) -> bool:
        """Whether to checkpoint after `step`: the spec's cadence (checkpoint.every_steps; init(every_steps=)
        locally), the last step, an on-demand or timed request, a graceful stop. With torch.distributed
        initialised this is a collective: call it on every rank at the same steps."""
        return self._decide(step).checkpoint

    def should_stop(self, step: int | None = None) -> bool:
        """Whether to stop after `step` (default: the last reported): the orchestrator asked (SIGTERM, cancel,
        a shrinking gang). Checkpoint first when should_checkpoint says so; then finish() sends no Finished."""
        return self._decide(self._last_step if step is None else step).stop

    def _decide(self, step: int) -> _Decision:
        if self._decision is not None and self._decision.step == step:
            return self._decision
        want_ckpt, want_stop, stop_ckpt = self._commands.due(step)
        if self.agent is not None:
            # Commands reach ranks at slightly different times; a flag raised by any rank is acted on by all.
            flags = D.all_reduce_max([float(want_ckpt), float(want_stop), float(stop_ckpt)], _collective_device())
            want_ckpt, want_stop, stop_ckpt = (f > 0 for f in flags)
        s = self.settings
        periodic = bool(s.every_steps) and step % int(s.every_steps or 1) == 0
        final = s.total_steps is not None and step == s.total_steps and s.final_checkpoint
        stop = want_stop and (s.total_steps is None or step < s.total_steps)
        self._decision = _Decision(step, periodic or final or want_ckpt or stop_ckpt, stop)
        self._stopped = self._stopped or stop
        return self._decision

    # -- checkpoints -----------------------------------------------------------------

    @contextlib.contextmanager
    def checkpoint(self, step: int) -> Iterator[CheckpointDir]:
        """`with ctx.checkpoint(step) as d:` this rank writes its files into `d`; on leaving, they are fsynced,
        hashed and moved into the step directory, and reported (committed once every rank has reported;
        locally, once rank 0 wrote the manifest). Every rank enters the block, even one with nothing to write."""
        t0 = time.perf_counter()
        s = self.settings
        step_dir = os.path.join(s.checkpoint_root, ckpt.checkpoint_dir_name(step, s.attempt))
        self._set_phase(step, "checkpointing")
        if self._local is not None:
            self._local.begin(step_dir)
        staging = os.path.join(step_dir, f".staging-rank-{s.rank:05d}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            yield CheckpointDir(staging)
            files = _publish(staging, step_dir, step, overwrite=self._local is not None)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        seconds = time.perf_counter() - t0
        if self.agent is not None:
            msg = pb.CheckpointWritten(step=step, dir=step_dir, save_seconds=seconds, write_seconds=seconds)
            msg.files.extend(cpb.FileDigest(path=f.path, sha256=f.sha256, size=f.size) for f in files)
            cursor = self._cursor(step)
            if cursor is not None:
                msg.cursor.CopyFrom(cpb.DataCursor(epoch=cursor[0], sample_in_epoch=cursor[1]))
            self.agent.send(pb.WorkerMessage(checkpoint=msg))
        elif self._local is not None:
            self._local.commit(step, step_dir, files)
        self._commands.checkpoint_done(step)
        self._set_phase(step, "training")

    def _set_phase(self, step: int, phase: str) -> None:
        if self.agent is not None:
            self.agent.set_progress(step, phase)

    # -- the end ---------------------------------------------------------------------

    def finish(self, step: int | None = None, *, params_sha256: str = "", **metrics: float) -> None:
        """The run is done: a Finished message (the step, default the last reported; the final parameters'
        sha256, see params_sha256(); metrics), then the session closes. After a stop, only the close."""
        if self.agent is not None and self.agent.closing:
            return
        step = self._last_step if step is None else step
        if self._stopped:
            print(f"clipfleet: stopped after step {step} as asked ({self._commands.stop_reason or 'stop'})", flush=True)
        elif self.agent is not None:
            msg = pb.Finished(step=step, final_params_sha256=params_sha256)
            for k, v in metrics.items():
                msg.metrics[k] = _number(k, v)
            self.agent.send(pb.WorkerMessage(finished=msg))
        self.close()

    def close(self) -> None:
        """Sends what is queued and closes the session (also at exit, when the script did not call finish())."""
        if self.agent is not None:
            self.agent.close()


def init(*, total_steps: int | None = None, every_steps: int | None = None, num_samples: int | None = None, batch_size: int | None = None) -> Context:
    """The rank's Context. Under the orchestrator the spec decides and these arguments only apply locally
    (a differing one is named on stderr); locally they are the run's settings."""
    local = {"total_steps": total_steps, "every_steps": every_steps, "num_samples": num_samples, "batch_size": batch_size}
    for name, value in local.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"expected a positive integer, got {value!r}", f"init({name})")
    if "CLIPFLEET_ADDR" not in os.environ:
        return _local_context(dict(os.environ), local)
    dump_stacks_on_sigusr2()
    preemption = PreemptionWatch(os.environ)
    preemption.install()
    die_with_parent()
    env = WorkerEnv.from_environ()
    agent = Agent(env)
    _report_uncaught(agent)
    ctx = connect(agent, local)
    stop_gang_on_sigterm(agent, env.rank)
    # A bad CLIPFLEET_PREEMPT_SIGNAL: ConfigError, reported by the excepthook.
    preemption.attach(env.rank, lambda reason: request_preemption(agent, reason))
    return ctx


def connect(agent: Agent, local: Mapping[str, int | None] | None = None) -> Context:
    """Registers `agent`, opens its session, verifies the checkpoint to resume from and builds the Context;
    unlike init(), installs no process-wide hooks (signals, excepthook, exit), so a host program may embed it."""
    a = agent.register(torch.__version__, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    agent.start_session()
    cfg = json.loads(a.config_json)
    device = D.rank_device(a.backend, int(a.local_rank))
    if device.type == "cuda":
        agent.gpu_stats = D.cuda_stats(device)
    ck, data = cfg.get("checkpoint") or {}, cfg.get("data") or {}
    given = dict(local or {})
    # The spec decides what it sets; what it leaves unset (a `clipfleet launch` sets nothing but the
    # command) comes from init()'s arguments, the script's own defaults, as under plain torchrun.
    spec = {"total_steps": ("train.steps", int(a.total_steps) or None), "every_steps": ("checkpoint.every_steps", ck.get("every_steps")),
            "num_samples": ("data.num_samples", data.get("num_samples")), "batch_size": ("train.batch_size", int(a.global_batch) or None)}
    chosen = {name: used if used is not None else given.get(name) for name, (_, used) in spec.items()}
    if int(a.rank) == 0:
        for name, value in given.items():
            field, used = spec[name]
            if value is not None and used is not None and value != used:
                print(f"clipfleet: init({name}={value}) gives way to the spec's {field} ({used})", file=sys.stderr, flush=True)
    samples, batch, world_size = chosen["num_samples"], chosen["batch_size"], int(a.world_size)
    if data.get("num_samples") is None and batch is not None and batch % world_size:
        raise ConfigError(f"{batch} is not divisible by the world size {world_size}", "init(batch_size)")
    settings = Settings(
        orchestrated=True,
        rank=int(a.rank),
        world_size=world_size,
        local_rank=int(a.local_rank),
        local_world_size=int(a.local_world_size),
        start_step=int(a.start_step),
        total_steps=chosen["total_steps"],
        every_steps=chosen["every_steps"],
        final_checkpoint=bool(ck.get("final", True)),
        global_batch=batch,
        num_samples=samples,
        steps_per_epoch=int(a.steps_per_epoch) or (samples // batch if samples and batch else 0),
        checkpoint_root=a.checkpoint_root,
        attempt=int(a.attempt),
        config=cfg,
    )

    def fetch(from_step: int, count: int) -> list[pb.StepPlan]:
        return agent.plan(from_step, count)

    # The orchestrator's plan when the spec has one (any world size, `clipfleet audit`); else the sequential one.
    plans = fetch if data.get("num_samples") else (_sequential_plan(samples, batch, settings.rank, world_size) if samples and batch else None)
    agent.set_progress(settings.start_step, "training")
    fault = FaultInjection(os.environ.get("CLIPFLEET_FAULT", ""), settings.rank, settings.attempt)
    return Context(settings, agent, _verified_resume(agent), plans, fault)


def _verified_resume(agent: Agent) -> ckpt.VerifiedCheckpoint | None:
    """The assigned checkpoint, every file checked (a corrupt one fails the rank as checkpoint_corrupt)."""
    assert agent.assignment is not None
    ref = agent.assignment.resume
    if not ref.dir:
        return None
    agent.set_progress(int(agent.assignment.start_step), "loading")
    resume = ckpt.VerifiedCheckpoint.of(ref, eager=True)
    agent.set_progress(int(agent.assignment.start_step), "training")
    return resume


def _report_uncaught(agent: Agent) -> None:
    """An uncaught exception becomes a WorkerFailure (traceback, fingerprint) before the process exits 1;
    at exit the session is closed after sending what is queued, finish() or not."""
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if agent.closing or agent.assignment is None:
            previous(exc_type, exc, tb)
            return
        report_failure(agent, exc)  # prints the traceback too
        agent.close()

    sys.excepthook = hook
    atexit.register(agent.close)


def _local_context(environ: dict[str, str], local: Mapping[str, int | None]) -> Context:
    rank, world_size = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    root = os.path.abspath(environ.get("CLIPFLEET_LOCAL_CHECKPOINTS") or DEFAULT_LOCAL_CHECKPOINTS)
    batch, samples = local["batch_size"], local["num_samples"]
    if batch is not None and batch % world_size:
        raise ConfigError(f"{batch} is not divisible by the world size {world_size}", "init(batch_size)")
    if batch is not None and samples is not None and samples < batch:
        raise ConfigError(f"{samples} samples do not fill one batch of {batch}", "init(num_samples)")
    newest = _LocalCheckpoints(root, rank, world_size).newest()
    settings = Settings(
        orchestrated=False,
        rank=rank,
        world_size=world_size,
        local_rank=int(environ.get("LOCAL_RANK", rank)),
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world_size)),
        start_step=newest[1] if newest else 0,
        total_steps=local["total_steps"],
        every_steps=local["every_steps"],
        final_checkpoint=True,
        global_batch=batch,
        num_samples=samples,
        steps_per_epoch=samples // batch if samples and batch else 0,
        checkpoint_root=root,
        attempt=0,
        config={},
    )
    if newest is not None and rank == 0:
        print(f"clipfleet: resuming from {newest[0].directory} (step {newest[1]})", flush=True)
    fetch = _sequential_plan(samples, batch, rank, world_size) if samples and batch else None
    fault = FaultInjection(environ.get("CLIPFLEET_FAULT", ""), rank, int(environ.get("TORCHELASTIC_RESTART_COUNT", 0)))
    return Context(settings, None, newest[0] if newest else None, fetch, fault)


def _sequential_plan(num_samples: int, global_batch: int, rank: int, world_size: int) -> Callable[[int, int], list[pb.StepPlan]]:
    """The local plan: step i reads global batch i of range(num_samples) in order (a partial last batch is
    dropped; epochs repeat), each rank a contiguous slice of it."""
    per_rank = global_batch // world_size
    steps_per_epoch = num_samples // global_batch

    def fetch(from_step: int, count: int) -> list[pb.StepPlan]:
        out = []
        for i in range(from_step, from_step + count):
            epoch, k = divmod(i, steps_per_epoch)
            first = k * global_batch
            ids = list(range(first + rank * per_rank, first + (rank + 1) * per_rank))
            out.append(pb.StepPlan(step=i, epoch=epoch, sample_in_epoch=first, shards=[0] * per_rank, indices=ids, sample_ids=ids))
        return out

    return fetch


class _LocalCheckpoints:
    """Checkpoints of a run without an orchestrator: step directories under `root`, each complete once
    rank 0 wrote LOCAL_MANIFEST (every rank's files and digests, gathered after every rank wrote them).
    Several nodes need `root` on a shared file system, as the orchestrator's checkpoint root does."""

    def __init__(self, root: str, rank: int, world_size: int) -> None:
        self.root = root
        self.rank = rank
        self.world_size = world_size

    def newest(self) -> tuple[ckpt.VerifiedCheckpoint, int] | None:
        """The newest complete checkpoint whose files all match the manifest, and its step."""
        names = os.listdir(self.root) if os.path.isdir(self.root) else []
        steps = sorted(((int(m.group(1)), n) for n in names if (m := re.fullmatch(r"step-(\d+)-a\d+", n))), reverse=True)
        for step, name in steps:
            manifest = os.path.join(self.root, name, LOCAL_MANIFEST)
            if not os.path.exists(manifest):
                continue  # never completed
            with open(manifest) as f:
                files = {path: (digest, int(size)) for path, digest, size in json.load(f)["files"]}
            try:
                return ckpt.VerifiedCheckpoint.verified(os.path.dirname(manifest), files, eager=True), step
            except CheckpointError as err:
                print(f"clipfleet: skipping checkpoint {name}: {err}", file=sys.stderr, flush=True)
        return None

    def begin(self, step_dir: str) -> None:
        """Before any rank writes: a manifest left by an earlier run that died at this step goes first."""
        if self.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise ApiUsageError(f"local checkpoints of {self.world_size} ranks need torch.distributed initialised (ranks agree on completion through it)")
        if self.rank == 0:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(step_dir, LOCAL_MANIFEST))
        D.barrier()

    def commit(self, step: int, step_dir: str, files: list[ckpt.WrittenFile]) -> None:
        mine = [[f.path, f.sha256, f.size] for f in files]
        every: list[Any] = [mine]
        if self.world_size > 1:
            every = [None] * self.world_size
            dist.all_gather_object(every, mine)
        if self.rank != 0:
            return
        seen: dict[str, int] = {}
        for r, entries in enumerate(every):
            for path, _, _ in entries:
                if path in seen:
                    raise ApiUsageError(f"ranks {seen[path]} and {r} both wrote {path} at step {step}: give files every rank writes distinct names (ctx.rank_file(name))")
                seen[path] = r
        merged = sorted(e for entries in every for e in entries)
        ckpt.write_atomic(step_dir, LOCAL_MANIFEST, json.dumps({"step": step, "world_size": self.world_size, "files": merged}, indent=1).encode())


def _publish(staging: str, step_dir: str, step: int, overwrite: bool) -> list[ckpt.WrittenFile]:
    """Fsyncs and hashes every file of `staging`, then moves them into `step_dir` under the same relative
    paths (refusing symlinks and, unless `overwrite`, a name another rank already wrote)."""
    files: list[ckpt.WrittenFile] = []
    for root, dirs, names in os.walk(staging):
        dirs.sort()
        for name in sorted(dirs + names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, staging)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                raise ApiUsageError(f"checkpoint at step {step}: {rel} is a symlink; write the file itself")
            if name in names and not stat.S_ISREG(mode):
                raise ApiUsageError(f"checkpoint at step {step}: {rel} is not a regular file")
        for name in sorted(names):
            full = os.path.join(root, name)
            files.append(_fsync_and_hash(full, os.path.relpath(full, staging)))
    if not overwrite:
        for f in files:
            if os.path.lexists(os.path.join(step_dir, f.path)):
                raise ApiUsageError(f"checkpoint at step {step}: {f.path} is already in {step_dir} (another rank wrote it?): give files every rank writes distinct names (ctx.rank_file(name))")
    touched = {step_dir}
    for f in files:
        dst = os.path.join(step_dir, f.path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(os.path.join(staging, f.path), dst)
        touched.add(os.path.dirname(dst))
    for d in sorted(touched):
        ckpt.fsync_path(d)
    return files


def _fsync_and_hash(path: str, rel: str) -> ckpt.WrittenFile:
    ckpt.fsync_path(path)
    return ckpt.WrittenFile(path=rel, sha256=ckpt.sha256_file(path), size=os.path.getsize(path))


def _number(name: str, value: Any) -> float:
    """A reported value as a float; None is NaN (not measured). NaN and inf pass: the orchestrator drops them."""
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ApiUsageError(f"reported value {name}={value!r} is not a number") from err


def _collective_device() -> torch.device:
    """Where a control all-reduce's tensor lives: the current GPU for NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
