"""`task: recaption`: caption every sample of the input shards into new shards, exactly once.

The orchestrator leases whole input shards (agent.lease). For each lease the
rank reads the shard in order, captions it in fixed batches
(`captioner.batch_size`) with the captioner plugin, fuses each caption with
the AltText, and writes an output shard holding every original member of every
sample plus the caption member (`recaption.field`, `vecap.txt` by default):
to a temp name, fsynced, renamed into place, then read back and checked
against the digest computed while writing, and only then reported with its
next Lease call, which the orchestrator persists before it answers. Tar
headers are fixed (mtime 0, uid/gid 0, mode 0644, member order of the input,
caption last), so with a deterministic plugin a re-leased shard is rewritten
byte for byte. When every shard is committed, rank 0 writes `sizes.json`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
import time

from PIL import Image

from .. import checkpoint as ckpt
from ..captioning.plugins import CaptionerContext, load_captioner, load_fuser
from ..data.loader import IMAGE_EXTS
from ..data.sources import ShardSource
from ..data.writer import merge_sizes
from ..gen.clipfleet.v1 import worker_pb2 as pb
from .common import TaskContext

# How often a rank with nothing leased asks again while other ranks finish their shards.
WAIT_POLL_SECONDS = 0.25


class _HashingFile(ckpt._HashingWriter):
    """checkpoint's hashing sink, plus the tell() tarfile asks for."""

    def tell(self) -> int:
        return self.size


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _decode(members: dict[str, bytes]) -> Image.Image | None:
    for ext in IMAGE_EXTS:
        data = members.get(ext)
        if data is not None:
            try:
                img = Image.open(io.BytesIO(data))
                img.load()
                return img.convert("RGB")
            except Exception:  # an undecodable image: the sample is kept, uncaptioned
                return None
    return None


def _texts(out: object, n: int, what: str) -> list[str]:
    if not isinstance(out, list) or len(out) != n or not all(isinstance(t, str) for t in out):
        raise TypeError(f"{what} must return a list of {n} strings, got {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, list) else ""))
    # One caption a line: a caption member holds exactly one line, like an AltText.
    return [" ".join(t.split()) for t in out]


class ShardWriter:
    """Writes one output shard from one input shard (see the module docstring)."""

    def __init__(self, ctx: TaskContext, captioner, fuser, source: ShardSource, field: str, batch_size: int) -> None:
        self.ctx = ctx
        self.captioner = captioner
        self.fuser = fuser
        self.source = source
        self.field = field
        self.batch_size = batch_size
        self.batches = 0  # batches this rank captioned (the fault hooks' step)
        self.uncaptioned = 0

    def write(self, url: str, out: str) -> tuple[str, int, int]:
        """Writes and commits `out` on disk; returns (sha256, bytes, samples)."""
        a = self.ctx.assignment
        # Anything a dead rank left for this output (a temp file, a torn or uncommitted shard) is replaced.
        for stale in glob.glob(glob.escape(out) + ".tmp-*"):
            os.remove(stale)
        tmp = f"{out}.tmp-a{a.attempt}-r{a.rank}"
        index = self.source.open(url)
        n = index.num_samples
        with open(tmp, "wb") as raw:
            hf = _HashingFile(raw)
            with tarfile.open(fileobj=hf, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
                for start in range(0, n, self.batch_size):
                    ids = list(range(start, min(n, start + self.batch_size)))
                    samples = [index.read(i) for i in ids]
                    images = [_decode(m) for m in samples]
                    ok = [k for k, img in enumerate(images) if img is not None]
                    alts = [samples[k].get("txt", b"").decode("utf-8", errors="replace").strip() for k in ok]
                    captions: dict[int, str] = {}
                    if ok:
                        caps = _texts(self.captioner.caption([images[k] for k in ok], alts), len(ok), "caption()")
                        fused = _texts(self.fuser.fuse(caps, alts), len(ok), "fuse()")
                        captions = dict(zip(ok, fused))
                    self.uncaptioned += len(ids) - len(ok)
                    for k, i in enumerate(ids):
                        key = index.key(i)
                        for ext in index.extensions(i):
                            if ext == self.field:
                                continue  # replaced by the new caption
                            data = samples[k][ext]
                            tar.addfile(_member_info(f"{key}.{ext}", len(data)), io.BytesIO(data))
                        if k in captions:
                            data = (captions[k] + "\n").encode("utf-8")
                            tar.addfile(_member_info(f"{key}.{self.field}", len(data)), io.BytesIO(data))
                    self.batches += 1
                    self.ctx.fault.before_update(self.batches)
            raw.flush()
            os.fsync(raw.fileno())
        sha, size = hf.hexdigest(), hf.size
        os.replace(tmp, out)
        ckpt.fsync_path(os.path.dirname(out) or ".")
        return sha, size, n


def _stopping(ctx: TaskContext) -> bool:
    c = ctx.agent.commands
    with c.lock:
        return c.stop_at is not None or c.fenced is not None


def run(ctx: TaskContext) -> None:
    cfg, a = ctx.cfg, ctx.assignment
    rc = cfg["recaption"]
    out_dir = rc["out"]
    field = rc["field"]
    os.makedirs(out_dir, exist_ok=True)
    pctx = CaptionerContext(device=ctx.device, seed=int(cfg["seed"]), rank=ctx.rank, world_size=ctx.world_size, run_dir=a.run_dir)
    ctx.phase(0, "loading")
    captioner = load_captioner(json.loads(a.captioner_json), pctx)
    fuser = load_fuser(json.loads(a.fusion_json), pctx)
    writer = ShardWriter(ctx, captioner, fuser, ShardSource.from_cfg(cfg), field, int(cfg["captioner"]["batch_size"]))
    ctx.phase(0, "training")
    commit: pb.RecaptionCommit | None = None
    written = 0
    while True:
        reply = ctx.agent.lease(commit)
        commit = None
        if _stopping(ctx):
            # A stop (cancel, SIGTERM of the gang): the shard just reported is committed; a new lease is dropped
            # (leases die with the attempt) and the next attempt takes it.
            print("clipfleet worker: stop requested: leaving after the last committed shard", flush=True)
            return
        if reply.granted:
            t0 = time.monotonic()
            sha, size, samples = writer.write(reply.input_url, reply.output)
            written += 1
            print(f"clipfleet worker: wrote shard {reply.shard} -> {reply.output} ({size} bytes, sha256 {sha[:12]})", flush=True)
            # The output is in place; the test hook `commitgate@N` acts here (e.g. truncates it).
            ctx.fault.before_commit(written)
            on_disk = (ckpt.sha256_file(reply.output), os.path.getsize(reply.output))
            if on_disk != (sha, size):
                raise RuntimeError(
                    f"output shard {reply.output} changed on disk after it was written "
                    f"({on_disk[1]} bytes, sha256 {on_disk[0][:12]}; wrote {size} bytes, sha256 {sha[:12]}): not committed"
                )
            seconds = time.monotonic() - t0
            print(f"clipfleet worker: recaptioned shard {reply.shard} ({samples} samples, {seconds:.2f} s); committing", flush=True)
            commit = pb.RecaptionCommit(shard=reply.shard, output=reply.output, sha256=sha, bytes=size, samples=samples, seconds=seconds)
            continue
        if reply.done:
            break
        time.sleep(WAIT_POLL_SECONDS)  # others still hold leases; a shard may come back if one fails
    if ctx.rank == 0:
        sizes: dict[str, int] = {}
        for s in reply.shards:
            st = os.stat(s.output)
            if st.st_size != s.bytes:
                raise RuntimeError(f"committed output shard {s.output} is {st.st_size} bytes, {s.bytes} were committed")
            sizes[os.path.basename(s.output)] = int(s.samples)
        merge_sizes(out_dir, sizes)
        print(f"clipfleet worker: recaption done: {len(sizes)} shards, {sum(sizes.values())} samples in {out_dir}", flush=True)
    if writer.uncaptioned:
        print(f"clipfleet worker: {writer.uncaptioned} samples had no decodable image and were written without {field}", flush=True)
    ctx.report_finished(int(reply.total), "", {"recaption/shards": float(reply.total), "recaption/samples": float(sum(s.samples for s in reply.shards))})
