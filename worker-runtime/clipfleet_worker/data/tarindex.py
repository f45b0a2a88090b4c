"""Random access into WebDataset tar shards.

The orchestrator's plan names samples as (shard, index in shard), so a rank
must read any sample without streaming the shard. TarIndex reads the tar
headers once (tarfile handles GNU long names and pax headers), groups members
into samples exactly as WebDataset does, and caches the result as JSON keyed
by the shard's size and mtime. Reads use os.pread on one descriptor, which is
positional and therefore safe from any number of threads without seeking.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import threading
import zlib
from array import array

from ..errors import DataError
from .members import gz_stripped
from .shards import local_path

# Bumped whenever the cached layout or the grouping rule changes (2: metadata names skipped).
_CACHE_VERSION = 2
_BLOCK = 512
# webdataset's metadata names (`__index__`, anything under `__name__/`), as the orchestrator's tar.ts.
_METADATA = re.compile(r"__[^/]*__($|/)")


def split_member_name(name: str) -> tuple[str, str] | None:
    """WebDataset's grouping rule: (key, extension) of a member path, or None.

    The key is the path with everything from the first dot of the basename
    removed, so `a/0001.syn.json` is key `a/0001`, extension `syn.json`;
    extensions are lower-cased. Names without a dot in the basename and
    webdataset metadata names (`__index__`, `__name__/...`) are not sample
    members (WebDataset skips them too).
    """
    if _METADATA.match(name):
        return None
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        # No dot, or a dot-file such as `.hidden`: WebDataset's pattern does not match either.
        return None
    return name[:dot], name[dot + 1 :].lower()


class TarIndex:
    """Index of one shard: sample i -> {extension: (offset, size)}, plus keys.

    Stored compactly (arrays and one joined key string), because a rank keeps
    the index of every shard it reads from in memory.
    """

    def __init__(
        self,
        path: str,
        keys: list[str],
        exts: list[str],
        sample_start: array,
        member_ext: array,
        member_offset: array,
        member_size: array,
    ) -> None:
        self.path = path
        self._keys_blob = "\n".join(keys)
        self._key_pos = array("q", [0])
        for k in keys:
            self._key_pos.append(self._key_pos[-1] + len(k) + 1)
        self._exts = exts
        self._sample_start = sample_start
        self._member_ext = member_ext
        self._member_offset = member_offset
        self._member_size = member_size
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._reader = None  # an object with pread(size, offset), e.g. remote.RangeReader

    @classmethod
    def from_file(cls, path: str, index_file: str, shard_size: int, fd: int | None = None, reader=None) -> "TarIndex":
        """A shard indexed by `clipfleet data index`: the same layout as the cached index, checked by size only.

        `fd` is an already open descriptor of the shard (it stays valid if the
        file is evicted from the shard cache); `reader` reads remotely instead.
        """
        try:
            with open(index_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"index file {index_file} is unreadable ({e})", shard=path) from None
        if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or data.get("shard_size") != shard_size:
            raise DataError(
                f"index file {index_file} does not describe this shard ({shard_size} bytes; rerun clipfleet data index)",
                shard=path,
            )
        idx = cls(path, *_arrays(data))
        idx._fd = fd
        idx._reader = reader
        return idx

    @classmethod
    def open_fd(cls, path: str, fd: int, name: str | None = None) -> "TarIndex":
        """Index an open shard descriptor (a shard cache entry), caching the index next to it."""
        st = os.fstat(fd)
        cache = _cache_path(path, None)
        cached = _load_cache(cache, st)
        if cached is None:
            with os.fdopen(os.dup(fd), "rb") as f:
                cached = _build_file(f, name or path, st.st_size)
            _write_cache(cache, st, *cached)
        idx = cls(path, *cached)
        idx._fd = fd
        return idx

    @classmethod
    def open(cls, path: str, cache_dir: str | None = None) -> "TarIndex":
        """Index a shard, reusing a cached index when the shard is unchanged.

        The cache lives next to the shard (`.<name>.idx.json`) or in cache_dir;
        an unwritable location just means no cache.
        """
        path = local_path(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError("no such file", shard=path) from None
        cache = _cache_path(path, cache_dir)
        cached = _load_cache(cache, st)
        if cached is not None:
            return cls(path, *cached)
        built = _build(path, st.st_size)
        _write_cache(cache, st, *built)
        return cls(path, *built)

    @property
    def num_samples(self) -> int:
        """Number of samples (groups of consecutive members sharing a key)."""
        return len(self._sample_start) - 1

    def key(self, i: int) -> str:
        """The WebDataset key of sample i."""
        self._check(i)
        return self._keys_blob[self._key_pos[i] : self._key_pos[i + 1] - 1]

    def extensions(self, i: int) -> list[str]:
        """The member extensions of sample i, in tar order."""
        self._check(i)
        return [self._exts[self._member_ext[m]] for m in range(self._sample_start[i], self._sample_start[i + 1])]

    def read(self, i: int) -> dict[str, bytes]:
        """The members of sample i as {extension: bytes}; thread-safe."""
        self._check(i)
        reader = self._reader
        fd = self._descriptor() if reader is None else -1
        out: dict[str, bytes] = {}
        for m in range(self._sample_start[i], self._sample_start[i + 1]):
            offset, size = self._member_offset[m], self._member_size[m]
            data = reader.pread(size, offset) if reader is not None else os.pread(fd, size, offset)
            if len(data) != size:
                raise DataError(
                    f"shard is truncated: sample {i} member at offset {offset} needs "
                    f"{size} bytes, got {len(data)} (the shard changed after indexing?)",
                    shard=self.path,
                )
            out[self._exts[self._member_ext[m]]] = data
        return out

    def close(self) -> None:
        """Release the file descriptor; a later read reopens it."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _descriptor(self) -> int:
        fd = self._fd
        if fd is not None:
            return fd
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDONLY)
                except FileNotFoundError:
                    raise DataError("no such file", shard=self.path) from None
            return self._fd

    def _check(self, i: int) -> None:
        if not 0 <= i < self.num_samples:
            raise DataError(
                f"shard has {self.num_samples} samples but index {i} was requested "
                "(manifest/shard mismatch)",
                shard=self.path,
            )


def _cache_path(path: str, cache_dir: str | None) -> str:
    name = os.path.basename(path)
    if cache_dir is None:
        return os.path.join(os.path.dirname(path), f".{name}.idx.json")
    # Shards of different directories may share a basename.
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{name}.{digest}.idx.json")


def _load_cache(cache: str, st: os.stat_result) -> tuple | None:
    try:
        with open(cache, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != _CACHE_VERSION
        or data.get("shard_size") != st.st_size
        or data.get("shard_mtime_ns") != st.st_mtime_ns
    ):
        return None
    return _arrays(data)


def _arrays(data: dict) -> tuple:
    return (
        data["keys"],
        data["exts"],
        array("q", data["sample_start"]),
        array("H", data["member_ext"]),
        array("q", data["member_offset"]),
        array("q", data["member_size"]),
    )


def index_json(shard_size: int, shard_mtime_ns: int | None, keys, exts, sample_start, member_ext, member_offset, member_size) -> dict:
    """The index file's JSON (the cached `.idx.json` and `clipfleet data index`'s files share it)."""
    return {
        "version": _CACHE_VERSION,
        "shard_size": shard_size,
        "shard_mtime_ns": shard_mtime_ns,
        "keys": keys,
        "exts": exts,
        "sample_start": sample_start.tolist(),
        "member_ext": member_ext.tolist(),
        "member_offset": member_offset.tolist(),
        "member_size": member_size.tolist(),
    }


def _write_cache(cache: str, st: os.stat_result, *built) -> None:
    data = index_json(st.st_size, st.st_mtime_ns, *built)
    tmp = f"{cache}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(cache) or ".", exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        # Ranks on one node may index the same shard at once: the rename is atomic.
        os.replace(tmp, cache)
    except OSError:
        # A read-only dataset directory is normal; the index is simply rebuilt next time.
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _build(path: str, file_size: int) -> tuple:
    with open(path, "rb") as f:
        return _build_file(f, path, file_size)


def _build_file(f, path: str, file_size: int) -> tuple:
    head = f.read(2)
    if head == b"\x1f\x8b" and path.lower().endswith((".tar.gz", ".tgz")):
        # Named .tar.gz/.tgz shards are decompressed into the shard cache first (sources.ShardSource).
        raise DataError("shard is gzip-compressed; read it through the shard cache", shard=path)
    if head == b"\x1f\x8b":
        raise DataError(
            "shard holds gzip-compressed data, but its name does not end in .tar.gz or .tgz; "
            "decompress it (gzip -dc < FILE > NEW.tar) or rename it",
            shard=path,
        )
    f.seek(0)
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
    except tarfile.ReadError as e:
        raise DataError(f"shard is not a tar file ({e})", shard=path) from None
    try:
        built = _group(_members(tar, path), path, file_size)
        end = tar.offset
    finally:
        tar.close()
    _check_tail(f, path, end, file_size)
    return built


def build_stream(fileobj, path: str, gz: bool = False) -> tuple:
    """Index a shard read once from a stream (an HTTP body, a pipe): the tuple TarIndex takes.

    Offsets are in the uncompressed tar, so a `.tar.gz` indexed this way
    addresses its decompressed copy in the shard cache.
    """
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|gz" if gz else "r|")
    except (tarfile.ReadError, OSError, EOFError) as e:
        raise DataError(f"shard is not a {'gzip-compressed ' if gz else ''}tar file ({e})", shard=path) from None
    try:
        return _group(_members(tar, path), path, None)
    finally:
        tar.close()


def _group(infos, path: str, file_size: int | None) -> tuple:
    """WebDataset grouping of tar members into samples (see split_member_name)."""
    keys: list[str] = []
    exts: list[str] = []
    ext_ids: dict[str, int] = {}
    sample_start = array("q")
    member_ext = array("H")
    member_offset = array("q")
    member_size = array("q")
    current_key: str | None = None
    current_exts: set[str] = set()
    for info in infos:
        if file_size is not None and info.offset_data + info.size > file_size:
            raise DataError(
                f"shard is truncated: member {info.name!r} ends at byte "
                f"{info.offset_data + info.size} but the file has {file_size}",
                shard=path,
            )
        if not info.isreg():
            continue
        split = split_member_name(info.name)
        if split is None:
            continue
        key, ext = split
        if key != current_key:
            current_key = key
            current_exts = set()
            keys.append(key)
            sample_start.append(len(member_offset))
        # `k.txt` and `k.txt.gz` both read as `txt` (members.py), so they clash too.
        elif gz_stripped(ext) in current_exts:
            raise DataError(f"sample has two {gz_stripped(ext)!r} members", shard=path, key=key)
        current_exts.add(gz_stripped(ext))
        if ext not in ext_ids:
            ext_ids[ext] = len(exts)
            exts.append(ext)
        member_ext.append(ext_ids[ext])
        member_offset.append(info.offset_data)
        member_size.append(info.size)
    sample_start.append(len(member_offset))
    return keys, exts, sample_start, member_ext, member_offset, member_size


def _members(tar: tarfile.TarFile, path: str):
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DataError(f"shard is corrupt ({e})", shard=path) from None
        if info is None:
            return
        yield info


def _check_tail(f, path: str, end: int, file_size: int) -> None:
    """tarfile stops quietly at a bad or partial header; tell that from a real end.

    After the last member there must be either nothing (some writers omit the
    end-of-archive blocks) or a zero block. Anything else means the shard was
    cut inside a header or holds garbage.
    """
    if end >= file_size:
        return
    f.seek(end)
    block = f.read(_BLOCK)
    if len(block) < _BLOCK and any(block):
        raise DataError(
            f"shard is truncated: {len(block)} bytes of a partial header at offset {end}", shard=path
        )
    if any(block):
        raise DataError(f"shard is corrupt: invalid tar header at offset {end}", shard=path)
