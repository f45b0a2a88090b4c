"""Rendezvous order (distributed.py): a rank other than 0 connects to rank 0's TCPStore only once it listens.

torch 1.13's store client sleeps a fixed second after a refused connection; the
worker probes the port first so its connect succeeds at once. Real sockets and
real gloo groups, no timing assertions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from clipfleet_worker import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_for_store_returns_once_the_port_listens() -> None:
    port = _free_port()
    listening = threading.Event()
    release = threading.Event()

    def serve() -> None:
        with socket.socket() as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", port))
            srv.listen(4)
            listening.set()
            release.wait(30)

    # The listener starts only after the waiter has been refused at least once.
    refused = threading.Event()
    original = socket.create_connection

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return original(*args, **kwargs)
        except OSError:
            if not refused.is_set():
                refused.set()
                threading.Thread(target=serve, daemon=True).start()
            raise

    socket.create_connection = counting  # type: ignore[assignment]
    try:
        D.wait_for_store("127.0.0.1", port, timeout_s=30)
    finally:
        socket.create_connection = original  # type: ignore[assignment]
        release.set()
    assert refused.is_set(), "the first probe must have been refused"
    assert listening.is_set(), "returned before rank 0's port listened"


def test_wait_for_store_gives_up_at_its_timeout() -> None:
    # Nothing listens: it returns (torch's own connect then reports the error).
    D.wait_for_store("127.0.0.1", _free_port(), timeout_s=0.05)


_RANK = r"""
import sys, torch, torch.distributed as dist
from clipfleet_worker import distributed as D
rank, port = int(sys.argv[1]), int(sys.argv[2])
print("joining", flush=True)
D.init_process_group("gloo", "127.0.0.1", port, rank, 2, timeout_s=60)
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"sum {t.item()}", flush=True)
D.destroy()
"""


def test_a_group_forms_when_rank_1_starts_before_rank_0() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    r1 = subprocess.Popen([sys.executable, "-c", _RANK, "1", str(port)], stdout=subprocess.PIPE, text=True, env=env)
    assert r1.stdout is not None
    # Rank 0 starts only once rank 1 is about to connect, the order that cost torch 1.13 a second.
    assert r1.stdout.readline().strip() == "joining"
    r0 = subprocess.Popen([sys.executable, "-c", _RANK, "0", str(port)], stdout=subprocess.PIPE, text=True, env=env)
    out0, _ = r0.communicate(timeout=120)
    out1, _ = r1.communicate(timeout=120)
    assert r0.returncode == 0 and r1.returncode == 0
    assert "sum 3.0" in out0 and "sum 3.0" in out1
