import json

import pytest

from clipfleet_worker.data import expand_urls, read_classes, read_sizes
from clipfleet_worker.errors import ConfigError


def test_brace_range_keeps_zero_padding():
    assert expand_urls(["/d/train-{00000..00003}.tar"]) == [f"/d/train-{i:05d}.tar" for i in range(4)]


def test_brace_range_without_padding_and_step_and_descending():
    assert expand_urls(["s{8..11}.tar"]) == ["s8.tar", "s9.tar", "s10.tar", "s11.tar"]
    assert expand_urls(["s{0..6..3}"]) == ["s0", "s3", "s6"]
    assert expand_urls(["s{3..1}"]) == ["s3", "s2", "s1"]


def test_brace_lists_nested_and_multiplied():
    assert expand_urls(["{a,b}-{0..1}"]) == ["a-0", "a-1", "b-0", "b-1"]
    assert expand_urls(["x{a,b{1,2}}y"]) == ["xay", "xb1y", "xb2y"]


def test_double_colon_joins_sources_in_order():
    got = expand_urls(["/a/{00..01}.tar::/b/x.tar", "/c/y.tar"])
    assert got == ["/a/00.tar", "/a/01.tar", "/b/x.tar", "/c/y.tar"]


def test_literal_braces_and_unbalanced_patterns():
    assert expand_urls(["a{b}c"]) == ["a{b}c"]
    with pytest.raises(ConfigError, match="unbalanced"):
        expand_urls(["a{0..3.tar"])
    with pytest.raises(ConfigError, match="unbalanced"):
        expand_urls(["a}b"])


def test_read_sizes_from_sizes_json_and_img2dataset_stats(tmp_path):
    (tmp_path / "sizes.json").write_text(json.dumps({"a.tar": 7}))
    (tmp_path / "00001_stats.json").write_text(json.dumps({"count": 10, "successes": 9}))
    urls = [str(tmp_path / "a.tar"), str(tmp_path / "00001.tar"), str(tmp_path / "zzz.tar")]
    assert read_sizes(urls) == [7, 9, None]


def test_read_classes_next_to_shard(tmp_path):
    assert read_classes(str(tmp_path / "a.tar")) is None
    (tmp_path / "classes.json").write_text(json.dumps({"seg_classes": ["bg", "x"]}))
    assert read_classes("file://" + str(tmp_path / "a.tar")) == {"seg_classes": ["bg", "x"]}
