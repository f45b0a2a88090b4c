"""`make gpu-check`: the GPU path, run for real through `clipfleet run` on a machine with CUDA.

What it checks (docs/benchmarks.md, "GPU check"):

1. A 1-rank ViT-B/16 CLIP pretrain at 224 px in bf16 (NCCL, one GPU,
   deterministic algorithms on), 50 steps on synthetic data: the loss falls;
   samples/s from the rank's step lines; peak GPU memory from its log.
2. The same spec with rank 0 killed by SIGKILL mid-run: the orchestrator
   restarts it from the last committed checkpoint, and the final parameters'
   sha256 equals the uninterrupted run's.
3. With 2 or more GPUs: the same spec on 2 ranks, one GPU each (NCCL): the
   loss falls, each rank sees exactly one CUDA device.
4. Forward+backward throughput of the same image tower against torchvision's
   (or timm's) ViT-B/16 on the same GPU, bf16 autocast, when either is
   importable: images/s and their ratio. And SDPA against the spelled-out
   attention on the GPU (max abs difference).

Figures go to OUT/gpu-check.json and OUT/gpu-check.md (a table to paste into
docs/benchmarks.md). Without CUDA it says so and exits 0. `--cpu-smoke` runs
the same flow on CPU with the tiny presets (gloo, fp32), so the driver itself
is tested where no GPU is (tests/e2e/gpu-check.test.ts).

Exit status: 0 every check that ran passed (or no CUDA); 1 a check failed;
2 bad usage or the build missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "worker-runtime"))

import torch  # noqa: E402  (after the path: the worker package is imported below)

NO_CUDA = "gpu-check: needs CUDA: torch {version} sees no CUDA device on this machine; nothing was run (see docs/benchmarks.md, \"GPU check\")"


def torch_major() -> int:
    return int(torch.__version__.split(".")[0])


def log(msg: str) -> None:
    print(f"gpu-check: {msg}", flush=True)


# --- specs -------------------------------------------------------------------------------------


def make_spec(name: str, smoke: bool, workers: int, steps: int, batch: int, compiled: bool = False) -> dict[str, Any]:
    """The check's job spec: ViT-B/16 at 224 px in bf16 on GPUs; the tiny presets in fp32 for --cpu-smoke."""
    if smoke:
        model = {"image": "vit-tiny", "text": {"preset": "text-tiny", "context_length": 48}, "embed_dim": 64, "tokenizer": "byte"}
        synth = {"out": "data", "train": 512, "val": 16, "shards": 4, "size": 32, "seed": 0}
        cluster: dict[str, Any] = {"workers": workers}
        precision, lr = "fp32", 1e-3
    else:
        model = {"image": "vit-b16", "text": {"preset": "text-base", "context_length": 77}, "embed_dim": 512, "tokenizer": "byte"}
        synth = {"out": "data", "train": 2048, "val": 16, "shards": 8, "size": 224, "seed": 0}
        cluster = {"workers": workers, "min_workers": workers, "gpus_per_worker": 1, "backend": "nccl"}
        precision, lr = "bf16", 5e-4
    return {
        "name": name,
        "task": "pretrain",
        "model": model,
        "data": {"synth": synth, "captions": {"alt": 0.5, "vecap": 0.5}, "loader_threads": 2 if smoke else 6, "prefetch_steps": 8},
        # deterministic for bit-exact restarts (it costs the fused attention kernels); the compiled
        # run is not, so it shows what a run without that guarantee gets.
        "train": {"steps": steps, "batch_size": batch, "lr": lr, "warmup_steps": 5, "precision": precision,
                  "deterministic": not compiled, "compile": compiled},
        "cluster": cluster,
        "checkpoint": {"every_steps": 10},
        "failure": {"backoff_seconds": 0.2},
    }


def write_spec(work: Path, spec: dict[str, Any]) -> Path:
    # JSON is YAML: the spec loader reads it as is.
    path = work / f"{spec['name']}.yaml"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


# --- the CLI -----------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The CLI's environment: its ranks run on this interpreter (the one with CUDA torch), whatever is first on PATH."""
    return {**os.environ, "CLIPFLEET_PYTHON": sys.executable}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(ROOT / "bin" / "clipfleet"), *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


class Run:
    """`clipfleet run SPEC --json` in the background, its stdout and stderr in files beside the state dir."""

    def __init__(self, spec: Path, state: Path) -> None:
        state.parent.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = state.with_suffix(".stdout"), state.with_suffix(".stderr")
        with open(self.stdout_path, "w") as so, open(self.stderr_path, "w") as se:
            self.proc = subprocess.Popen(["node", str(ROOT / "bin" / "clipfleet"), "run", str(spec), "--json", "--state-dir", str(state)],
                                         cwd=ROOT, env=cli_env(), stdout=so, stderr=se, stdin=subprocess.DEVNULL)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def job_id(self, timeout: float) -> str:
        """The job id from run's stderr ("clipfleet: job j-...")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"clipfleet: job (j-[0-9a-f-]+)", self.stderr())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("no job id from clipfleet run; stderr:\n" + self.stderr()[-2000:])

    def stop(self) -> None:
        """SIGTERM (run cancels its job and tears the gang down), SIGKILL after a minute."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def finish(self, timeout: float) -> dict[str, Any]:
        """The run's JSON summary once it exits 0; RuntimeError otherwise."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"clipfleet run took over {timeout:.0f} s; stderr tail:\n{self.stderr()[-2000:]}")
        if self.proc.returncode != 0:
            raise RuntimeError(f"clipfleet run exited {self.proc.returncode}; stderr tail:\n{self.stderr()[-3000:]}")
        return json.loads(self.stdout_path.read_text())


def status(job: str, state: Path) -> dict[str, Any] | None:
    r = cli("status", job, "--json", "--state-dir", str(state), timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else None


def job_logs(job: str, state: Path) -> str:
    r = cli("logs", job, "--state-dir", str(state), timeout=120)
    return r.stdout + r.stderr


STEP_LINE = re.compile(r"step (\d+)/(\d+) .*? ([0-9.]+) samples/s")
PEAK_LINE = re.compile(r"cuda peak memory allocated (\d+) bytes")
PATH_LINE = re.compile(r"clipfleet worker: path: (.*)")
REGISTERED = re.compile(r"rank (\d+) registered .*?, (\d+) CUDA devices\)")


def samples_per_second(logs: str, skip: int) -> float | None:
    """Median samples/s of rank 0's step lines after the first `skip` steps (start-up, cuDNN/cuBLAS warm-up)."""
    rates = [float(m.group(3)) for m in STEP_LINE.finditer(logs) if int(m.group(1)) > skip]
    return statistics.median(rates) if rates else None


def peak_memory(logs: str) -> int | None:
    peaks = [int(m.group(1)) for m in PEAK_LINE.finditer(logs)]
    return max(peaks) if peaks else None


# --- the checks --------------------------------------------------------------------------------


class Checks:
    """Results as they come; every check that ran is pass or fail, with its figures."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    def record(self, name: str, ok: bool | None, **figures: Any) -> None:
        self.results[name] = {"ok": ok, **figures}
        word = {True: "ok", False: "FAILED", None: "skipped"}[ok]
        log(f"{name}: {word} {json.dumps(figures, default=str)}")

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.results.items() if v["ok"] is False]


def uninterrupted(checks: Checks, work: Path, spec: Path, name: str, budget: float, gpu: bool, expect: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """One run to its end: passes if it succeeds, the loss falls, (GPU) each rank sees one device, and
    every rank's path line (accel.path_line) holds each of `expect`."""
    state = work / "state" / name
    t0 = time.monotonic()
    try:
        summary = Run(spec, state).finish(budget)
    except (RuntimeError, json.JSONDecodeError) as err:
        checks.record(name, False, error=str(err))
        return None
    logs = job_logs(summary["jobId"], state)
    first, last = summary.get("firstLoss"), summary.get("finalLoss")
    devices = sorted({int(m.group(2)) for m in REGISTERED.finditer(logs)})
    ok = summary["state"] == "SUCCEEDED" and first is not None and last is not None and last < first
    if gpu:
        ok = ok and devices == [1]  # one GPU per rank: CUDA_VISIBLE_DEVICES narrowed by the launcher
    paths = sorted({m.group(1).strip() for m in PATH_LINE.finditer(logs)})
    ok = ok and bool(paths) and all(e in p for p in paths for e in expect)
    checks.record(
        name,
        ok,
        job=summary["jobId"],
        first_loss=first,
        final_loss=last,
        steps=summary.get("steps"),
        samples_per_second=samples_per_second(logs, skip=5),
        peak_gpu_memory_bytes=peak_memory(logs),
        cuda_devices_per_rank=devices,
        path=paths,
        wall_seconds=round(time.monotonic() - t0, 1),
        final_params_sha256=summary.get("finalParamsSha256"),
    )
    return summary


def kill_and_resume(checks: Checks, work: Path, spec: Path, reference: dict[str, Any] | None, kill_at: int, budget: float) -> None:
    name = "kill9-resume"
    state = work / "state" / name
    t0 = time.monotonic()
    run = Run(spec, state)
    job = None
    try:
        job = run.job_id(180)
        victim = _wait_for_step(job, state, kill_at, budget)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            raise RuntimeError(f"rank 0 (pid {victim}) was gone before the kill: the run ended first") from None
        killed_at = time.monotonic()
        summary = run.finish(budget)
    except (RuntimeError, json.JSONDecodeError, TimeoutError) as err:
        run.stop()
        checks.record(name, False, error=str(err), job=job)
        return
    v = status(summary["jobId"], state) or {}
    attempts = ((v.get("job") or {}).get("stages") or [{}])[0].get("attempts") or []
    resumed = attempts[-1].get("resumedFromStep") if attempts else None
    same = reference is not None and summary.get("finalParamsSha256") == reference.get("finalParamsSha256")
    ok = summary["state"] == "SUCCEEDED" and summary.get("restarts") == 1 and same
    checks.record(
        name,
        ok,
        job=summary["jobId"],
        restarts=summary.get("restarts"),
        resumed_from_step=resumed,
        final_params_sha256=summary.get("finalParamsSha256"),
        same_as_uninterrupted=same,
        recovery_to_end_seconds=round(time.monotonic() - killed_at, 1),
        wall_seconds=round(time.monotonic() - t0, 1),
    )


def _wait_for_step(job: str, state: Path, step: int, timeout: float) -> int:
    """Rank 0's pid once the job has passed `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = status(job, state)
        stage = ((v or {}).get("job") or {}).get("stages", [{}])[0]
        if ((stage.get("progress") or {}).get("step") or 0) >= step:
            ranks = (stage.get("attempts") or [{}])[-1].get("ranks") or []
            pid = next((r.get("pid") for r in ranks if r.get("rank", 0) == 0), 0)
            if pid:
                return int(pid)
        time.sleep(0.25)
    raise TimeoutError(f"job {job} did not reach step {step} in {timeout:.0f} s")


# --- model-level throughput ---------------------------------------------------------------------


def reference_vit() -> tuple[str, Any] | None:
    """torchvision's ViT-B/16, else timm's, untrained; None when neither is importable."""
    try:
        import torchvision

        return f"torchvision {torchvision.__version__} vit_b_16", torchvision.models.vit_b_16(weights=None)
    except Exception:  # not installed, or an ABI mismatch with this torch
        pass
    try:
        import timm

        return f"timm {timm.__version__} vit_base_patch16_224", timm.create_model("vit_base_patch16_224", pretrained=False)
    except Exception:
        return None


def images_per_second(model: torch.nn.Module, device: torch.device, batch: int, size: int, iters: int, warmup: int) -> float:
    """Forward+backward of an image model on random images under bf16 autocast (fp32 on CPU)."""
    model = model.to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(device_type="cpu", enabled=False)

    def step() -> None:
        with amp:
            y = model(x)
        y.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def throughput(checks: Checks, device: torch.device, smoke: bool) -> None:
    from clipfleet_worker.models import build_clip, resolve_model_cfg

    image = "vit-tiny" if smoke else "vit-b16"
    size = 32 if smoke else 224
    batch, iters, warmup = (8, 3, 1) if smoke else (64, 20, 5)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # the fused attention kernels, as train.deterministic: false runs
    try:
        torch.manual_seed(0)
        ours = build_clip(resolve_model_cfg(image, "text-tiny", embed_dim=64), 259).visual
        ours_ips = images_per_second(ours, device, batch, size, iters, warmup)
        del ours
        ref = None if smoke else reference_vit()
        if ref is None:
            checks.record("throughput-vs-reference", None, ours_images_per_second=round(ours_ips, 1), batch=batch,
                          reason="neither torchvision nor timm is importable" if not smoke else "cpu smoke: no reference")
            return
        what, model = ref
        theirs_ips = images_per_second(model, device, batch, size, iters, warmup)
        checks.record(
            "throughput-vs-reference",
            True,
            reference=what,
            batch=batch,
            ours_images_per_second=round(ours_ips, 1),
            reference_images_per_second=round(theirs_ips, 1),
            ratio=round(ours_ips / theirs_ips, 3),
        )
    finally:
        torch.use_deterministic_algorithms(was)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def attention_agreement(checks: Checks, device: torch.device) -> None:
    from clipfleet_worker.models import attention as A

    if A._SDPA is None:
        checks.record("sdpa-vs-reference", None, reason=f"torch {torch.__version__} has no scaled_dot_product_attention")
        return
    torch.manual_seed(0)
    diffs = {}
    for dtype, bound in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        q, k, v = (torch.randn(8, 12, 197, 64, device=device, dtype=dtype) for _ in range(3))
        fast = A._SDPA(q, k, v)
        slow = A.attention_reference(q.float(), k.float(), v.float())
        diffs[str(dtype).replace("torch.", "")] = (float((fast.float() - slow).abs().max()), bound)
    ok = all(d <= b for d, b in diffs.values())
    checks.record("sdpa-vs-reference", ok, max_abs_diff={k: d for k, (d, _) in diffs.items()}, bounds={k: b for k, (_, b) in diffs.items()})


# --- report -------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node()}
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["bf16"] = torch.cuda.is_bf16_supported()
    node = shutil.which("node")
    env["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None
    return env


def markdown(env: dict[str, Any], checks: Checks) -> str:
    r = checks.results
    gpu = ", ".join(env.get("gpus") or ["CPU (smoke)"])
    lines = [
        f"GPU check on {gpu} (torch {env['torch']}, CUDA {env.get('cuda', '-')}), {time.strftime('%Y-%m-%d', time.gmtime())}:",
        "",
        "| check | result | figures |",
        "|---|---|---|",
    ]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    keep = ("first_loss", "final_loss", "samples_per_second", "peak_gpu_memory_bytes", "cuda_devices_per_rank", "path", "restarts",
            "resumed_from_step", "same_as_uninterrupted", "recovery_to_end_seconds", "ours_images_per_second",
            "reference_images_per_second", "ratio", "reference", "max_abs_diff", "wall_seconds", "reason", "error")
    for name, res in r.items():
        word = {True: "pass", False: "**FAIL**", None: "skipped"}[res["ok"]]
        figs = []
        for k in keep:
            if k in res and res[k] is not None:
                v = res[k]
                if k == "peak_gpu_memory_bytes":
                    k, v = "peak GPU memory GiB", round(v / 2**30, 2)
                if k == "error":
                    v = str(v).splitlines()[0][:200]
                figs.append(f"{k.replace('_', ' ')} {fmt(v)}")
        lines.append(f"| {name} | {word} | {'; '.join(figs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu-check"), help="where gpu-check.json and gpu-check.md go")
    p.add_argument("--work", default=str(ROOT / "tmp" / "gpu-check-work"), help="specs, data and state dirs (emptied first)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=64, help="global batch (per rank: batch / ranks)")
    p.add_argument("--cpu-smoke", action="store_true", help="the same flow on CPU with the tiny presets (tests the driver)")
    p.add_argument("--no-compile", action="store_true", help="skip the train.compile run")
    args = p.parse_args(argv)
    smoke = bool(args.cpu_smoke)
    if not smoke and not torch.cuda.is_available():
        print(NO_CUDA.format(version=torch.__version__), flush=True)
        return 0
    if shutil.which("node") is None or not (ROOT / "dist" / "orchestrator" / "src" / "main.js").exists():
        print("gpu-check: needs node and the build (make build; dist/ and node_modules/ beside bin/clipfleet)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t_start = time.monotonic()
    env = environment()
    log(f"environment {json.dumps(env)}")
    checks = Checks()
    device = torch.device("cuda", 0) if not smoke else torch.device("cpu")
    gpus = torch.cuda.device_count() if not smoke else 0

    steps, batch = (60, 16) if smoke else (args.steps, args.batch)
    gpu = not smoke
    spec1 = write_spec(work, make_spec("gpu-check-1rank", smoke, 1, steps, batch))
    budget = 300.0 if smoke else 240.0
    # The path each run must take: deterministic bf16 runs use the math attention (bit-exact
    # restarts), the compiled run the fused kernels; AdamW is fused on torch 2.
    fused = ("AdamW fused",) if torch_major() >= 2 else ()
    exact = ("bf16 autocast", "attention math", "compile off", *fused) if gpu else ("fp32", "compile off")
    reference = uninterrupted(checks, work, spec1, "pretrain-1rank", budget, gpu, exact)
    # Early enough that `status` polling (a CLI call each) cannot miss the run's end; the
    # kill lands after the step-10 checkpoint, so the resume starts from a committed one.
    if reference is None:
        # Whatever broke the first run breaks the others: spend the time on the model-level checks.
        checks.record("kill9-resume", None, reason="pretrain-1rank failed")
    else:
        kill_and_resume(checks, work, spec1, reference, kill_at=12, budget=budget)
    if gpus >= 2 and reference is not None:
        spec2 = write_spec(work, make_spec("gpu-check-2rank", smoke, 2, steps, batch))
        uninterrupted(checks, work, spec2, "pretrain-2rank-nccl", budget, gpu, exact)
    elif gpu:
        checks.record("pretrain-2rank-nccl", None, reason="pretrain-1rank failed" if reference is None else f"{gpus} GPU on this machine; 2 needed")
    if gpu:
        attention_agreement(checks, device)
    throughput(checks, device, smoke)
    if gpu and not args.no_compile and reference is not None:
        # Last, and only with time left: the first torch.compile of a ViT-B/16 may take a minute or more.
        if time.monotonic() - t_start < 270:
            spec3 = write_spec(work, make_spec("gpu-check-compile", smoke, 1, steps, batch, compiled=True))
            uninterrupted(checks, work, spec3, "pretrain-1rank-compile", budget, gpu, ("bf16 autocast", "attention sdpa", "compile on", *fused))
        else:
            checks.record("pretrain-1rank-compile", None, reason="the checks before it took over 4.5 minutes: no time for a first torch.compile within 8")

    result = {"environment": env, "checks": checks.results, "wall_seconds": round(time.monotonic() - t_start, 1), "failed": checks.failed}
    (out / "gpu-check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(env, checks))
    log(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'} in {result['wall_seconds']} s")
    print((out / "gpu-check.md").read_text(), flush=True)
    if checks.failed:
        log(f"FAILED: {', '.join(checks.failed)}")
        return 1
    log("every check that ran passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
