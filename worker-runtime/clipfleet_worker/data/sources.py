"""Opening any shard URL as a TarIndex: in place, through the shard cache, or by HTTP range reads.

Also the reader of a `clipfleet data index` directory (`data.index`), which
gives per-shard sample counts, sizes, sha256 digests and tar index files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import ConfigError, DataError
from .remote import CacheConfig, RangeReader, ShardCache, is_gzip_name, is_remote
from .tarindex import TarIndex

INDEX_VERSION = 1
# A shard is read by range requests instead of being cached when it is larger than this share of the cap.
RANGE_SHARE = 4


@dataclass(frozen=True)
class IndexEntry:
    """One shard of an index directory: what `clipfleet data index` measured."""

    samples: int
    bytes: int
    sha256: str | None
    index_file: str | None  # absolute path of the tar index file


def index_key(url: str) -> str:
    """How a shard is named in index.json: remote URLs as given, local paths absolute without file://."""
    if is_remote(url):
        return url
    if url.startswith("file://"):
        url = url[len("file://") :]
    elif url.startswith("file:"):
        url = url[len("file:") :]
    return os.path.abspath(url)


def load_index_dir(directory: str) -> dict[str, IndexEntry]:
    """The shards of DIR/index.json; a missing or malformed file is a ConfigError naming data.index."""
    path = os.path.join(directory, "index.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist (write it with clipfleet data index)", field="data.index") from None
    except ValueError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})", field="data.index") from None
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION or not isinstance(shards, dict):
        raise ConfigError(f"{path}: expected {{\"version\": 1, \"shards\": {{...}}}}", field="data.index")
    out: dict[str, IndexEntry] = {}
    for url, e in shards.items():
        ok = (
            isinstance(e, dict)
            and _count(e.get("samples"))
            and _count(e.get("bytes"))
            and (e.get("sha256") is None or isinstance(e.get("sha256"), str))
            and (e.get("index") is None or (isinstance(e.get("index"), str) and "/" not in e["index"] and not e["index"].startswith(".")))
        )
        if not ok:
            raise ConfigError(f"{path}: shard {url!r}: expected samples, bytes, sha256 and index", field="data.index")
        idx = os.path.join(directory, e["index"]) if e.get("index") else None
        out[str(url)] = IndexEntry(int(e["samples"]), int(e["bytes"]), e.get("sha256"), idx)
    return out


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class ShardSource:
    """How a rank opens shards: local `.tar` in place, everything else through the node's shard cache.

    With a `data.index` entry that carries a tar index, an http(s) shard too
    large for its share of the cache is read sample by sample with Range
    requests instead of being downloaded whole.
    """

    def __init__(self, cache: CacheConfig | None = None, index: dict[str, IndexEntry] | None = None) -> None:
        self.cache_config = cache
        self.index = index or {}
        self._cache = ShardCache(cache) if cache is not None else None

    @staticmethod
    def from_cfg(cfg: dict) -> "ShardSource":
        """From the StageSpec JSON's `data` section (`cache`, `index`)."""
        data = cfg.get("data") or {}
        index_dir = data.get("index")
        return ShardSource(CacheConfig.from_data_cfg(data), load_index_dir(index_dir) if index_dir else None)

    def open(self, url: str, cache_dir: str | None = None) -> TarIndex:
        """A TarIndex that reads shard `url`."""
        entry = self.index.get(index_key(url))
        if not is_remote(url) and not is_gzip_name(url):
            if entry is not None and entry.index_file is not None and os.path.getsize(index_key(url)) == entry.bytes:
                return TarIndex.from_file(index_key(url), entry.index_file, entry.bytes)
            return TarIndex.open(url, cache_dir)
        cache = self._cache or ShardCache(CacheConfig.from_data_cfg({}))
        if (
            entry is not None
            and entry.index_file is not None
            and url.startswith(("http://", "https://"))
            and not is_gzip_name(url)
            and entry.bytes * RANGE_SHARE > cache.config.max_bytes
        ):
            return TarIndex.from_file(url, entry.index_file, entry.bytes, reader=RangeReader(url, cache.config))
        size = entry.bytes if entry is not None else None
        digest = entry.sha256 if entry is not None else None
        for _ in range(3):
            path = cache.local(url, size, digest)
            try:
                # Held open from here on: an eviction by another rank unlinks the name, not the data.
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # evicted between the fill and the open: fetch again
            try:
                if entry is not None and entry.index_file is not None:
                    # For a .tar.gz the index describes the decompressed tar, which is what the cache holds.
                    idx = TarIndex.from_file(url, entry.index_file, os.fstat(fd).st_size, fd=fd)
                else:
                    idx = TarIndex.open_fd(path, fd, name=url)
                    idx.path = url  # errors name the shard, not its cache entry
                return idx
            except BaseException:
                os.close(fd)
                raise
        raise DataError("evicted from the shard cache three times before it could be opened (data.cache.max_bytes too small?)", shard=url)
