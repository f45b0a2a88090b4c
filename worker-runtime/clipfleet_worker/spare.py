"""A warm spare (`cluster.spares`, docs/recovery.md): a process that imports torch and the runtime, then waits to become a rank.

The orchestrator's launcher starts it beside a stage's ranks with that stage's
environment (no token) and, when a later attempt needs a rank on this node,
writes one JSON line on its stdin: `{"env": {...}}`, the rank's environment
with its token. The spare checks it (bounded, strings only, the same job and
stage it was started for), takes it as its own environment and runs the rank
as `python -m clipfleet_worker run` would, minus the seconds of imports. An
empty stdin (the launcher closed it, or died) ends the spare quietly.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Mapping

from .preempt import PreemptionWatch

MAX_HANDOVER_BYTES = 256 * 1024
MAX_VARS = 1024
MAX_VALUE_CHARS = 64 * 1024
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The variables that bind a spare to what it was started for, and those a rank cannot run without.
_BOUND = ("CLIPFLEET_JOB_ID", "CLIPFLEET_STAGE")
_REQUIRED = ("CLIPFLEET_RANK", "CLIPFLEET_ATTEMPT", "CLIPFLEET_TOKEN", "CLIPFLEET_ADDR")


class HandoverError(ValueError):
    """The hand-over line is not a rank of this spare's stage: the spare exits without running it."""


def parse_handover(line: bytes, own: Mapping[str, str]) -> dict[str, str]:
    """The rank environment in a hand-over line, checked against the spare's own (`own`: its environment)."""
    if len(line) > MAX_HANDOVER_BYTES:
        raise HandoverError(f"hand-over line longer than {MAX_HANDOVER_BYTES} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise HandoverError(f"hand-over line is not JSON: {err}") from None
    env = obj.get("env") if isinstance(obj, dict) else None
    if not isinstance(env, dict):
        raise HandoverError('hand-over line has no "env" object')
    if len(env) > MAX_VARS:
        raise HandoverError(f"hand-over has {len(env)} variables, more than {MAX_VARS}")
    out: dict[str, str] = {}
    for k, v in env.items():
        if not isinstance(k, str) or not _KEY.match(k):
            raise HandoverError(f"hand-over variable name {str(k)[:40]!r} is not a variable name")
        if not isinstance(v, str) or len(v) > MAX_VALUE_CHARS or "\0" in v:
            raise HandoverError(f"hand-over variable {k}: expected a string without NUL of at most {MAX_VALUE_CHARS} characters")
        out[k] = v
    for k in _REQUIRED:
        if not out.get(k):
            raise HandoverError(f"hand-over lacks {k}")
    for k in _BOUND:
        if out.get(k) != own.get(k):
            raise HandoverError(f"{k} {out.get(k)!r} is not this spare's ({own.get(k)!r}): a spare only joins the stage it was started for")
    return out


def run_spare(preemption: PreemptionWatch | None) -> int:
    """Imports what a rank needs, says so, waits for the hand-over, then runs the rank."""
    from .lifecycle import die_with_parent

    die_with_parent()
    from . import worker
    from .tasks import pretrain  # noqa: F401  (the common task's models and loader, imported ahead too)

    print(f"clipfleet worker: spare ready at {time.time():.3f}", flush=True)
    raw = sys.stdin.buffer.readline(MAX_HANDOVER_BYTES + 1)
    if not raw:
        return 0
    try:
        env = parse_handover(raw.rstrip(b"\n"), os.environ)
    except HandoverError as err:
        print(f"clipfleet worker: spare refused its hand-over: {err}", file=sys.stderr, flush=True)
        return 2
    os.environ.update(env)
    print(f"clipfleet worker: spare pid {os.getpid()} becomes rank {env['CLIPFLEET_RANK']} of attempt {env['CLIPFLEET_ATTEMPT']}", flush=True)
    print(f"clipfleet worker: phase started at {time.time():.3f}", flush=True)
    return worker.main(preemption)
