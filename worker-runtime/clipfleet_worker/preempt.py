"""The preemption signal of a rank: SIGUSR1, or the one CLIPFLEET_PREEMPT_SIGNAL names (docs/preemption.md).

Standard library only, so that `python -m clipfleet_worker run` installs the
handler before it imports grpc and torch (seconds during which the signal's
default action would kill the rank). What a signal turns into (a
PreemptRequested on the session, lifecycle.request_preemption) is handed in
by `attach` once the session is open.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any, Callable, Mapping

from .errors import ConfigError

DEFAULT_PREEMPT_SIGNAL = "USR1"
# Signals a launcher may name in CLIPFLEET_PREEMPT_SIGNAL: catchable, not fatal by nature, not taken by
# something else here (TERM is the graceful stop, USR2 the stack dump, CHLD/PIPE/... the runtime's own).
# The orchestrator's domain/preemption.ts holds the same list (a unit test compares them).
PREEMPT_SIGNALS = ("USR1", "HUP", "INT", "ALRM", "URG", "PWR", "XCPU")


def preempt_signal(value: str) -> signal.Signals:
    """The signal CLIPFLEET_PREEMPT_SIGNAL names ("USR1", "SIGUSR1"; empty: SIGUSR1); ConfigError for any other."""
    name = (value.strip() or DEFAULT_PREEMPT_SIGNAL).upper()
    bare = name[3:] if name.startswith("SIG") else name
    if bare not in PREEMPT_SIGNALS:
        raise ConfigError(f"expected one of {', '.join(PREEMPT_SIGNALS)} (TERM is the graceful stop, USR2 the stack dump), got {value!r}", "CLIPFLEET_PREEMPT_SIGNAL")
    return signal.Signals["SIG" + bare]


def _say(line: str) -> None:
    """One line on stderr from a signal handler: os.write, since print() may be mid-write in the interrupted frame."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


class PreemptionWatch:
    """The preemption signal, turned into a request to the orchestrator.

    Installed as early as the process can (a rank that starts while its
    allocation is being preempted gets the signal at any moment); a signal
    that arrives before the session is open is remembered and sent once
    `attach` is called. The orchestrator answers with a StopAt (preempt) for
    every rank; a signal while a stop is already under way, or after the
    attempt was fenced, changes nothing (`request` checks). Every rank of a
    Slurm step gets the signal: the orchestrator acts on the first request.

    The handler takes no lock: it runs in the main thread between two
    bytecodes, possibly inside the very queue.put or Commands lock the
    request needs. It only writes a byte to a pipe; a thread makes the
    request.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.error: ConfigError | None = None
        self.signum: signal.Signals | None = None
        self.pending = ""
        self._rank = -1
        self._wake = -1
        self._request: Callable[[str], None] | None = None
        try:
            self.signum = preempt_signal(environ.get("CLIPFLEET_PREEMPT_SIGNAL", ""))
        except ConfigError as err:
            self.error = err  # raised by attach(), once the session can carry the report

    def install(self) -> None:
        if self.signum is not None:
            signal.signal(self.signum, self._on_signal)

    def attach(self, rank: int, request: Callable[[str], None]) -> None:
        """The session is open: a bad CLIPFLEET_PREEMPT_SIGNAL is raised now, a remembered signal requested."""
        if self.error is not None:
            raise self.error
        self._rank = rank
        self._request = request
        read, self._wake = os.pipe()
        threading.Thread(target=self._forward, args=(read,), name="clipfleet-preempt", daemon=True).start()
        if self.pending:
            request(self.pending)

    def _reason(self) -> str:
        assert self.signum is not None
        return f"{self.signum.name} on rank {self._rank if self._rank >= 0 else '?'} ({socket.gethostname()})"

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._wake < 0:
            self.pending = self._reason()
            _say(f"clipfleet worker: {self.signum.name if self.signum else signum}: preemption noted; asked for once the session is open")
            return
        try:
            os.write(self._wake, b"p")
        except OSError:
            pass

    def _forward(self, read: int) -> None:
        """The thread that makes a request for each signal the handler noted."""
        request = self._request
        assert request is not None
        while os.read(read, 64):
            request(self._reason())
