"""A job's shards with lazily opened, thread-safe indexes."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import DataError
from .sources import ShardSource
from .tarindex import TarIndex


class ShardSet:
    """The job's shard list with lazily opened indexes, checked against the manifest counts."""

    def __init__(self, shards: Sequence[tuple[str, int]], cache_dir: str | None = None, source: ShardSource | None = None) -> None:
        self.shards = [(str(u), int(n)) for u, n in shards]
        self._cache_dir = cache_dir
        self._source = source or ShardSource()
        self._indexes: dict[int, TarIndex] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def index(self, s: int) -> TarIndex:
        """The TarIndex of shard s; indexing happens once, outside the global lock."""
        idx = self._indexes.get(s)
        if idx is not None:
            return idx
        if not 0 <= s < len(self.shards):
            raise DataError(f"the plan names shard {s} but the job has {len(self.shards)} shards")
        with self._lock:
            lock = self._locks.setdefault(s, threading.Lock())
        with lock:
            idx = self._indexes.get(s)
            if idx is None:
                url, expected = self.shards[s]
                idx = self._source.open(url, self._cache_dir)
                if idx.num_samples != expected:
                    raise DataError(
                        f"the manifest says {expected} samples but the shard has "
                        f"{idx.num_samples} (stale sizes.json or index?)",
                        shard=url,
                    )
                self._indexes[s] = idx
            return idx

    def close(self) -> None:
        """Close every open shard descriptor."""
        for idx in list(self._indexes.values()):
            idx.close()
