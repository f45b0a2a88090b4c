"""The shard cache against real parts: a local HTTP server with Range support, real processes, real commands."""

import gzip
import hashlib
import json
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipfleet_worker.data.remote import CacheConfig, FetchStats, ShardCache, parse_bytes
from clipfleet_worker.data.sources import ShardSource, load_index_dir
from clipfleet_worker.errors import ConfigError, DataError


def _shard(n=5, payload=2000):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            for ext, data in (("jpg", bytes([i]) * payload), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """A tiny HTTP file server: Range support, injected failures, a hang that a test releases, a request log."""

    def __init__(self, files):
        self.files = dict(files)
        self.fail = {}  # path -> [status, ...] answered before the real file
        self.requests = []
        self.hang = None  # (path, Event): send half of the body, then wait for the event
        self.started = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                path = self.path.split("?", 1)[0]  # a signed URL's query names the same file
                queue = server.fail.get(path)
                if queue:
                    self.send_error(queue.pop(0))
                    return
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start, end = 0, len(body) - 1
                rng = self.headers.get("Range")
                if rng:
                    a, b = rng.split("=")[1].split("-")
                    start, end = int(a), int(b) if b else len(body) - 1
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start : end + 1]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                hang = server.hang
                if hang is not None and hang[0] == self.path:
                    server.hang = None  # one-shot: the retry is served whole
                    event = hang[1]
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    server.started.set()
                    event.wait()
                    return  # the connection closes short
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, path):
        return [r for r in self.requests if r[0] == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server({"/a.tar": _shard(), "/b.tar": _shard(3), "/c.tar": _shard(4), "/a.tar.gz": gzip.compress(_shard())})
    yield s
    s.close()


def _cache(tmp_path, **kw):
    kw.setdefault("base_delay", 0.0)
    return ShardCache(CacheConfig(dir=str(tmp_path / "cache"), **kw), stats=FetchStats())


def test_http_fetch_then_hit(server, tmp_path):
    cache = _cache(tmp_path)
    path = cache.local(server.url + "/a.tar")
    assert open(path, "rb").read() == server.files["/a.tar"]
    assert cache.local(server.url + "/a.tar") == path
    assert len(server.gets("/a.tar")) == 1
    assert (cache.stats.hits, cache.stats.misses, cache.stats.bytes_fetched) == (1, 1, len(server.files["/a.tar"]))
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([".evict.lock", os.path.basename(path), os.path.basename(path) + ".lock"])


def test_retries_5xx_and_429_then_succeeds(server, tmp_path):
    server.fail["/a.tar"] = [503, 429, 500]
    cache = _cache(tmp_path, retries=4)
    path = cache.local(server.url + "/a.tar")
    assert open(path, "rb").read() == server.files["/a.tar"]
    assert len(server.gets("/a.tar")) == 4


def test_exhausted_retries_name_url_and_status(server, tmp_path):
    server.fail["/a.tar"] = [503] * 3
    with pytest.raises(DataError, match=r"/a\.tar: fetch failed after 3 attempts: HTTP 503"):
        _cache(tmp_path, retries=3).local(server.url + "/a.tar")


def test_404_fails_at_once_naming_url(server, tmp_path):
    with pytest.raises(DataError) as e:
        _cache(tmp_path).local(server.url + "/missing.tar")
    assert str(e.value) == f"{server.url}/missing.tar: HTTP 404 Not Found"
    assert len(server.gets("/missing.tar")) == 1
    assert [n for n in os.listdir(tmp_path / "cache") if not n.endswith(".lock")] == []


def test_connection_refused_is_retried_then_fails(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DataError, match=r"fetch failed after 2 attempts: .*(refused|Errno)"):
        _cache(tmp_path, retries=2).local(f"http://127.0.0.1:{port}/a.tar")


def test_short_body_resumes_with_range(server, tmp_path):
    event = threading.Event()
    event.set()  # the hang ends at once: the connection closes after half the body
    server.hang = ("/a.tar", event)
    cache = _cache(tmp_path)
    path = cache.local(server.url + "/a.tar")
    assert open(path, "rb").read() == server.files["/a.tar"]
    ranges = [r for _, r in server.gets("/a.tar")]
    assert ranges[0] is None and ranges[1] == f"bytes={len(server.files['/a.tar']) // 2}-"


def test_size_and_sha256_are_verified(server, tmp_path):
    body = server.files["/a.tar"]
    good = hashlib.sha256(body).hexdigest()
    cache = _cache(tmp_path, retries=2)
    with pytest.raises(DataError, match=r"got \d+ bytes, the index says 7"):
        cache.local(server.url + "/a.tar", size=7)
    with pytest.raises(DataError, match="sha256 .* does not match the index's 00"):
        cache.local(server.url + "/a.tar", size=len(body), sha256="00" * 32)
    assert open(cache.local(server.url + "/a.tar", size=len(body), sha256=good), "rb").read() == body


def test_eviction_keeps_the_cache_under_its_cap(server, tmp_path):
    sizes = {p: len(server.files[p]) for p in ("/a.tar", "/b.tar", "/c.tar")}
    cache = _cache(tmp_path, max_bytes=sizes["/a.tar"] + sizes["/b.tar"])
    a = cache.local(server.url + "/a.tar")
    fd = os.open(a, os.O_RDONLY)  # a reader holding the shard open
    cache.local(server.url + "/b.tar")
    cache.local(server.url + "/c.tar")  # evicts a, the least recently used
    assert not os.path.exists(a)
    assert os.pread(fd, 10, 512) == server.files["/a.tar"][512:522]
    os.close(fd)
    total = sum(os.path.getsize(tmp_path / "cache" / n) for n in os.listdir(tmp_path / "cache") if not n.endswith(".lock"))
    assert total <= sizes["/a.tar"] + sizes["/b.tar"]
    cache.local(server.url + "/a.tar")  # fetched again
    assert len(server.gets("/a.tar")) == 2


_FILL = """
import sys
from clipfleet_worker.data.remote import CacheConfig, FetchStats, ShardCache
stats = FetchStats()
path = ShardCache(CacheConfig(dir=sys.argv[1]), stats=stats).local(sys.argv[2])
print(path, stats.hits, stats.misses, flush=True)
"""


def _filler(cache_dir, url):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.Popen([sys.executable, "-c", _FILL, cache_dir, url], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _blocked_flocks():
    # /proc/locks marks a process waiting for a lock held by another with "->".
    with open("/proc/locks") as f:
        return sum("->" in line for line in f)


def test_two_processes_fill_one_shard_once(server, tmp_path):
    release = threading.Event()
    server.hang = ("/a.tar", release)
    cache_dir = str(tmp_path / "cache")
    first = _filler(cache_dir, server.url + "/a.tar")
    server.started.wait(timeout=60)
    blocked = _blocked_flocks()
    second = _filler(cache_dir, server.url + "/a.tar")
    while _blocked_flocks() <= blocked:  # the second process waits on the fill lock
        assert second.poll() is None
    release.set()  # the first fill's connection closes short; it resumes with a Range request
    out = [p.communicate(timeout=60)[0].split() for p in (first, second)]
    assert out[0][0] == out[1][0]
    assert [o[1:] for o in out] == [["0", "1"], ["1", "0"]]
    assert open(out[0][0], "rb").read() == server.files["/a.tar"]
    assert [r for _, r in server.gets("/a.tar")][0] is None and len(server.gets("/a.tar")) == 2


def test_a_filler_killed_mid_fill_leaves_nothing_the_next_fill_trusts(server, tmp_path):
    release = threading.Event()
    server.hang = ("/a.tar", release)
    cache_dir = str(tmp_path / "cache")
    victim = _filler(cache_dir, server.url + "/a.tar")
    server.started.wait(timeout=60)
    part = [n for n in os.listdir(cache_dir) if n.endswith(".part")]
    while not part or os.path.getsize(os.path.join(cache_dir, part[0])) == 0:
        part = [n for n in os.listdir(cache_dir) if n.endswith(".part")]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    release.set()
    path = _cache(tmp_path).local(server.url + "/a.tar")
    assert open(path, "rb").read() == server.files["/a.tar"]
    assert [n for n in os.listdir(cache_dir) if n.endswith(".part")] == []


def test_pipe_source_and_failing_command(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_shard())
    cache = _cache(tmp_path, retries=2)
    path = cache.local(f"pipe:cat {shard}")
    assert open(path, "rb").read() == shard.read_bytes()
    url = f"pipe:cat {tmp_path}/nope.tar"
    with pytest.raises(DataError) as e:
        cache.local(url)
    assert str(e.value).startswith(f"{url}: fetch failed after 2 attempts: command exited with status 1: cat: ")
    assert "No such file" in str(e.value)


def test_tar_gz_is_decompressed_into_the_cache(server, tmp_path):
    local = tmp_path / "s.tar.gz"
    local.write_bytes(gzip.compress(_shard()))
    source = ShardSource(CacheConfig(dir=str(tmp_path / "cache"), base_delay=0.0))
    for url in (str(local), server.url + "/a.tar.gz"):
        idx = source.open(url)
        assert idx.num_samples == 5
        assert idx.read(3) == {"jpg": bytes([3]) * 2000, "txt": b"caption 3"}
        assert idx.path == url
        idx.close()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(gzip.compress(_shard())[:-40])
    with pytest.raises(DataError, match="bad.tar.gz: gzip stream is truncated"):
        source.open(str(bad))


def test_index_dir_with_range_reads(server, tmp_path):
    """A shard larger than its share of the cache is read sample by sample with Range requests."""
    from clipfleet_worker.cli_data import build_index

    out = tmp_path / "idx"
    summary = build_index([server.url + "/a.tar"], str(out), jobs=1, log=lambda s: None)
    assert summary["shards"] == 1 and summary["samples"] == 5
    index = load_index_dir(str(out))
    entry = index[server.url + "/a.tar"]
    assert entry.bytes == len(server.files["/a.tar"]) and entry.sha256 == hashlib.sha256(server.files["/a.tar"]).hexdigest()
    before = len(server.requests)
    source = ShardSource(CacheConfig(dir=str(tmp_path / "cache"), max_bytes=entry.bytes), index)
    idx = source.open(server.url + "/a.tar")
    assert idx.read(2) == {"jpg": bytes([2]) * 2000, "txt": b"caption 2"}
    assert all(r is not None and r.startswith("bytes=") for _, r in server.requests[before:])
    assert not os.path.exists(tmp_path / "cache") or os.listdir(tmp_path / "cache") == []
    # resumable: a second run skips the shard
    again = build_index([server.url + "/a.tar"], str(out), jobs=1, log=lambda s: None)
    assert again["skipped"] == 1


def test_parse_bytes():
    assert parse_bytes(123) == 123
    assert parse_bytes("50GB") == 50 * 10**9
    assert parse_bytes("64GiB") == 64 * 2**30
    assert parse_bytes("1.5M") == 1_500_000
    for bad in ("lots", "-1", 0, True, "5 XB"):
        with pytest.raises(ConfigError, match="data.cache.max_bytes"):
            parse_bytes(bad)


def test_index_of_a_tar_gz_addresses_its_decompressed_copy(server, tmp_path):
    from clipfleet_worker.cli_data import build_index

    local = tmp_path / "s.tar.gz"
    local.write_bytes(gzip.compress(_shard(4)))
    summary = build_index([str(local), server.url + "/a.tar.gz"], str(tmp_path / "idx"), jobs=2, log=lambda s: None)
    assert summary["samples"] == 9
    index = load_index_dir(str(tmp_path / "idx"))
    assert index[str(local)].bytes == local.stat().st_size
    source = ShardSource(CacheConfig(dir=str(tmp_path / "cache"), base_delay=0.0), index)
    for url, n in ((str(local), 4), (server.url + "/a.tar.gz", 5)):
        idx = source.open(url)
        assert idx.num_samples == n and idx.read(n - 1)["txt"] == f"caption {n - 1}".encode()
        idx.close()


def test_index_command_needs_out_for_remote_shards_and_names_failures(server, tmp_path):
    from clipfleet_worker.cli_data import build_index

    with pytest.raises(ConfigError, match="--out is required for remote shards"):
        build_index([server.url + "/a.tar"], None)
    with pytest.raises(DataError, match=r"/missing\.tar: HTTP 404"):
        build_index([server.url + "/missing.tar"], str(tmp_path / "idx"), jobs=1)
    with pytest.raises(DataError, match=r"pipe:exit 3: failed after 2 attempts: command exited with status 3"):
        build_index(["pipe:exit 3"], str(tmp_path / "idx"), jobs=1, attempts=2)
    shard = tmp_path / "l.tar"
    shard.write_bytes(_shard(2))
    assert build_index([str(shard)], None, jobs=1)["out"] == str(tmp_path)
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"l.tar": 2}


def test_index_command_retries_transient_failures(server, tmp_path):
    from clipfleet_worker.cli_data import build_index

    server.fail["/a.tar"] = [503, 429]
    summary = build_index([server.url + "/a.tar?X-Amz-Signature=abc"], str(tmp_path / "idx"), jobs=1, attempts=3)
    assert summary["shards"] == 1
    # A signed URL's query is not part of the shard's name.
    assert json.loads((tmp_path / "idx" / "sizes.json").read_text()) == {"a.tar": 5}
    assert [p for p, _ in server.requests].count("/a.tar?X-Amz-Signature=abc") == 3
    with pytest.raises(DataError, match=r"failed after 2 attempts: HTTP 503"):
        server.fail["/b.tar"] = [503, 503]
        build_index([server.url + "/b.tar"], str(tmp_path / "idx"), jobs=1, attempts=2)


def test_range_reads_retry_and_fail_naming_the_url(server, tmp_path):
    from clipfleet_worker.data.remote import RangeReader

    stats = FetchStats()
    reader = RangeReader(server.url + "/a.tar", CacheConfig(dir=str(tmp_path), retries=3, base_delay=0.0), stats)
    server.fail["/a.tar"] = [503, 429]
    assert reader.pread(100, 512) == server.files["/a.tar"][512:612]
    assert stats.bytes_fetched == 100
    with pytest.raises(DataError, match=r"/nope\.tar: HTTP 404"):
        RangeReader(server.url + "/nope.tar", reader.config).pread(10, 0)


def test_stats_delta_is_per_report():
    stats = FetchStats()
    stats.add(fetched=10, misses=1, seconds=0.5)
    stats.add(hits=2)
    assert stats.delta() == (10, 2, 1, 0.5)
    stats.add(hits=1)
    assert stats.delta() == (0, 1, 0, 0.0)


def test_zero_shot_class_files_next_to_http_val_shards(server):
    from clipfleet_worker.data.shards import read_zero_shot

    server.files["/ds/classnames.txt"] = b"cat\ndog\n"
    server.files["/ds/zeroshot_classification_templates.txt"] = b"a photo of a {c}.\n"
    classes = read_zero_shot(server.url + "/ds/test/0.tar?sig=a/b")
    assert classes is not None and classes.names == ["cat", "dog"] and classes.templates == ["a photo of a {c}."]
    assert classes.source == server.url + "/ds/classnames.txt"
    assert read_zero_shot("pipe:cat /x/test/0.tar") is None
    assert read_zero_shot(server.url + "/other/test/0.tar") is None
