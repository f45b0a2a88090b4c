import io
import json
import os
import tarfile
import threading

import pytest

from clipfleet_worker.data import TarIndex, split_member_name
from clipfleet_worker.data.writer import write_shard
from clipfleet_worker.errors import DataError


def _tar(path, members, fmt=tarfile.USTAR_FORMAT):
    """Write (name, bytes) members in order; directories when bytes is None."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def _sequential(path):
    """Reference grouping: stream the tar with tarfile, the way WebDataset does."""
    samples, current = [], None
    with tarfile.open(path) as tar:
        for info in tar:
            if not info.isreg():
                continue
            split = split_member_name(info.name)
            if split is None:
                continue
            key, ext = split
            if current is None or current[0] != key:
                current = (key, {})
                samples.append(current)
            current[1][ext] = tar.extractfile(info).read()
    return samples


def test_split_member_name_uses_first_dot_of_basename():
    assert split_member_name("0001.syn.json") == ("0001", "syn.json")
    assert split_member_name("dir.v2/0001.JPG") == ("dir.v2/0001", "jpg")
    assert split_member_name("README") is None
    assert split_member_name("a/.hidden") is None


def test_grouping_by_key_consecutive_members(tmp_path):
    path = _tar(
        tmp_path / "s.tar",
        [
            ("d", None),
            ("d/0001.jpg", b"J1"),
            ("d/0001.txt", b"T1"),
            ("d/0001.syn.json", b"{}"),
            ("d/0002.JPG", b"J2"),
            ("notes", b"skipped: no extension"),
            ("d/0002.json", b"{\"a\": 1}"),
        ],
    )
    idx = TarIndex.open(path)
    assert idx.num_samples == 2
    assert [idx.key(0), idx.key(1)] == ["d/0001", "d/0002"]
    assert idx.read(0) == {"jpg": b"J1", "txt": b"T1", "syn.json": b"{}"}
    assert idx.read(1) == {"jpg": b"J2", "json": b"{\"a\": 1}"}


def test_random_access_equals_sequential_reading_with_long_names(tmp_path):
    long_dir = "x" * 120
    members = []
    for i in range(40):
        members.append((f"{long_dir}/{i:04d}.jpg", os.urandom(100 + 37 * i)))
        members.append((f"{long_dir}/{i:04d}.txt", f"caption {i}".encode()))
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = _tar(tmp_path / f"s{fmt}.tar", members, fmt)
        idx = TarIndex.open(path)
        reference = _sequential(path)
        assert idx.num_samples == len(reference) == 40
        for i in reversed(range(40)):
            assert idx.key(i) == reference[i][0]
            assert idx.read(i) == reference[i][1]


def test_concurrent_reads_are_consistent(tmp_path):
    path = str(tmp_path / "s.tar")
    payloads = {f"{i:05d}": os.urandom(3000 + i) for i in range(64)}
    write_shard(path, ((k, [("bin", v)]) for k, v in payloads.items()))
    idx = TarIndex.open(path)
    errors = []

    def work(offset):
        for r in range(200):
            i = (r * 7 + offset) % 64
            if idx.read(i)["bin"] != payloads[idx.key(i)]:
                errors.append(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    idx.close()


def test_cache_is_reused_and_invalidated_by_size_or_mtime(tmp_path):
    path = str(tmp_path / "s.tar")
    write_shard(path, ((f"{i}", [("txt", b"a")]) for i in range(3)))
    TarIndex.open(path)
    cache = tmp_path / ".s.tar.idx.json"
    assert cache.exists()
    # Prove reuse: a doctored cache with matching size+mtime is trusted.
    data = json.loads(cache.read_text())
    data["keys"] = ["p", "q", "r"]
    cache.write_text(json.dumps(data))
    assert TarIndex.open(path).key(0) == "p"
    # Rewriting the shard changes size (and mtime): the cache is rebuilt.
    write_shard(path, ((f"{i}", [("txt", b"a")]) for i in range(5)))
    idx = TarIndex.open(path)
    assert idx.num_samples == 5 and idx.key(0) == "0"
    # Same size, different mtime: rebuilt too.
    data = json.loads(cache.read_text())
    data["keys"] = ["x"] * 5
    cache.write_text(json.dumps(data))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert TarIndex.open(path).key(0) == "0"


def test_cache_dir_keeps_shard_directory_clean(tmp_path):
    shard_dir, cache_dir = tmp_path / "ro", tmp_path / "cache"
    shard_dir.mkdir()
    path = str(shard_dir / "s.tar")
    write_shard(path, [("k", [("txt", b"a")])])
    TarIndex.open(path, cache_dir=str(cache_dir))
    assert os.listdir(shard_dir) == ["s.tar"]
    assert len(os.listdir(cache_dir)) == 1


def test_truncated_shard_raises_data_error_naming_it(tmp_path):
    path = str(tmp_path / "cut.tar")
    write_shard(path, ((f"{i:03d}", [("jpg", os.urandom(5000))]) for i in range(4)))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError, match="truncated") as e:
        TarIndex.open(path)
    assert e.value.shard == path and "cut.tar" in str(e.value)


def test_shard_cut_inside_a_header_is_truncated(tmp_path):
    path = str(tmp_path / "cut.tar")
    write_shard(path, ((f"{i:03d}", [("txt", b"x" * 512)]) for i in range(2)))
    with open(path, "r+b") as f:
        f.truncate(512 * 2 + 100)  # first member complete, second header partial
    with pytest.raises(DataError, match="truncated"):
        TarIndex.open(path)


def test_non_tar_and_gzip_shards(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(DataError, match="not a tar") as e:
        TarIndex.open(str(bad))
    assert "bad.tar" in str(e.value)
    gz = tmp_path / "g.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        info = tarfile.TarInfo("a.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="gzip"):
        TarIndex.open(str(gz))
    with pytest.raises(DataError, match="no such file"):
        TarIndex.open(str(tmp_path / "missing.tar"))
    # gzip data under a plain .tar name: the message says the name is wrong for the content.
    gz_tar = tmp_path / "really-gzip.tar"
    gz_tar.write_bytes(gz.read_bytes())
    with pytest.raises(DataError, match=r"really-gzip.tar.*gzip-compressed data, but its name does not end in .tar.gz or .tgz"):
        TarIndex.open(str(gz_tar))


def test_index_out_of_range_names_the_mismatch(tmp_path):
    path = str(tmp_path / "s.tar")
    write_shard(path, [("a", [("txt", b"1")]), ("b", [("txt", b"2")])])
    idx = TarIndex.open(path)
    with pytest.raises(DataError, match="has 2 samples but index 5 was requested"):
        idx.read(5)


def test_duplicate_extension_in_one_sample_is_an_error(tmp_path):
    path = _tar(tmp_path / "dup.tar", [("a.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(DataError, match="two 'txt' members"):
        TarIndex.open(path)
