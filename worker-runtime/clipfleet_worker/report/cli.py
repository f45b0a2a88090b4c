"""`python -m clipfleet_worker report`: argument parsing and the command (user errors exit 2)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ClipfleetWorkerError
from .common import EXIT_USER_ERROR, load
from .job import write_report
from .jobs import write_jobs_report


def add_subcommand(sub: "argparse._SubParsersAction") -> None:
    """Register `report` on the subparsers of `python -m clipfleet_worker` (see __main__.py)."""
    p = sub.add_parser("report", help="render plots and index.md/index.html from a report.json (`clipfleet report` writes it)")
    p.add_argument("--data", required=True, help="report.json written by `clipfleet report`")
    p.add_argument("--out", required=True, help="directory for the PNGs, index.md and index.html")
    p.add_argument("--json", action="store_true", help="print what was written as one JSON line")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    """Runs a parsed `report` command; user errors print one line and exit 2."""
    try:
        data = load(args.data)
        report = write_jobs_report(data, args.out) if "jobs" in data else write_report(data, args.out)
    except ClipfleetWorkerError as err:
        print(f"clipfleet report: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.quiet:
        return 0
    if args.json:
        print(
            json.dumps(
                {
                    "out": report.out,
                    "indexMd": report.index_md,
                    "indexHtml": report.index_html,
                    "plots": [{"file": p.file, "caption": p.caption, "width": p.width, "height": p.height} for p in report.plots],
                },
                sort_keys=True,
            )
        )
    else:
        print(f"report: {report.index_html} and {report.index_md}, {len(report.plots)} plot(s) in {report.out}")
    return 0
