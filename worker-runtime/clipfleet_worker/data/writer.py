"""Writing WebDataset shards reproducibly (synth and convert share it).

Tar headers carry mtime, owner and mode; fixing them (and writing to a temp
file renamed into place) makes a shard byte-identical across runs and never
half-written, so two ranks generating the same dataset cannot corrupt it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable

Member = tuple[str, bytes]


def write_shard(path: str, samples: Iterable[tuple[str, list[Member]]]) -> int:
    """Write samples (key, [(extension, bytes)]) to a USTAR tar at path; returns the sample count."""
    tmp = f"{path}.{os.getpid()}.tmp"
    count = 0
    with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            count += 1
    os.replace(tmp, path)
    return count


def json_bytes(obj: object) -> bytes:
    """Canonical pretty JSON (sorted keys) so metadata files are reproducible too."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_atomic(path: str, data: bytes) -> None:
    """Write a small file via temp + rename."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_json_object(path: str) -> dict | None:
    """A JSON object file, or None when absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def merge_sizes(out_dir: str, sizes: dict[str, int]) -> dict[str, int]:
    """Add shard counts to out_dir/sizes.json, keeping other splits' entries; returns the result."""
    path = os.path.join(out_dir, "sizes.json")
    merged = {**(read_json_object(path) or {}), **sizes}
    write_atomic(path, json_bytes(merged))
    return merged
