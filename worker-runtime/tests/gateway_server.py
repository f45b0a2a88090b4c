"""A real gRPC server on 127.0.0.1:0 serving a test's WorkerGateway servicer (the orchestrator's part)."""

from __future__ import annotations

import contextlib
from concurrent import futures
from typing import Iterator

import grpc

from clipfleet_worker.gen.clipfleet.v1 import worker_pb2_grpc as pb_grpc


@contextlib.contextmanager
def serve(servicer: pb_grpc.WorkerGatewayServicer, threads: int = 8) -> Iterator[str]:
    """Serves `servicer` while the block runs; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    pb_grpc.add_WorkerGatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)
