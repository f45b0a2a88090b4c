"""Run reports: real PNGs of the expected size, restarts drawn, index.md/index.html referencing every plot."""

import json
import math
import struct

import pytest
from PIL import Image

from clipfleet_worker import report
from clipfleet_worker.__main__ import main as worker_main
from clipfleet_worker.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _points(attempt: int, steps: range, lr0: float = 1e-3) -> list[dict]:
    return [
        {
            "stage": "main",
            "attempt": attempt,
            "step": s,
            "epoch": s // 10,
            "loss": 4.0 * math.exp(-s / 20) + 0.1,
            "lr": lr0 * (1 - s / 40),
            "temperature": 14.3 + s / 100,
            "samplesPerSecond": 600 + 10 * (s % 5),
            "stepSeconds": 0.1 + 0.01 * (s % 3),
            "dataWaitSeconds": 0.01,
            "gradNorm": 1.0,
            "tsMs": 1_800_000_000_000 + 100 * s,
        }
        for s in steps
    ]


def _data(restart: bool = True) -> dict:
    attempts = [{"attempt": 1, "resumedFromStep": 0, "lastStep": 25 if restart else 40, "startedAtMs": 1, "endedAtMs": 2, "outcome": "failed" if restart else "succeeded", "reason": "rank 1 exited with code 1" if restart else "finished", "worldSize": 2}]
    points = _points(1, range(1, 26 if restart else 41))
    if restart:
        attempts.append({"attempt": 2, "resumedFromStep": 20, "lastStep": 40, "startedAtMs": 3, "endedAtMs": 4, "outcome": "succeeded", "reason": "finished", "worldSize": 2})
        points += _points(2, range(21, 41))
    return {
        "schema": report.SCHEMA,
        "generatedAtMs": 1_800_000_100_000,
        "job": {"id": "j-20270115-080000-abcdef", "name": "tiny <&> run", "state": "SUCCEEDED", "reason": "finished 40 steps", "createdAtMs": 1_800_000_000_000, "updatedAtMs": 1_800_000_050_000},
        "summary": {"steps": 40, "totalSteps": 40, "samplesSeen": 2560, "firstLoss": 3.9, "finalLoss": 0.6, "restarts": 1 if restart else 0, "wallSeconds": 41.5, "finalParamsSha256": "ab" * 32,
                    "skippedSamples": 12, "skippedByReason": {"undecodable image": 2, "no caption": 10},
                    "warnings": ["zero-shot skipped: no class label"]},
        "stages": [
            {
                "name": "main",
                "task": "pretrain",
                "state": "SUCCEEDED",
                "reason": "finished 40 steps",
                "restarts": 1 if restart else 0,
                "metrics": {"retrieval/i2t_R@1": 0.25, "retrieval/t2i_R@1": 0.3, "zeroshot/top1": 0.5},
                "attempts": attempts,
                "checkpoints": [{"step": 20, "committedAtMs": 5, "sizeBytes": 1000}],
                "points": points,
            },
            {"name": "eval", "task": "eval", "state": "SUCCEEDED", "reason": "", "restarts": 0, "metrics": {"seg/mIoU": 0.4, "depth/RMSE": 1.25}, "attempts": [], "checkpoints": [], "points": []},
        ],
    }


def _ihdr(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def _red_pixels(path) -> int:
    """Pixels close to matplotlib's tab:red (#d62728), the restart marker colour."""
    img = Image.open(path).convert("RGB")
    return sum(1 for r, g, b in img.getdata() if abs(r - 214) < 20 and abs(g - 39) < 20 and abs(b - 40) < 20)


def test_writes_every_plot_as_a_png_of_the_figure_size(tmp_path):
    out = tmp_path / "report"
    rep = report.write_report(_data(), str(out))
    names = sorted(p.file for p in rep.plots)
    assert names == sorted(
        ["main_loss.png", "main_lr.png", "main_throughput.png", "main_step_time.png", "main_logit_scale.png", "main_eval.png", "eval_eval.png"]
    )
    for p in rep.plots:
        path = out / p.file
        assert _ihdr(path) == (report.WIDTH_PX, report.HEIGHT_PX) == (960, 540) == (p.width, p.height)
        assert path.stat().st_size > 10_000, f"{p.file} is suspiciously small"
        with Image.open(path) as img:
            img.verify()


def test_restarts_are_drawn_only_when_there_were_some(tmp_path):
    report.write_report(_data(restart=True), str(tmp_path / "r"))
    report.write_report(_data(restart=False), str(tmp_path / "n"))
    for curve in ("loss", "lr", "step_time"):
        assert _red_pixels(tmp_path / "r" / f"main_{curve}.png") > 20, f"no restart line in {curve}"
        assert _red_pixels(tmp_path / "n" / f"main_{curve}.png") == 0, f"a restart line without a restart in {curve}"


def test_index_files_reference_every_plot_and_tabulate_summary_attempts_and_metrics(tmp_path):
    out = tmp_path / "report"
    rep = report.write_report(_data(), str(out))
    md = (out / "index.md").read_text()
    page = (out / "index.html").read_text()
    for p in rep.plots:
        assert f"]({p.file})" in md
        assert f'<img src="{p.file}"' in page
    assert md.startswith("# clipfleet report: tiny <&> run (j-20270115-080000-abcdef)")
    assert "| restarts | 1 |" in md
    assert "| skipped samples | 12: no caption 10, undecodable image 2 |" in md
    assert "| warning | zero-shot skipped: no class label |" in md
    assert "| 2 | 2 | 20 | 40 | succeeded | finished |" in md
    assert "| retrieval/i2t_R@1 | 0.25 |" in md
    assert "| depth/RMSE | 1.25 |" in md
    assert "1 restart(s), marked by dashed red lines" in md
    assert "No training steps were recorded for this stage." in md  # the eval stage
    # HTML escapes what it shows; the tables carry the same facts.
    assert "tiny &lt;&amp;&gt; run" in page and "tiny <&> run" not in page
    assert "<td>rank 1 exited with code 1</td>" in page
    assert "<td>zeroshot/top1</td><td>0.5</td>" in page


def test_load_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"report data .*missing.json: no such file"):
        report.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other/v9"}')
    with pytest.raises(ConfigError, match=r"bad.json: expected schema 'clipfleet.report/v1', got 'other/v9'"):
        report.load(str(bad))
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON"):
        report.load(str(bad))


def test_worker_cli_report_subcommand(tmp_path, capsys):
    data = tmp_path / "report.json"
    data.write_text(json.dumps(_data()))
    assert worker_main(["report", "--data", str(data), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["indexHtml"] == str(tmp_path / "out" / "index.html")
    assert len(summary["plots"]) == 7 and all(p["width"] == 960 and p["height"] == 540 for p in summary["plots"])
    assert worker_main(["report", "--data", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")]) == 2
    assert "clipfleet report: report data" in capsys.readouterr().err


def _experiment() -> dict:
    """Stages of a small experiment, labelled by variant (and data fraction for the fine-tunes)."""
    data = _data(restart=False)
    base = data["stages"][0]
    stages = []
    for variant, r1, miou, rmse in (("alt", 0.02, 0.30, 0.9), ("vecap", 0.40, 0.45, 0.6), ("random", None, 0.25, 1.1)):
        if r1 is not None:
            stages.append({**base, "name": f"pretrain-{variant}", "labels": {"variant": variant}, "metrics": {"retrieval/i2t_R@1": r1, "zeroshot/top1": 0.2}})
        for frac, scale in (("100%", 1.0), ("10%", 0.8)):
            stages.append({**base, "name": f"seg-{variant}-{frac}", "labels": {"variant": variant, "data": frac}, "metrics": {"seg/mIoU": miou * scale}, "points": []})
            stages.append({**base, "name": f"depth-{variant}-{frac}", "labels": {"variant": variant, "data": frac}, "metrics": {"depth/rmse": rmse / scale}, "points": []})
    data["stages"] = stages
    data["compare"] = {"by": "variant", "metrics": ["retrieval/i2t_R@1", "seg/mIoU", "depth/rmse"]}
    return data


def test_comparison_pivots_stages_by_a_label_with_best_values_marked(tmp_path):
    rep = report.write_report(_experiment(), str(tmp_path))
    cmp = json.loads((tmp_path / "comparison.json").read_text())
    assert cmp["rows"] == ["alt", "vecap", "random"]
    assert [c["label"] for c in cmp["columns"]] == [
        "retrieval/i2t_R@1",
        "seg/mIoU (data=100%)",
        "seg/mIoU (data=10%)",
        "depth/rmse (data=100%)",
        "depth/rmse (data=10%)",
    ]
    assert cmp["values"][2][0] is None  # the random init has no pretraining stage
    assert cmp["values"][1][1] == pytest.approx(0.45)
    assert [c["lowerIsBetter"] for c in cmp["columns"]] == [False, False, False, True, True]
    md = (tmp_path / "comparison.md").read_text()
    vecap_row = next(line for line in md.splitlines() if line.startswith("| vecap"))
    assert vecap_row.count("**") == 2 * 5, "vecap is best in every column (highest R@1 and mIoU, lowest RMSE)"
    assert "![Comparison by variant](comparison.png)" in md
    png = tmp_path / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "comparison.png" in {p.file for p in rep.plots}
    assert "Comparison by variant" in (tmp_path / "index.md").read_text()


def test_comparison_by_a_label_no_stage_has_is_a_clear_error(tmp_path):
    data = _experiment()
    data["compare"] = {"by": "flavour"}
    with pytest.raises(ConfigError, match="--compare flavour: no stage has a label 'flavour'"):
        report.write_report(data, str(tmp_path))
