"""task recaption on the worker side: the plugin loader (the interface the
captioner helper's built-in plugins implement), the output shard writer
(every member kept, the caption added, byte-identical when rewritten), and
the caption source a later stage reads from a `vecap.txt` member."""

import io
import json
import os
import sys
import tarfile
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from clipfleet_worker.captioning.plugins import CaptionerContext, PluginError, check_main, load_captioner, load_fuser, resolve_entry_point
from clipfleet_worker.data import all_captions
from clipfleet_worker.data.sources import ShardSource
from clipfleet_worker.data.writer import write_shard
from clipfleet_worker.lifecycle import FaultInjection
from clipfleet_worker.tasks.recaption import ShardWriter

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "plugins")
CTX = CaptionerContext(device=torch.device("cpu"), seed=3, rank=0, world_size=1, run_dir="/tmp")


@pytest.fixture(autouse=True)
def fixture_plugins(monkeypatch):
    monkeypatch.syspath_prepend(FIXTURES)


def test_an_entry_point_loads_and_its_captioner_follows_the_interface():
    cap = load_captioner({"entry_point": "recap_fixture:make", "args": {"prefix": "a shot"}}, CTX)
    img = Image.new("RGB", (16, 16), (200, 40, 40))
    out = cap.caption([img, img], ["alt one", "alt two"])
    assert out == cap.caption([img, img], ["alt one", "alt two"]), "deterministic"
    assert len(out) == 2 and "red" in out[0] and "a shot" in out[0]
    fuser = load_fuser({"entry_point": "recap_fixture:make_fuser", "args": {"keep": 1}}, CTX)
    assert fuser.fuse(["a red thing"], ["sunset.jpg red"]) == ["a red thing, sunset.jpg"]


@pytest.mark.parametrize(
    "entry_point, message",
    [
        ("no_such_module:make", "no module named 'no_such_module'"),
        ("recap_fixture:nothing", "has no attribute 'nothing'"),
        ("recap_fixture:COLOURS", "is not callable"),
        ("recap_fixture", "expected module:factory"),
    ],
)
def test_an_entry_point_that_does_not_load_is_one_line(entry_point, message, capsys):
    with pytest.raises(PluginError, match=message.replace("(", r"\(")):
        resolve_entry_point(entry_point)
    assert check_main(entry_point) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipfleet plugins: ") and err.count("\n") == 1


def test_a_factory_returning_no_captioner_is_refused():
    with pytest.raises(PluginError, match="no caption"):
        load_captioner({"entry_point": "recap_fixture:make_fuser", "args": {}}, CTX)
    with pytest.raises(PluginError, match="no fuse"):
        load_fuser({"entry_point": "recap_fixture:make", "args": {}}, CTX)


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _input_shard(path: str) -> None:
    samples = []
    for i in range(5):
        members = [("png", _png((40 * i, 100, 200))), ("txt", f"alt {i}".encode()), ("json", json.dumps({"vecap": "ground truth"}).encode())]
        if i == 3:
            members[0] = ("png", b"not an image")
        if i == 4:
            members.append(("vecap.txt", b"an old caption\n"))
        samples.append((f"s{i:04d}", members))
    write_shard(path, samples)


def _writer():
    ctx = SimpleNamespace(assignment=SimpleNamespace(attempt=1, rank=0), fault=FaultInjection("", 0, 1))
    cap = load_captioner({"entry_point": "recap_fixture:make", "args": {}}, CTX)
    fuser = load_fuser({"entry_point": "recap_fixture:make_fuser", "args": {"keep": 2}}, CTX)
    return ShardWriter(ctx, cap, fuser, ShardSource(), "vecap.txt", 2)


def test_the_output_keeps_every_member_adds_the_caption_and_is_rewritten_byte_for_byte(tmp_path):
    src = str(tmp_path / "in.tar")
    _input_shard(src)
    out = str(tmp_path / "out.tar")
    sha, size, n = _writer().write(src, out)
    assert n == 5 and size == os.path.getsize(out)
    first = open(out, "rb").read()
    # A torn leftover and a stale temp file of a dead rank are replaced, and the bytes come out the same.
    with open(out, "r+b") as f:
        f.truncate(100)
    open(out + ".tmp-a0-r1", "wb").close()
    assert _writer().write(src, out)[0] == sha
    assert open(out, "rb").read() == first
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    with tarfile.open(out) as tar:
        infos = tar.getmembers()
        names = [m.name for m in infos]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m in infos)
        assert names[:4] == ["s0000.png", "s0000.txt", "s0000.json", "s0000.vecap.txt"]
        assert "s0003.vecap.txt" not in names, "an undecodable image is kept, uncaptioned"
        assert names.count("s0004.vecap.txt") == 1, "an existing caption member is replaced"
        members = {m.name: tar.extractfile(m).read() for m in infos}
    caption = members["s0004.vecap.txt"].decode()
    assert caption.endswith("\n") and "tones" in caption and "old caption" not in caption
    # A later stage's caption source `vecap` reads the member, before the .json field of that name.
    sample = {"txt": members["s0000.txt"], "json": members["s0000.json"], "vecap.txt": members["s0000.vecap.txt"]}
    assert all_captions(sample, ["alt", "vecap"]) == {"alt": ["alt 0"], "vecap": [members["s0000.vecap.txt"].decode().strip()]}
    assert all_captions({"json": members["s0000.json"]}, ["vecap"]) == {"vecap": ["ground truth"]}
