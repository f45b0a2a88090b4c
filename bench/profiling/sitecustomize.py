"""Profiling hook for benchmark runs: cProfile a whole Python process without touching its code.

Put this directory on PYTHONPATH and set CLIPFLEET_BENCH_CPROFILE=DIR; every
Python process started with that environment (worker ranks under `clipfleet
run` inherit it from the CLI, by-hand ranks from their launcher) profiles its
main thread from start-up and writes DIR/<pid>.prof at exit. Read them with
bench/profiling/compare.py (or pstats). Unset, it does nothing.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("CLIPFLEET_BENCH_CPROFILE")
if _DIR:
    import atexit
    import cProfile

    _profile = cProfile.Profile()

    def _dump() -> None:
        _profile.disable()
        os.makedirs(_DIR, exist_ok=True)
        _profile.dump_stats(os.path.join(_DIR, f"{os.getpid()}.prof"))

    atexit.register(_dump)
    _profile.enable()
