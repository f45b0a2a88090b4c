"""python -m clipfleet_worker {run,synth,convert,info,report,openclip,plugins}."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

from .preempt import PreemptionWatch

# When the interpreter reached our code: the first phase of a rank's start-up (bench/recovery.ts reads it).
_STARTED_AT = time.time()


def _info() -> int:
    """What `clipfleet nodes check` asks a node: versions, devices, free disk (one JSON line)."""
    from . import __version__

    out: dict[str, object] = {"runtime_version": __version__, "python": platform.python_version(), "executable": sys.executable}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda_devices"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as err:  # report, do not crash: this is a diagnostic
        out["torch"] = None
        out["torch_error"] = str(err)
        out["cuda_devices"] = 0
    out["free_bytes"] = shutil.disk_usage(os.getcwd()).free
    print(json.dumps(out))
    return 0


def _add_openclip(sub: "argparse._SubParsersAction") -> None:
    """`openclip export` and `openclip check` (openclip.py; registered here so the other commands do not import torch)."""
    p = sub.add_parser("openclip", help="open_clip interop: export a checkpoint, check open_clip weights against a model config")
    ops = p.add_subparsers(dest="openclip_command", required=True)
    e = ops.add_parser("export", help="write an open_clip model directory (clipfleet export --format open_clip runs this)")
    e.add_argument("--checkpoint", required=True, help="a committed checkpoint directory (its model.pt)")
    e.add_argument("--model-json", required=True, help="the stage's resolved model config (JSON)")
    e.add_argument("--meta-json", default="{}", help="where the weights came from (job, stage, step), kept in the config")
    e.add_argument("--out", required=True, help="the export directory (created)")
    e.add_argument("--json", action="store_true", help="print what was written as one JSON line")
    c = ops.add_parser("check", help="check an open_clip weights file or export directory against a model config")
    c.add_argument("--ref", required=True, help="an open_clip export directory or weights file")
    c.add_argument("--model-json", required=True, help="the stage's resolved model config (JSON)")


def main(argv: list[str] | None = None) -> int:
    preemption = None
    if (sys.argv[1:] if argv is None else argv)[:1] in (["run"], ["spare"]):
        # A rank: before the imports below (torch: seconds during which the signal's default action would kill it).
        preemption = PreemptionWatch(os.environ)
        preemption.install()
    parser = argparse.ArgumentParser(prog="python -m clipfleet_worker", description="clipfleet worker runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run one rank (started by the orchestrator)")
    sub.add_parser("spare", help="a warm spare: import torch, then become the rank written on stdin (started by the orchestrator)")
    sub.add_parser("info", help="print versions, CUDA devices and free disk as JSON")
    from .cli_data import add_subcommands, run as run_data_command
    from .report import add_subcommand as add_report_subcommand

    add_subcommands(sub)
    add_report_subcommand(sub)
    _add_openclip(sub)
    plugins = sub.add_parser("plugins", help="recaption plugins: check that an entry point imports")
    plugin_ops = plugins.add_subparsers(dest="plugins_command", required=True)
    plugin_ops.add_parser("check", help="exit 0 when module:factory imports and is callable, else 2").add_argument("entry_point")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(f"clipfleet worker: phase started at {_STARTED_AT:.3f}", flush=True)
        from .worker import main as run_worker

        return run_worker(preemption)
    if args.command == "spare":
        from .spare import run_spare

        return run_spare(preemption)
    if args.command == "info":
        return _info()
    if args.command == "plugins":
        from .captioning.plugins import check_main

        return check_main(args.entry_point)
    if args.command == "openclip":
        from .openclip import run as run_openclip

        return run_openclip(args)
    if args.command == "report":
        from .report import run as run_report

        return run_report(args)
    return run_data_command(args)


if __name__ == "__main__":
    sys.exit(main())
