"""`clipfleet data index`: read each shard once and write its count, size, digest and tar index.

The output directory is what `data.index` points at:

    DIR/index.json   {"version": 1, "shards": {URL: {"samples", "bytes", "sha256", "index"}}}
    DIR/sizes.json   basename -> sample count (open_clip's layout)
    DIR/<name>.idx.json  one tar index per shard (TarIndex's cached layout, plus url/bytes/sha256)

Shards stream through once (an HTTP body, a pipe's stdout, a file), so remote
shards are never stored. Resumable: a shard whose index file exists and
names the same URL (and, locally, the same size) is not read again; every
file is written atomically.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..errors import ConfigError, DataError
from .remote import entry_name, is_gzip_name, is_remote, shard_name
from .sources import INDEX_VERSION, index_key
from .tarindex import build_stream, index_json

_CHUNK = 1 << 20


class _Tee:
    """A read()-able stream that hashes and counts the raw bytes and optionally gunzips them."""

    def __init__(self, raw, gz: bool) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.raw_bytes = 0
        self.out_bytes = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None
        self._buf = b""
        self._eof = False

    def _fill(self) -> bytes:
        chunk = self.raw.read(_CHUNK)
        if not chunk:
            self._eof = True
            if self._z is not None:
                if not self._z.eof:
                    raise OSError("gzip stream is truncated")
                return self._z.flush()
            return b""
        self.sha.update(chunk)
        self.raw_bytes += len(chunk)
        if self._z is None:
            return chunk
        out = self._z.decompress(chunk)
        while self._z.unused_data:
            rest = self._z.unused_data
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += self._z.decompress(rest)
        return out

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buf) < n) and not self._eof:
            self._buf += self._fill()
        if n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        self.out_bytes += len(out)
        return out

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


class _Transient(DataError):
    """A failure another attempt may not meet: a connection error, a 5xx/408/429, a pipe command exiting non-zero."""

    def __init__(self, message: str, shard: str | None = None) -> None:
        super().__init__(message, shard=shard)
        self.reason = message


def _open_stream(url: str, timeout: float):
    """(readable, close) for a shard URL; close() raises DataError when a pipe command failed."""
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        err: list[bytes] = []
        t = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        t.start()

        def close() -> None:
            proc.stdout.close()
            code = proc.wait()
            t.join()
            if code != 0:
                lines = [ln for ln in b"".join(err).decode("utf-8", "replace").splitlines() if ln.strip()]
                raise _Transient(f"command exited with status {code}" + (f": {lines[-1].strip()[:300]}" if lines else ""), shard=url)

        return proc.stdout, close
    if is_remote(url):
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as e:
            err = _Transient if e.code >= 500 or e.code in (408, 429) else DataError
            raise err(f"HTTP {e.code} {e.reason}", shard=url) from None
        except (urllib.error.URLError, OSError) as e:
            raise _Transient(f"{type(e).__name__}: {getattr(e, 'reason', None) or e}", shard=url) from None
        return resp, resp.close
    try:
        f = open(index_key(url), "rb")
    except FileNotFoundError:
        raise DataError("no such file", shard=url) from None
    return f, f.close


def _read_once(url: str, timeout: float) -> tuple[tuple, "_Tee"]:
    """One pass over the shard: its tar index and the tee that hashed and counted it."""
    raw, close = _open_stream(url, timeout)
    tee = _Tee(raw, is_gzip_name(url))
    try:
        try:
            built = build_stream(tee, url)
            tee.drain()
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(f"read failed ({type(e).__name__}: {e})", shard=url) from None
        except zlib.error as e:
            raise DataError(f"read failed ({e})", shard=url) from None
        except DataError:
            # A stream cut short reads as a corrupt tar: say so as a transient failure when the body was short.
            if is_remote(url) and not url.startswith("pipe:") and getattr(raw, "length", None):
                raise _Transient("the response ended early", shard=url) from None
            raise
    finally:
        close()
    return built, tee


def _index_one(url: str, out: str, timeout: float, attempts: int = 4, max_delay: float = 10.0,
               sleep: Callable[[float], None] = time.sleep) -> tuple[dict, bool]:
    """(index.json entry, skipped) of one shard."""
    name = entry_name(url) + ".idx.json"
    target = os.path.join(out, name)
    local_size = None if is_remote(url) else os.path.getsize(index_key(url))
    try:
        with open(target, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("url") == url and (local_size is None or old.get("bytes") == local_size):
            return {"samples": len(old["sample_start"]) - 1, "bytes": old["bytes"], "sha256": old["sha256"], "index": name}, True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    last: DataError | None = None
    for attempt in range(attempts):
        if attempt:
            sleep(min(max_delay, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))
        try:
            built, tee = _read_once(url, timeout)
            break
        except _Transient as e:
            last = e
    else:
        assert last is not None
        raise DataError(f"failed after {attempts} attempts: {last.reason}", shard=url)
    data = index_json(tee.out_bytes, None, *built)
    data.update(url=url, bytes=tee.raw_bytes, sha256=tee.sha.hexdigest())
    _write_json(target, data)
    return {"samples": len(built[0]), "bytes": tee.raw_bytes, "sha256": data["sha256"], "index": name}, False


def _write_json(path: str, data: object) -> None:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_index(urls: list[str], out: str | None, jobs: int = 8, log: Callable[[str], None] | None = None, timeout: float = 120.0,
                attempts: int = 4) -> dict:
    """Index `urls` into `out` (default: the directory of local shards); returns a summary.

    Each shard gets `attempts` tries with backoff against transient failures
    (connection errors, 5xx/408/429, a pipe command exiting non-zero); a shard
    that still fails stops the run naming it, and a rerun resumes.
    """
    if not urls:
        raise ConfigError("no shards given")
    if out is None:
        if any(is_remote(u) for u in urls):
            raise ConfigError("--out is required for remote shards (http(s)://, pipe:)")
        dirs = {os.path.dirname(index_key(u)) for u in urls}
        if len(dirs) != 1:
            raise ConfigError("--out is required when the shards are in several directories")
        out = dirs.pop()
    os.makedirs(out, exist_ok=True)
    keys = [index_key(u) for u in urls]
    t0 = time.perf_counter()
    done = [0]
    lock = threading.Lock()

    def one(key: str) -> tuple[dict, bool]:
        entry, skipped = _index_one(key, out, timeout, attempts=max(1, attempts))
        with lock:
            done[0] += 1
            if log is not None:
                log(f"indexed {done[0]}/{len(keys)}: {key} ({entry['samples']} samples{', unchanged' if skipped else ''})")
        return entry, skipped

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, keys))
    shards = {k: e for k, (e, _) in zip(keys, results)}
    index_path = os.path.join(out, "index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            previous = json.load(f).get("shards", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    merged = {**(previous if isinstance(previous, dict) else {}), **shards}
    _write_json(index_path, {"version": INDEX_VERSION, "shards": merged})
    sizes_path = os.path.join(out, "sizes.json")
    try:
        with open(sizes_path, encoding="utf-8") as f:
            sizes = json.load(f)
        sizes = sizes if isinstance(sizes, dict) else {}
    except (OSError, ValueError):
        sizes = {}
    for k, e in shards.items():
        sizes[shard_name(k)] = e["samples"]
    _write_json(sizes_path, sizes)
    seconds = time.perf_counter() - t0
    read = [e for e, skipped in results if not skipped]
    total_bytes = sum(e["bytes"] for e in read)
    return {
        "out": os.path.abspath(out),
        "shards": len(keys),
        "skipped": len(keys) - len(read),
        "samples": sum(e["samples"] for e in shards.values()),
        "bytes_read": total_bytes,
        "seconds": round(seconds, 3),
        "shards_per_second": round(len(read) / seconds, 2) if seconds > 0 else None,
        "mb_per_second": round(total_bytes / 1e6 / seconds, 2) if seconds > 0 else None,
    }
