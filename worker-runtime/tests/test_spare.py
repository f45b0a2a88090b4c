"""Warm spares (spare.py): the hand-over line is hostile input, checked before it becomes the environment.

Unit checks of parse_handover, and real `python -m clipfleet_worker spare`
processes: ready once imported, quiet exit on a closed stdin, refusal of a
rank of another job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipfleet_worker.spare import MAX_HANDOVER_BYTES, MAX_VARS, HandoverError, parse_handover

OWN = {"CLIPFLEET_JOB_ID": "j-1", "CLIPFLEET_STAGE": "main"}
RANK = {**OWN, "CLIPFLEET_RANK": "1", "CLIPFLEET_ATTEMPT": "2", "CLIPFLEET_TOKEN": "t" * 32, "CLIPFLEET_ADDR": "127.0.0.1:1", "RANK": "1"}


def _line(env: object) -> bytes:
    return json.dumps({"env": env}).encode()


def test_a_rank_of_its_own_stage_is_taken() -> None:
    assert parse_handover(_line(RANK), OWN) == RANK


@pytest.mark.parametrize(
    "line, says",
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", 'no "env"'),
        (json.dumps({"env": "x"}).encode(), 'no "env"'),
        (_line({**RANK, "bad-name": "x"}), "not a variable name"),
        (_line({**RANK, "X": 1}), "expected a string"),
        (_line({**RANK, "X": "a\0b"}), "without NUL"),
        (_line({k: v for k, v in RANK.items() if k != "CLIPFLEET_TOKEN"}), "lacks CLIPFLEET_TOKEN"),
        (_line({**RANK, "CLIPFLEET_JOB_ID": "j-2"}), "only joins the stage it was started for"),
        (_line({**RANK, "CLIPFLEET_STAGE": "other"}), "only joins the stage it was started for"),
        (_line({**RANK, **{f"V{i}": "x" for i in range(MAX_VARS)}}), "more than"),
        (b"x" * (MAX_HANDOVER_BYTES + 1), "longer than"),
    ],
)
def test_hostile_hand_overs_are_refused_naming_why(line: bytes, says: str) -> None:
    with pytest.raises(HandoverError, match=says):
        parse_handover(line, OWN)


def _spare() -> subprocess.Popen[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, **OWN, "PYTHONPATH": root}
    p = subprocess.Popen([sys.executable, "-m", "clipfleet_worker", "spare"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    assert p.stdout is not None
    assert p.stdout.readline().startswith("clipfleet worker: spare ready at "), "imports done, then waiting"
    return p


def test_a_spare_whose_stdin_closes_exits_quietly() -> None:
    p = _spare()
    out, err = p.communicate("", timeout=60)
    assert p.returncode == 0, err


def test_a_spare_refuses_a_rank_of_another_job_and_never_runs_it() -> None:
    p = _spare()
    out, err = p.communicate(_line({**RANK, "CLIPFLEET_JOB_ID": "j-other"}).decode() + "\n", timeout=60)
    assert p.returncode == 2
    assert "spare refused its hand-over" in err and "only joins the stage it was started for" in err
    assert "becomes rank" not in out
