"""python -m clipfleet_worker {run,synth,convert,info,report}."""

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


def main(argv: list[str] | None = None) -> int:
    preemption = None
    if (sys.argv[1:] if argv is None else argv)[:1] == ["run"]:
        # A rank: before the imports below (torch: seconds during which the signal's default action would kill it).
        preemption = PreemptionWatch(os.environ)
        preemption.install()
    parser = argparse.ArgumentParser(prog="python -m clipfleet_worker", description="clipfleet worker runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run one rank (started by the orchestrator)")
    sub.add_parser("info", help="print versions, CUDA devices and free disk as JSON")
    from .cli_data import add_subcommands, run as run_data_command
    from .report import add_subcommand as add_report_subcommand

    add_subcommands(sub)
    add_report_subcommand(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        print(f"clipfleet worker: phase started at {_STARTED_AT:.3f}", flush=True)
        from .worker import main as run_worker

        return run_worker(preemption)
    if args.command == "info":
        return _info()
    if args.command == "report":
        from .report import run as run_report

        return run_report(args)
    return run_data_command(args)


if __name__ == "__main__":
    sys.exit(main())
