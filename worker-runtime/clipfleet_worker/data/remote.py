"""Remote and compressed shards: a node-local shard cache in front of http(s):// and pipe: sources.

The loader reads samples by offset, so every shard it reads must be a local,
uncompressed tar. Local `.tar` shards are read in place; everything else
(`http://`, `https://`, `pipe:COMMAND`, and `.tar.gz`/`.tgz` anywhere) is
fetched once into a directory shared by the ranks of a node and read from
there. The cache is safe against concurrent fills and crashes:

- a fill holds an exclusive fcntl lock on `<entry>.lock`, so ranks asking for
  the same shard at once download it once (the others wait, then hit);
- the bytes go to `<entry>.part`, are verified (size, sha256 when known),
  fsynced and renamed over `<entry>`; a crash leaves only the `.part` file,
  which the next filler removes;
- the total size is capped (LRU by mtime, which a hit refreshes); an evicted
  file that a reader still has open stays readable (unlink semantics).

Failures are retried with exponential backoff and jitter (connection errors,
timeouts, HTTP 5xx/408/429, a short body, a pipe command exiting non-zero);
anything else, or running out of attempts, is a DataError naming the URL:
the job fails, a shard is never skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import random
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Callable

from ..checkpoint import fsync_path
from ..errors import ConfigError, DataError
from .shards import local_path

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
DEFAULT_MAX_BYTES = 64 * 2**30
_CHUNK = 1 << 20


def is_remote(url: str) -> bool:
    """True for shard URLs that are not local files: http(s):// and pipe:."""
    return url.startswith(("http://", "https://", "pipe:"))


def shard_name(url: str) -> str:
    """The file name a shard URL ends in: its path's basename, without a query or fragment.

    A signed object-store URL (`https://b.s3.amazonaws.com/x/00001.tar?X-Amz-Signature=...`)
    is still named `00001.tar`; a pipe: command is named by its last word
    (`pipe:aws s3 cp s3://b/x/00001.tar -` -> `00001.tar` when the last word is `-`).
    """
    if url.startswith(("http://", "https://")):
        return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    if url.startswith("pipe:"):
        words = [w for w in url[len("pipe:") :].split() if w != "-"]
        return words[-1].rsplit("/", 1)[-1] if words else ""
    return url.rsplit("/", 1)[-1]


def is_gzip_name(url: str) -> bool:
    """`.tar.gz` / `.tgz` shards, which are decompressed into the cache before random access."""
    return shard_name(url).lower().endswith((".tar.gz", ".tgz"))


def parse_bytes(value: object, field: str = "data.cache.max_bytes") -> int:
    """An integer byte count, or a string such as "50GB" / "64GiB" / "500M"."""
    if isinstance(value, bool):
        raise ConfigError(f"expected bytes (an integer or a string like \"50GB\"), got {value!r}", field=field)
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"expected a positive byte count, got {value}", field=field)
        return value
    m = _SIZE.match(str(value))
    if m is None:
        raise ConfigError(f"expected bytes (an integer or a string like \"50GB\"), got {value!r}", field=field)
    unit = (m.group(2) or "").upper()
    binary = "I" in unit
    base = unit[:1] if unit not in ("", "B") else unit
    mult = (1024 ** "BKMGT".index(base)) if binary else _UNITS[base]
    n = int(float(m.group(1)) * mult)
    if n < 1:
        raise ConfigError(f"expected a positive byte count, got {value!r}", field=field)
    return n


def default_cache_dir() -> str:
    """CLIPFLEET_SHARD_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/clipfleet/shards."""
    env = os.environ.get("CLIPFLEET_SHARD_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clipfleet", "shards")


@dataclass(frozen=True)
class CacheConfig:
    """The node-local shard cache and fetch policy, compiled from the spec's `data.cache`."""

    dir: str
    max_bytes: int = DEFAULT_MAX_BYTES
    retries: int = 6  # attempts in all
    max_delay: float = 10.0  # seconds between attempts, at most
    base_delay: float = 0.5
    timeout: float = 60.0  # per connection / read

    @staticmethod
    def from_data_cfg(data: dict) -> "CacheConfig":
        """From the StageSpec `data` section; CLIPFLEET_SHARD_CACHE overrides the directory."""
        c = data.get("cache") or {}
        directory = os.environ.get("CLIPFLEET_SHARD_CACHE") or c.get("dir") or default_cache_dir()
        max_bytes = parse_bytes(c["max_bytes"]) if c.get("max_bytes") is not None else DEFAULT_MAX_BYTES
        return CacheConfig(
            dir=os.path.abspath(os.path.expanduser(str(directory))),
            max_bytes=max_bytes,
            retries=max(1, int(c.get("fetch_retries") or 6)),
            max_delay=float(c.get("max_retry_delay") if c.get("max_retry_delay") is not None else 10.0),
            base_delay=float(c.get("base_retry_delay") if c.get("base_retry_delay") is not None else 0.5),
            timeout=float(c.get("timeout") or 60.0),
        )


class FetchStats:
    """Process-wide counters of the shard cache, read as deltas per step report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_fetched = 0
        self.hits = 0
        self.misses = 0
        self.fetch_seconds = 0.0
        self._last = (0, 0, 0, 0.0)

    def add(self, *, fetched: int = 0, hits: int = 0, misses: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.bytes_fetched += fetched
            self.hits += hits
            self.misses += misses
            self.fetch_seconds += seconds

    def delta(self) -> tuple[int, int, int, float]:
        """(bytes fetched, hits, misses, fetch seconds) since the previous call."""
        with self._lock:
            now = (self.bytes_fetched, self.hits, self.misses, self.fetch_seconds)
            last, self._last = self._last, now
        return now[0] - last[0], now[1] - last[1], now[2] - last[2], now[3] - last[3]


STATS = FetchStats()


class _Retryable(Exception):
    """One failed attempt worth retrying; the message is what the final DataError says."""


class _Fatal(Exception):
    """A failure retrying cannot fix (HTTP 404, a size or digest mismatch of a complete body)."""


def entry_name(url: str) -> str:
    """A cache file name for `url`: a digest of it plus its (sanitised) basename; `.tar.gz` becomes `.tar`."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:24]
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", shard_name(url))[-80:]
    for ext in (".tar.gz", ".tgz"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)] + ".tar"
    return f"{digest}-{base}"


class ShardCache:
    """The node-local cache: `local(url)` returns a readable uncompressed tar for any shard URL."""

    def __init__(self, config: CacheConfig, stats: FetchStats = STATS, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.stats = stats
        self._sleep = sleep

    def entry_path(self, url: str) -> str:
        """Where `url`'s (decompressed) bytes live in the cache."""
        return os.path.join(self.config.dir, entry_name(url))

    def local(self, url: str, size: int | None = None, sha256: str | None = None) -> str:
        """A local path of shard `url`, fetched (and decompressed) into the cache when needed.

        `size` and `sha256` (from data.index) describe the bytes at the URL;
        a fetch that does not match them fails. Local uncompressed shards are
        returned as they are.
        """
        if not is_remote(url) and not is_gzip_name(url):
            return local_path(url)
        path = self.entry_path(url)
        if _touch(path):
            self.stats.add(hits=1)
            return path
        os.makedirs(self.config.dir, exist_ok=True)
        with _Flock(path + ".lock"):
            if _touch(path):
                # Another rank of this node filled it while we waited for the lock.
                self.stats.add(hits=1)
                return path
            t0 = time.monotonic()
            part = path + ".part"
            _unlink(part)  # a crashed filler's leftovers
            try:
                fetched = self._fetch(url, part, size, sha256)
                if is_gzip_name(url):
                    _gunzip(part, path + ".tmp", url)
                    os.replace(path + ".tmp", part)
                fsync_path(part)
                self._make_room(os.path.getsize(part), keep=path)
                os.replace(part, path)
                _fsync_dir(self.config.dir)
            finally:
                _unlink(part)
                _unlink(path + ".tmp")
            self.stats.add(fetched=fetched, misses=1, seconds=time.monotonic() - t0)
        return path

    def _fetch(self, url: str, part: str, size: int | None, sha256: str | None) -> int:
        """Fetch `url` into `part` with retries; returns the bytes transferred (resumed ranges included once)."""
        cfg = self.config
        transferred = 0
        last = "no attempt"
        for attempt in range(cfg.retries):
            if attempt:
                delay = min(cfg.max_delay, cfg.base_delay * 2 ** (attempt - 1))
                self._sleep(delay * (0.5 + random.random() / 2))
            try:
                if url.startswith("pipe:"):
                    transferred += _fetch_pipe(url[len("pipe:") :], part, cfg.timeout)
                elif is_remote(url):
                    transferred += _fetch_http(url, part, cfg.timeout)
                else:
                    shutil.copyfile(local_path(url), part)
                    transferred += os.path.getsize(part)
                try:
                    _verify(url, part, size, sha256)
                except _Retryable:
                    _unlink(part)  # complete but wrong: start over rather than resume
                    raise
                return transferred
            except _Retryable as e:
                last = str(e)
            except _Fatal as e:
                raise DataError(str(e), shard=url) from None
            except FileNotFoundError:
                raise DataError("no such file", shard=url) from None
        raise DataError(f"fetch failed after {cfg.retries} attempts: {last}", shard=url)

    def _make_room(self, incoming: int, keep: str) -> None:
        """Evict least recently used entries until `incoming` more bytes fit under the cap."""
        d = self.config.dir
        with _Flock(os.path.join(d, ".evict.lock")):
            entries = []
            for name in os.listdir(d):
                if name.startswith(".") or name.endswith((".lock", ".part", ".tmp")):
                    continue
                p = os.path.join(d, name)
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime_ns, st.st_size, p))
            total = sum(e[1] for e in entries)
            for _, sz, p in sorted(entries):
                if total + incoming <= self.config.max_bytes:
                    break
                if p == keep:
                    continue
                _unlink(p)
                _unlink(os.path.join(d, f".{os.path.basename(p)}.idx.json"))
                total -= sz


def _touch(path: str) -> bool:
    """Refresh an entry's mtime (its LRU age); False when it is not in the cache."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fsync_path(path)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic


class _Flock:
    """An exclusive fcntl lock on a lock file, held for a `with` block (released by the kernel on a crash)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_Flock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _verify(url: str, part: str, size: int | None, sha256: str | None) -> None:
    got = os.path.getsize(part)
    if size is not None and got != size:
        raise _Retryable(f"got {got} bytes, the index says {size}")
    if sha256 is not None:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        if h.hexdigest() != sha256.lower():
            raise _Retryable(f"sha256 {h.hexdigest()} does not match the index's {sha256}")


def _retryable_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def _fetch_http(url: str, part: str, timeout: float) -> int:
    """One attempt: download (or resume, with a Range request) `url` into `part`; bytes transferred."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    transferred = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resumed = have > 0 and resp.status == 206
            expected = resp.headers.get("Content-Length")
            with open(part, "ab" if resumed else "wb") as out:
                while True:
                    chunk = resp.read1(_CHUNK)  # what has arrived, so a stalled server leaves a partial file to resume
                    if not chunk:
                        break
                    out.write(chunk)
                    transferred += len(chunk)
            if expected is not None and transferred != int(expected):
                raise _Retryable(f"connection closed after {transferred} of {expected} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return transferred  # the partial file is complete; _verify decides
        msg = f"HTTP {e.code} {e.reason}"
        if _retryable_status(e.code):
            raise _Retryable(msg) from None
        raise _Fatal(msg) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, socket.timeout) as e:
        reason = getattr(e, "reason", None) or e
        raise _Retryable(f"{type(e).__name__}: {reason}") from None
    return transferred


def _fetch_pipe(command: str, part: str, timeout: float) -> int:
    """One attempt: run `command` (shell) with stdout into `part`; a non-zero exit is retried."""
    with open(part, "wb") as out:
        proc = subprocess.Popen(command, shell=True, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        _, err = proc.communicate()
    if proc.returncode != 0:
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        tail = f": {lines[-1].strip()[:300]}" if lines else ""
        raise _Retryable(f"command exited with status {proc.returncode}{tail}")
    return os.path.getsize(part)


def _gunzip(src: str, dst: str, url: str) -> None:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(src, "rb") as f, open(dst, "wb") as out:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                out.write(d.decompress(chunk))
                while d.unused_data:
                    # Concatenated gzip members (pigz, cat a.gz b.gz) are one stream to tar.
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    out.write(d.decompress(rest))
            out.write(d.flush())
    except zlib.error as e:
        raise DataError(f"shard is not valid gzip ({e})", shard=url) from None
    if not d.eof:
        raise DataError("gzip stream is truncated", shard=url)


class RangeReader:
    """pread over HTTP: one Range GET per read, with the cache's retry policy."""

    def __init__(self, url: str, config: CacheConfig, stats: FetchStats = STATS) -> None:
        self.url = url
        self.config = config
        self.stats = stats

    def pread(self, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` of the remote shard."""
        if size == 0:
            return b""
        cfg = self.config
        last = "no attempt"
        t0 = time.monotonic()
        for attempt in range(cfg.retries):
            if attempt:
                time.sleep(min(cfg.max_delay, cfg.base_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            req = urllib.request.Request(self.url, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:
                    if resp.status != 206:
                        raise DataError("the server ignored the Range request (needed for reads by index)", shard=self.url)
                    data = resp.read(size + 1)
                if len(data) != size:
                    last = f"range read got {len(data)} of {size} bytes"
                    continue
                self.stats.add(fetched=size, seconds=time.monotonic() - t0)
                return data
            except urllib.error.HTTPError as e:
                if not _retryable_status(e.code):
                    raise DataError(f"HTTP {e.code} {e.reason}", shard=self.url) from None
                last = f"HTTP {e.code} {e.reason}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
        raise DataError(f"fetch failed after {cfg.retries} attempts: {last}", shard=self.url)

    def close(self) -> None:
        """Nothing to release (one connection per read)."""
