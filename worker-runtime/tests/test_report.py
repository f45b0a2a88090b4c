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
    assert "| restarts after failures | 1 |" in md
    assert "| user stops (resumed) | 0 |" in md
    assert "| skipped samples | 12: no caption 10, undecodable image 2 |" in md
    assert "| warning | zero-shot skipped: no class label |" in md
    assert "| 2 | 2 | 20 | 40 | succeeded | finished |" in md
    assert "| retrieval/i2t_R@1 | 0.25 |" in md
    assert "| depth/RMSE | 1.25 | metres |" in md
    assert "1 restart after a failure; each new attempt is marked at the step it resumed from (dashed red: after a failure" in md
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


def _stage_with_attempts(outcomes: list[str], steps_per_attempt: int = 10) -> dict:
    """A pretraining stage whose attempts ended with `outcomes` (the last one succeeded), each resuming where the last stopped."""
    attempts, points = [], []
    for i, outcome in enumerate(outcomes + ["succeeded"]):
        start = i * steps_per_attempt
        attempts.append({"attempt": i + 1, "resumedFromStep": start, "lastStep": start + steps_per_attempt, "outcome": outcome, "reason": outcome, "worldSize": 1})
        points += _points(i + 1, range(start + 1, start + steps_per_attempt + 1))
    return {"name": "main", "task": "pretrain", "state": "SUCCEEDED", "reason": "finished", "metrics": {}, "attempts": attempts, "checkpoints": [], "points": points}


def test_restarts_user_stops_and_preemptions_are_told_apart_from_attempt_outcomes(tmp_path):
    stage = _stage_with_attempts(["cancelled", "failed", "cancelled", "preempted", "lost"])
    assert [(r.attempt, r.step, r.kind) for r in report._restarts(stage)] == [
        (2, 10, "user stop"), (3, 20, "failure"), (4, 30, "user stop"), (5, 40, "preemption"), (6, 50, "failure")]
    counts = report.restart_counts(stage)
    assert counts == {"user stop": 2, "failure": 2, "preemption": 1}
    assert report.describe_restarts(counts) == "2 restarts after a failure, 2 user stops (resumed), 1 preemption (resumed)"
    data = _data(restart=False)
    data["summary"].update({"restarts": 2, "userStops": 2, "preemptions": 1})
    data["stages"] = [stage]
    report.write_report(data, str(tmp_path))
    md = (tmp_path / "index.md").read_text()
    assert "| restarts after failures | 2 |" in md and "| user stops (resumed) | 2 |" in md and "| preemptions (resumed) | 1 |" in md
    assert "2 restarts after a failure, 2 user stops (resumed), 1 preemption (resumed); each new attempt is marked" in md
    # Only the failures are drawn in the restart red; a stop is a dotted black line.
    only_stops = dict(data, stages=[_stage_with_attempts(["cancelled", "cancelled"])])
    report.write_report(only_stops, str(tmp_path / "stops"))
    assert _red_pixels(tmp_path / "stops" / "main_loss.png") == 0
    assert "2 user stops (resumed); each new attempt" in (tmp_path / "stops" / "index.md").read_text()


def test_a_stage_gets_plots_only_for_the_series_its_task_reports(tmp_path):
    data = _data(restart=False)
    depth = _stage_with_attempts([])
    depth.update(name="depth", task="finetune-depth", metrics={"depth/rmse": 0.77, "depth/abs_rel": 0.12, "depth/delta1": 0.9})
    for p in depth["points"]:
        p["temperature"] = 0.0  # dense fine-tunes have no logit scale
        p["dataWaitSeconds"] = 0.0
    data["stages"] = [depth]
    rep = report.write_report(data, str(tmp_path))
    assert sorted(p.file for p in rep.plots) == ["depth_eval.png", "depth_loss.png", "depth_lr.png", "depth_step_time.png", "depth_throughput.png"]
    assert not (tmp_path / "depth_logit_scale.png").exists()
    assert "Logit scale" not in (tmp_path / "index.md").read_text()
    assert report.has_series(depth["points"], "loss") and not report.has_series(depth["points"], "temperature")
    assert not report.has_series([{"loss": float("nan")}, {"loss": None}], "loss")


def test_evaluation_metrics_are_grouped_by_unit_and_sorted_numerically():
    metrics = {"retrieval/i2t_R@10": 0.5, "retrieval/i2t_R@1": 0.1, "retrieval/i2t_R@5": 0.3, "retrieval/t2i_R@1": 0.2,
               "zeroshot/top5": 0.6, "zeroshot/top1": 0.2, "depth/rmse": 0.77, "depth/abs_rel": 0.12, "depth/delta1": 0.9,
               "depth/delta3": 0.99, "depth/delta2": 0.95, "seg/mIoU": 0.3, "seg/IoU.circle": 0.4, "seg/out_of_range_labels": 12, "custom/score": 7}
    groups = report.eval_groups(metrics)
    assert [u for u, _ in groups] == ["ratio", "metres", "count", "value"]
    ratio = [k for k, _ in groups[0][1]]
    assert ratio == ["depth/abs_rel", "depth/delta1", "depth/delta2", "depth/delta3", "retrieval/i2t_R@1", "retrieval/i2t_R@5",
                     "retrieval/i2t_R@10", "retrieval/t2i_R@1", "seg/IoU.circle", "seg/mIoU", "zeroshot/top1", "zeroshot/top5"]
    assert groups[1][1] == [("depth/rmse", 0.77)]
    assert groups[2][1] == [("seg/out_of_range_labels", 12.0)]
    assert groups[3][1] == [("custom/score", 7.0)]
    assert sorted(["R@10", "R@1", "R@5"], key=report.natural_key) == ["R@1", "R@5", "R@10"]
    assert report.metric_unit("depth/RMSE") == "metres" and report.metric_unit("zeroshot/top1") == "ratio"


def _two_jobs() -> dict:
    a, b = _data(restart=True), _data(restart=False)
    b["job"] = dict(b["job"], id="j-20270115-090000-fedcba", name="other")
    for st in b["stages"]:
        st["metrics"] = {k: v * 1.3 for k, v in st["metrics"].items()}
    return {"schema": report.SCHEMA, "generatedAtMs": 1_800_000_100_000,
            "jobs": [{k: d[k] for k in ("job", "summary", "stages")} for d in (a, b)]}


def test_jobs_are_compared_side_by_side_with_the_experiments_comparison(tmp_path, capsys):
    data = _two_jobs()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    assert worker_main(["report", "--data", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert sorted(p["file"] for p in written["plots"]) == ["compare_main_loss.png", "compare_main_lr.png", "compare_main_throughput.png", "comparison.png"]
    cmp = json.loads((out / "comparison.json").read_text())
    assert cmp["by"] == "job" and cmp["rows"] == ["tiny <&> run", "other"]
    # Columns sorted naturally, each metric qualified by its stage (the jobs have two).
    assert [c["label"] for c in cmp["columns"]] == ["depth/RMSE (stage=eval)", "retrieval/i2t_R@1 (stage=main)", "retrieval/t2i_R@1 (stage=main)",
                                                   "seg/mIoU (stage=eval)", "zeroshot/top1 (stage=main)"]
    assert cmp["values"][1][1] == pytest.approx(0.325)
    md = (out / "comparison.md").read_text()
    first = next(line for line in md.splitlines() if line.startswith("| tiny"))
    assert first.startswith("| tiny <&> run | **1.25** |"), "RMSE: lower is better, whatever its case"
    index = (out / "index.md").read_text()
    assert index.startswith("# clipfleet report: 2 jobs compared (tiny <&> run, other)")
    assert "| tiny <&> run | j-20270115-080000-abcdef | SUCCEEDED | 40 | 3.9 -> 0.6 | 1 | 0 | 0 | 41.5 s | [j-20270115-080000-abcdef/index.html](j-20270115-080000-abcdef/index.html) |" in index
    assert '<a href="j-20270115-090000-fedcba/index.html">' in (out / "index.html").read_text()
    # Each job's own report beside the comparison.
    for job_id in ("j-20270115-080000-abcdef", "j-20270115-090000-fedcba"):
        assert (out / job_id / "index.html").exists() and (out / job_id / "main_loss.png").exists()
    for p in written["plots"]:
        with Image.open(out / p["file"]) as img:
            assert img.size == (p["width"], p["height"])


def test_job_labels_are_unique_and_a_single_job_is_no_comparison(tmp_path):
    jobs = [{"job": {"id": "j-1-aaaaaa", "name": "x"}}, {"job": {"id": "j-2-bbbbbb", "name": "x"}}, {"job": {"id": "j-3-cccccc", "name": "y"}}]
    assert report.job_labels(jobs) == ["x aaaaaa", "x bbbbbb", "y"]
    one = _two_jobs()
    one["jobs"] = one["jobs"][:1]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(one))
    with pytest.raises(ConfigError, match="`jobs` compares two or more jobs, got 1"):
        report.load(str(path))
