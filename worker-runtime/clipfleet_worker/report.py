"""Run reports: PNG plots of a job's training curves and evaluation results, tied together by index.md and index.html.

`clipfleet report JOB --out DIR` gathers the job and its per-step history
from the orchestrator, writes them to DIR/report.json, and runs
`python -m clipfleet_worker report --data DIR/report.json --out DIR`, which
lands here. Plotting lives in the worker runtime because matplotlib does; the
input is plain JSON so the report can be re-rendered without the
orchestrator.

report.json (schema "clipfleet.report/v1"), camelCase as the control API:
  {"schema", "generatedAtMs",
   "job": {"id", "name", "state", "reason", "createdAtMs", "updatedAtMs"},
   "summary": {...}  # the CLI's `status --json` summary (steps, samples, losses, restarts, userStops, preemptions, wall time)
   "stages": [{"name", "task", "state", "reason", "restarts", "userStops", "preemptions", "metrics": {name: value},
               "attempts": [{"attempt", "resumedFromStep", "lastStep", "startedAtMs", "endedAtMs",
                             "outcome", "reason", "worldSize"}],
               "checkpoints": [{"step", "committedAtMs", "sizeBytes"}],
               "points": [{"attempt", "step", "epoch", "loss", "lr", "temperature", "samplesPerSecond",
                           "stepSeconds", "dataWaitSeconds", "gradNorm", "tsMs"}],
               "labels": {name: value}}],           # the stage's spec labels
   "compare": {"by": LABEL, "metrics": [names]}}   # optional: `--compare LABEL [--metrics ...]`

A stage's "restarts" are restarts after a failure, "userStops" attempts a user
stopped that were resumed, "preemptions" preempted attempts started again: all
counted by the orchestrator from attempt outcomes. The plots tell them apart
from the attempts' outcomes too.

`clipfleet report JOB1 JOB2 ...` writes {"schema", "generatedAtMs", "jobs":
[{"job", "summary", "stages"}, ...], "compare"?}: each job's own report goes
into a subfolder named by its id, the jobs' curves are drawn side by side per
stage name, and their final metrics go through the same comparison as
--compare (by "job" unless a label is given).

With "compare", stages are compared by one of their labels (e.g. the variant of
an experiment): comparison.md, comparison.json and comparison.png hold a table
with a row per value of that label and a column per metric and combination of
the other labels (e.g. "seg/mIoU (data=10%)"), best value of each column in bold.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import struct
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import ClipfleetWorkerError, ConfigError, WorkerEnvironmentError

SCHEMA = "clipfleet.report/v1"
# Every figure is exactly this size (no bbox_inches="tight"): FIGSIZE inches at DPI.
FIGSIZE = (9.6, 5.4)
DPI = 100
WIDTH_PX, HEIGHT_PX = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)
EXIT_USER_ERROR = 2
# Curve colours: matplotlib's default cycle without red, which marks restarts.
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
RESTART_COLOR = "tab:red"

# (file suffix, title, y label, (point field, legend label) pairs plotted)
CURVES: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("loss", "Training loss", "loss", [("loss", "loss")]),
    ("lr", "Learning rate", "learning rate", [("lr", "lr")]),
    ("throughput", "Throughput", "samples / s", [("samplesPerSecond", "samples/s")]),
    ("step_time", "Step time", "seconds", [("stepSeconds", "step"), ("dataWaitSeconds", "data wait")]),
    ("logit_scale", "Logit scale (1/temperature)", "logit scale", [("temperature", "logit scale")]),
]


@dataclass(frozen=True)
class Plot:
    """One written image: its file name (relative to the report directory), caption and pixel size."""

    file: str
    caption: str
    width: int
    height: int


@dataclass(frozen=True)
class Report:
    """What `write_report` produced."""

    out: str
    index_md: str
    index_html: str
    plots: list[Plot]


def load(path: str) -> dict[str, Any]:
    """Reads and checks report.json; a missing file or another schema is a user error naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"report data {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"report data {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"report data {path}: expected schema {SCHEMA!r}, got {got!r}")
    if isinstance(data.get("jobs"), list):
        for i, j in enumerate(data["jobs"]):
            if not isinstance(j, dict) or not isinstance(j.get("stages"), list) or not isinstance(j.get("job"), dict):
                raise ConfigError(f"report data {path}: jobs[{i}] needs a `job` mapping and a `stages` list")
        if len(data["jobs"]) < 2:
            raise ConfigError(f"report data {path}: `jobs` compares two or more jobs, got {len(data['jobs'])}")
        return data
    if not isinstance(data.get("stages"), list) or not isinstance(data.get("job"), dict):
        raise ConfigError(f"report data {path}: needs a `job` mapping and a `stages` list (or a `jobs` list to compare)")
    return data


def _integer_ticks() -> Any:
    """Tick positions on whole steps only (no "step 2.5")."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def png_size(path: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk: what matplotlib wrote (inches x DPI may round either way)."""
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise WorkerEnvironmentError(
            f"reports need matplotlib, which {sys.executable} cannot import ({err}); install python3-matplotlib or pass --python"
        ) from None
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "stage"


def _finite(v: Any) -> float:
    x = float(v) if isinstance(v, (int, float)) else math.nan
    return x if math.isfinite(x) else math.nan


def _attempt_series(points: list[dict[str, Any]], field: str) -> dict[int, tuple[list[int], list[float]]]:
    """Per attempt, the (steps, values) of one field, in report order."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    for p in points:
        xs, ys = out.setdefault(int(p.get("attempt", 0)), ([], []))
        xs.append(int(p.get("step", 0)))
        ys.append(_finite(p.get(field)))
    return out


# Why a new attempt started, from how the one before it ended (Attempt.outcome): the kind of its mark in plots.
RESTART_KINDS: dict[str, tuple[str, str, str, str]] = {
    # outcome before: (kind, legend label, colour, line style)
    "failed": ("failure", "restart after a failure", RESTART_COLOR, "--"),
    "lost": ("failure", "restart after a failure", RESTART_COLOR, "--"),
    "cancelled": ("user stop", "resumed after a user stop", "black", ":"),
    "preempted": ("preemption", "resumed after a preemption", "darkgoldenrod", "-."),
}
UNKNOWN_RESTART = ("other", "new attempt", "tab:gray", "--")


@dataclass(frozen=True)
class Restart:
    """An attempt after a stage's first: where it resumed and why the previous one ended."""

    attempt: int
    step: int
    kind: str  # failure | user stop | preemption | other
    ordinal: int  # which start of the stage it is (attempt numbers count across a pipeline's stages)
    label: str
    color: str
    style: str


def _restarts(stage: dict[str, Any]) -> list[Restart]:
    """Every attempt after the stage's first, with the kind of restart its predecessor's outcome makes it."""
    attempts = sorted(stage.get("attempts") or [], key=lambda a: int(a.get("attempt", 0)))
    out = []
    for n, (prev, a) in enumerate(zip(attempts, attempts[1:])):
        kind, label, color, style = RESTART_KINDS.get(str(prev.get("outcome", "")), UNKNOWN_RESTART)
        out.append(Restart(int(a["attempt"]), int(a.get("resumedFromStep", 0)), kind, n + 2, label, color, style))
    return out


def restart_counts(stage: dict[str, Any]) -> dict[str, int]:
    """Restarts of a stage by kind ("failure", "user stop", "preemption", "other"), counted from its attempts."""
    counts: dict[str, int] = {}
    for r in _restarts(stage):
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return counts


def describe_restarts(counts: dict[str, int]) -> str:
    """"1 restart after a failure, 2 user stops (resumed)", or "" when there were none."""
    words = [("failure", "restart after a failure", "restarts after a failure"), ("user stop", "user stop (resumed)", "user stops (resumed)"),
             ("preemption", "preemption (resumed)", "preemptions (resumed)"), ("other", "other new attempt", "other new attempts")]
    return ", ".join(f"{counts[k]} {one if counts[k] == 1 else many}" for k, one, many in words if counts.get(k))


def _curve(plt: Any, stage: dict[str, Any], title: str, ylabel: str, fields: list[tuple[str, str]], path: str) -> None:
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    points = stage.get("points") or []
    many_attempts = len({p.get("attempt") for p in points}) > 1
    i = 0
    for field, label in fields:
        for attempt, (xs, ys) in sorted(_attempt_series(points, field).items()):
            name = f"{label} (attempt {attempt})" if many_attempts else label
            ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.4, label=name, marker="." if len(xs) < 60 else None)
            i += 1
    labelled: set[str] = set()
    for r in _restarts(stage):
        ax.axvline(r.step, color=r.color, linestyle=r.style, linewidth=1.6, label=None if r.label in labelled else r.label)
        labelled.add(r.label)
        ax.annotate(
            f"attempt {r.attempt}" + (f" (start {r.ordinal})" if r.ordinal != r.attempt else "") + f"\nfrom step {r.step}",
            xy=(r.step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color=r.color,
        )
    ax.set_title(f"{title}: stage {stage.get('name', '?')}")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        # Below the axes: inside, it would hide the curves or the restart marks' labels at the top.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def has_series(points: list[dict[str, Any]], field: str) -> bool:
    """Whether a stage reported `field` at all: some finite, non-zero value (a depth stage's logit scale is all zeros)."""
    return any(math.isfinite(v) and v != 0 for v in (_finite(p.get(field)) for p in points))


# Units of evaluation metrics, in chart order: (unit, axis label, name pattern). Others: "value".
METRIC_UNITS: list[tuple[str, str, re.Pattern[str]]] = [
    ("ratio", "fraction (0 to 1)", re.compile(r"(R@\d+|top\d+|mIoU|mAcc|pixel_acc|abs_rel|delta\d+)$|/IoU\.")),
    ("metres", "metres", re.compile(r"^depth/(rmse|mae)$", re.IGNORECASE)),
    ("count", "count", re.compile(r"(out_of_range_labels|_count|/count)$")),
]


def metric_unit(name: str) -> str:
    """The unit of an evaluation metric: "ratio" (recall, accuracy, IoU, AbsRel, delta), "metres" (depth RMSE), "count", else "value"."""
    for unit, _, pattern in METRIC_UNITS:
        if pattern.search(name):
            return unit
    return "value"


def natural_key(name: str) -> list[Any]:
    """Sort key that orders numbers inside names by value: R@1, R@5, R@10 (not R@1, R@10, R@5); top1 before top5."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def eval_groups(metrics: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]]]]:
    """Metrics grouped by unit (ratios, then metres, counts, other values), each group sorted naturally by name."""
    order = [u for u, _, _ in METRIC_UNITS] + ["value"]
    groups: dict[str, list[tuple[str, float]]] = {}
    for k, v in metrics.items():
        groups.setdefault(metric_unit(k), []).append((k, _finite(v)))
    return [(u, sorted(groups[u], key=lambda kv: natural_key(kv[0]))) for u in order if u in groups]


def _unit_label(unit: str) -> str:
    return next((label for u, label, _ in METRIC_UNITS if u == unit), "value")


def _eval_bars(plt: Any, stage: dict[str, Any], path: str) -> tuple[int, int]:
    """One horizontal bar panel per unit, each with its own axis (a depth RMSE in metres never shares one with ratios); returns the pixel size."""
    groups = eval_groups(stage.get("metrics") or {})
    n = sum(len(g) for _, g in groups)
    height = max(FIGSIZE[1], 0.28 * n + 0.9 * len(groups) + 0.6)
    fig, axes = plt.subplots(len(groups), 1, figsize=(FIGSIZE[0], height), dpi=DPI, squeeze=False,
                             gridspec_kw={"height_ratios": [len(g) + 1 for _, g in groups]})
    for (unit, metrics), row in zip(groups, axes):
        ax = row[0]
        names = [k for k, _ in metrics]
        values = [0.0 if math.isnan(v) else v for _, v in metrics]
        bars = ax.barh(range(len(names)), values, color=COLORS[[u for u, _ in groups].index(unit) % len(COLORS)])
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{k} (lower is better)" if LOWER_IS_BETTER.search(k) else k for k in names], fontsize=8)
        ax.invert_yaxis()
        for bar, (_, v) in zip(bars, metrics):
            ax.annotate(_fmt(v), xy=(bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        top = max([v for v in values if math.isfinite(v)] + [0.0])
        if unit == "ratio":
            ax.set_xlim(0, max(1.0, top) * 1.08)
        elif top > 0:
            ax.set_xlim(0, top * 1.15)
        ax.set_xlabel(_unit_label(unit), fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Evaluation results: stage {stage.get('name', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return png_size(path)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _when(ms: Any) -> str:
    if not isinstance(ms, (int, float)) or ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _summary_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    job, s = data["job"], data.get("summary") or {}
    wall = s.get("wallSeconds")
    rows = [
        ("job", f"{job.get('id', '?')} ({job.get('name', '?')})"),
        ("state", f"{job.get('state', '?')}" + (f": {job['reason']}" if job.get("reason") else "")),
        ("created", _when(job.get("createdAtMs"))),
        ("steps", f"{s.get('steps', '-')} / {s.get('totalSteps', '-')}"),
        ("samples seen", _fmt(s.get("samplesSeen"))),
        ("loss", f"{_fmt(s.get('firstLoss'))} -> {_fmt(s.get('finalLoss'))}"),
        ("restarts after failures", _fmt(s.get("restarts"))),
        ("user stops (resumed)", _fmt(s.get("userStops", 0))),
        ("preemptions (resumed)", _fmt(s.get("preemptions", 0))),
        ("wall time", f"{wall:.1f} s" if isinstance(wall, (int, float)) else "-"),
    ]
    if s.get("finalParamsSha256"):
        rows.append(("final params sha256", str(s["finalParamsSha256"])))
    for label, total, reasons in (("skipped samples", s.get("skippedSamples"), s.get("skippedByReason")),
                                  ("skipped val samples", None, s.get("evalSkippedByReason"))):
        reasons = reasons if isinstance(reasons, dict) else {}
        n = max(int(total or 0), sum(int(v) for v in reasons.values()))
        if n:
            rows.append((label, f"{n}" + (": " + ", ".join(f"{r} {c}" for r, c in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))) if reasons else "")))
    for w in s.get("warnings") or []:
        rows.append(("warning", str(w)))
    return rows


ATTEMPT_HEADER = ["attempt", "world size", "resumed from step", "last step", "outcome", "reason"]


def _attempt_rows(stage: dict[str, Any]) -> list[list[str]]:
    return [
        [str(a.get("attempt", "?")), str(a.get("worldSize", "?")), str(a.get("resumedFromStep", 0)), str(a.get("lastStep", 0)), str(a.get("outcome", "?")), str(a.get("reason", ""))]
        for a in sorted(stage.get("attempts") or [], key=lambda a: int(a.get("attempt", 0)))
    ]


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]


def _html_table(header: list[str], rows: list[list[str]], link_column: int | None = None) -> str:
    """An HTML table, every cell escaped; the cells of `link_column` become links to their own text."""
    def cell(i: int, c: str) -> str:
        return f'<td><a href="{html.escape(c)}">{html.escape(c)}</a></td>' if i == link_column else f"<td>{html.escape(c)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_head(title: str) -> list[str]:
    """The start of an index.html, through its <h1>."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]


def _write_index(out: str, md: list[str], parts: list[str]) -> tuple[str, str]:
    """Writes index.md and index.html from their lines; returns their paths."""
    index_md, index_html = os.path.join(out, "index.md"), os.path.join(out, "index.html")
    with open(index_md, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(index_html, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return index_md, index_html


def write_report(data: dict[str, Any], out: str) -> Report:
    """Writes the plots of every stage, then index.md and index.html referencing them."""
    plt = _pyplot()
    os.makedirs(out, exist_ok=True)
    job = data["job"]
    plots_by_stage: list[tuple[dict[str, Any], list[Plot], list[Plot]]] = []
    for stage in data["stages"]:
        curves: list[Plot] = []
        evals: list[Plot] = []
        base = _safe(str(stage.get("name", "stage")))
        points = stage.get("points") or []
        for suffix, title, ylabel, fields in CURVES:
            # Only the series the stage's task reports: no flat-zero logit scale for a dense fine-tune.
            kept = [(f, label) for f, label in fields if has_series(points, f)]
            if kept:
                name = f"{base}_{suffix}.png"
                _curve(plt, stage, title, ylabel, kept, os.path.join(out, name))
                curves.append(Plot(name, f"{title} over steps", WIDTH_PX, HEIGHT_PX))
        if stage.get("metrics"):
            name = f"{base}_eval.png"
            w, h = _eval_bars(plt, stage, os.path.join(out, name))
            evals.append(Plot(name, "Evaluation results", w, h))
        plots_by_stage.append((stage, curves, evals))

    title = f"clipfleet report: {job.get('name', '?')} ({job.get('id', '?')})"
    generated = _when(data.get("generatedAtMs"))
    summary = _summary_rows(data)
    md: list[str] = [f"# {title}", "", f"Generated {generated}.", "", "## Summary", ""]
    md += _md_table(["", ""], [[k, v] for k, v in summary])
    cmp = compare(data)
    cmp_parts: list[str] = []
    extra_plots: list[Plot] = []
    if cmp is not None:
        heading = f"{job.get('name', '?')}: comparison by {cmp.by}"
        subtitle = f"Job {job.get('id', '?')} ({job.get('state', '?')}), report generated {_when(data.get('generatedAtMs'))}."
        cmp_md, cmp_html, cmp_plot = _comparison_outputs(plt, cmp, heading, subtitle, out)
        extra_plots.append(cmp_plot)
        md += ["", f"## Comparison by {cmp.by}", ""] + cmp_md + ["", f"![{cmp_plot.caption}]({cmp_plot.file})"]
        cmp_parts = [f"<h2>Comparison by {html.escape(cmp.by)}</h2>", cmp_html, f'<img src="{cmp_plot.file}" alt="{html.escape(cmp_plot.caption)}" width="{cmp_plot.width}" height="{cmp_plot.height}">']
    parts: list[str] = [
        *_html_head(title),
        f"<p>Generated {html.escape(generated)}.</p>",
        "<h2>Summary</h2>",
        _html_table(["", ""], [[k, v] for k, v in summary]),
        *cmp_parts,
    ]
    for stage, curves, evals in plots_by_stage:
        head = f"Stage {stage.get('name', '?')} ({stage.get('task', '?')}): {stage.get('state', '?')}"
        told = describe_restarts(restart_counts(stage))
        note = (
            f"{told[0].upper()}{told[1:]}; each new attempt is marked at the step it resumed from"
            " (dashed red: after a failure, dotted black: after a user stop, dash-dot gold: after a preemption)."
            if told
            else "One attempt: no restarts, stops or preemptions."
        )
        md += ["", f"## {head}", ""]
        if stage.get("reason"):
            md += [str(stage["reason"]), ""]
        md += _md_table(ATTEMPT_HEADER, _attempt_rows(stage)) + ["", note]
        parts += [f"<h2>{html.escape(head)}</h2>"]
        if stage.get("reason"):
            parts += [f"<p>{html.escape(str(stage['reason']))}</p>"]
        parts += [_html_table(ATTEMPT_HEADER, _attempt_rows(stage)), f"<p>{html.escape(note)}</p>"]
        if not curves:
            md += ["", "No training steps were recorded for this stage."]
            parts += ["<p>No training steps were recorded for this stage.</p>"]
        for p in curves:
            md += ["", f"### {p.caption}", "", f"![{p.caption}]({p.file})"]
            parts += [f"<h3>{html.escape(p.caption)}</h3>", f'<img src="{html.escape(p.file)}" alt="{html.escape(p.caption)}" width="{p.width}" height="{p.height}">']
        groups = eval_groups(stage.get("metrics") or {})
        if groups:
            rows = [[k, _fmt((stage.get("metrics") or {})[k]), _unit_label(unit)] for unit, ms in groups for k, _ in ms]
            md += ["", "### Evaluation results", ""] + _md_table(["metric", "value", "unit"], rows)
            parts += ["<h3>Evaluation results</h3>", _html_table(["metric", "value", "unit"], rows)]
            for p in evals:
                md += ["", f"![{p.caption}]({p.file})"]
                parts += [f'<img src="{html.escape(p.file)}" alt="{html.escape(p.caption)}" width="{p.width}" height="{p.height}">']
    parts += ["</body></html>"]
    index_md, index_html = _write_index(out, md, parts)
    return Report(out, index_md, index_html, extra_plots + [p for _, c, e in plots_by_stage for p in c + e])


# Metrics where lower is better (the rest: higher is better), for the "best" marks.
LOWER_IS_BETTER = re.compile(r"(rmse|abs_rel|mean_rank|median_rank|loss)$", re.IGNORECASE)


@dataclass(frozen=True)
class Comparison:
    """Stages compared by one label: rows are its values, columns (metric, other labels)."""

    by: str
    rows: list[str]
    columns: list[tuple[str, str]]
    values: list[list[float | None]]

    def column_label(self, c: tuple[str, str]) -> str:
        return f"{c[0]} ({c[1]})" if c[1] else c[0]

    def best(self, j: int) -> float | None:
        col = [row[j] for row in self.values if row[j] is not None and math.isfinite(row[j])]
        if not col:
            return None
        return min(col) if LOWER_IS_BETTER.search(self.columns[j][0]) else max(col)


def compare(data: dict[str, Any]) -> Comparison | None:
    """The pivot asked for by data["compare"], or None."""
    cfg = data.get("compare")
    if not cfg:
        return None
    by = str(cfg["by"])
    wanted = [str(m) for m in cfg.get("metrics") or []]
    rows: list[str] = []
    cells: dict[tuple[str, tuple[str, str]], float] = {}
    quals: list[str] = []
    metrics_seen: list[str] = []
    for stage in data["stages"]:
        labels = stage.get("labels") or {}
        if by not in labels:
            continue
        row = str(labels[by])
        if row not in rows:
            rows.append(row)
        qual = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != by)
        if qual not in quals:
            quals.append(qual)
        for m, v in (stage.get("metrics") or {}).items():
            if wanted and m not in wanted:
                continue
            if m not in metrics_seen:
                metrics_seen.append(m)
            cells[(row, (m, qual))] = _finite(v)
    if not rows:
        raise ConfigError(f"--compare {by}: no stage has a label {by!r} (set `labels: {{{by}: ...}}` on the stages)")
    order = [m for m in wanted if m in metrics_seen] if wanted else sorted(metrics_seen, key=natural_key)
    columns = [(m, q) for m in order for q in quals if any((r, (m, q)) in cells for r in rows)]
    values = [[cells.get((r, c)) for c in columns] for r in rows]
    return Comparison(by, rows, columns, values)


def _comparison_outputs(plt: Any, cmp: Comparison, heading: str, subtitle: str, out: str, panel_per_column: bool = False) -> tuple[list[str], str, Plot]:
    """Writes comparison.json, comparison.md and comparison.png; returns (markdown lines, html, plot).
    panel_per_column: a chart panel per table column (jobs compared: each bar a job, in its curves' colour)."""
    header = [cmp.by] + [cmp.column_label(c) for c in cmp.columns]
    rows_md, rows_txt = [], []
    for i, r in enumerate(cmp.rows):
        cells_md, cells_txt = [r], [r]
        for j, v in enumerate(cmp.values[i]):
            text = "-" if v is None else _fmt(v)
            best = cmp.best(j)
            cells_txt.append(text)
            cells_md.append(f"**{text}**" if v is not None and best is not None and v == best and len(cmp.rows) > 1 else text)
        rows_md.append(cells_md)
        rows_txt.append(cells_txt)
    with open(os.path.join(out, "comparison.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "by": cmp.by,
                "rows": cmp.rows,
                "columns": [{"metric": m, "labels": q, "label": cmp.column_label((m, q)), "lowerIsBetter": bool(LOWER_IS_BETTER.search(m))} for m, q in cmp.columns],
                "values": cmp.values,
            },
            f,
            indent=2,
        )
        f.write("\n")
    md = _md_table(header, rows_md)
    lower = ", ".join(sorted({m for m, _ in cmp.columns if LOWER_IS_BETTER.search(m)})) or "none"
    legend = f"Best value of each column in bold ({lower}: lower is better; the rest: higher)."
    with open(os.path.join(out, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(
            "\n".join(
                [f"# {heading}", "", subtitle, ""]
                + md
                + ["", legend, "", f"![Comparison by {cmp.by}](comparison.png)"]
            )
            + "\n"
        )

    # One panel per metric (or per column with panel_per_column), bars centred on each row value; a panel of one
    # combination of the other labels names it in its title, a panel of several has a legend. Bars are coloured by
    # combination (the same colour means the same one in every panel), or by row (as the side-by-side curves colour
    # jobs) when no panel has several.
    quals = list(dict.fromkeys(q for _, q in cmp.columns))
    if panel_per_column:
        panels = [(m, [q]) for m, q in cmp.columns]
    else:
        panels = [(m, [q for q in quals if (m, q) in cmp.columns]) for m in dict.fromkeys(m for m, _ in cmp.columns)]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    height = max(FIGSIZE[1], 2.8 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIGSIZE[0], height), dpi=DPI, squeeze=False)
    by_row = all(len(own) == 1 for _, own in panels)
    for k, (m, own) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        width = 0.8 / len(own)
        for qi, q in enumerate(own):
            j = cmp.columns.index((m, q))
            ys = [0.0 if row[j] is None or not math.isfinite(row[j]) else row[j] for row in cmp.values]
            colors = [COLORS[i % len(COLORS)] for i in range(len(cmp.rows))] if by_row else COLORS[quals.index(q) % len(COLORS)]
            ax.bar([i - 0.4 + width * (qi + 0.5) for i in range(len(cmp.rows))], ys, width, label=q or m, color=colors)
        ax.set_xticks(range(len(cmp.rows)))
        ax.set_xticklabels(cmp.rows, fontsize=8)
        qual = f" ({own[0]})" if len(own) == 1 and own[0] else ""
        ax.set_title(m + qual + (", lower is better" if LOWER_IS_BETTER.search(m) else ""), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if len(own) > 1:
            ax.legend(fontsize=7)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.suptitle(f"Comparison by {cmp.by}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # room for the suptitle
    path = os.path.join(out, "comparison.png")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    plot = Plot("comparison.png", f"Comparison by {cmp.by}", *png_size(path))
    return md, _html_table(header, rows_txt), plot


# Curves drawn side by side across jobs (file suffix, title, y label, point field).
COMPARED_CURVES: list[tuple[str, str, str, str]] = [
    ("loss", "Training loss", "loss", "loss"),
    ("lr", "Learning rate", "learning rate", "lr"),
    ("throughput", "Throughput", "samples / s", "samplesPerSecond"),
]


def job_labels(jobs: list[dict[str, Any]]) -> list[str]:
    """A short, unique label per job: its name, with the id's random part where names repeat, else its id."""
    names = [str(j["job"].get("name") or j["job"].get("id", "?")) for j in jobs]
    labels = [n if names.count(n) == 1 else f"{n} {str(j['job'].get('id', '?'))[-6:]}" for n, j in zip(names, jobs)]
    return [lab if labels.count(lab) == 1 else str(j["job"].get("id", "?")) for lab, j in zip(labels, jobs)]


def _latest_by_step(points: list[dict[str, Any]], field: str) -> tuple[list[int], list[float]]:
    """One value per step (a step redone after a restart: the later attempt's), by step."""
    by_step: dict[int, tuple[int, float]] = {}
    for p in points:
        step, attempt = int(p.get("step", 0)), int(p.get("attempt", 0))
        if step not in by_step or attempt >= by_step[step][0]:
            by_step[step] = (attempt, _finite(p.get(field)))
    steps = sorted(by_step)
    return steps, [by_step[s][1] for s in steps]


def compare_jobs(data: dict[str, Any]) -> Comparison:
    """The jobs' final metrics as one Comparison (the experiment's table, reused): a row per job by default,
    a column per metric and stage; with compare.by a label, a row per value of that label over every job's stages."""
    jobs = data["jobs"]
    cfg = data.get("compare") or {}
    by = str(cfg.get("by") or "job")
    stage_names = {str(st.get("name")) for j in jobs for st in j["stages"]}
    stages = []
    for label, j in zip(job_labels(jobs), jobs):
        for st in j["stages"]:
            if by == "job":
                labels = {"job": label, **({"stage": str(st.get("name"))} if len(stage_names) > 1 else {})}
            else:
                labels = {**(st.get("labels") or {}), "job": label}
            stages.append({**st, "labels": labels})
    return compare({"stages": stages, "compare": {"by": by, "metrics": cfg.get("metrics") or []}})


def _compared_curve(plt: Any, stage: str, entries: list[tuple[str, list[dict[str, Any]]]], title: str, ylabel: str, field: str, path: str) -> None:
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for i, (label, points) in enumerate(entries):
        xs, ys = _latest_by_step(points, field)
        ax.plot(xs, ys, color=COLORS[i % len(COLORS)], linewidth=1.4, label=label, marker="." if len(xs) < 60 else None)
    ax.set_title(f"{title}: stage {stage}, {len(entries)} jobs")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(4, len(entries)), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


JOBS_HEADER = ["job", "id", "state", "steps", "loss", "restarts after failures", "user stops", "preemptions", "wall time", "report"]


def write_jobs_report(data: dict[str, Any], out: str) -> Report:
    """`clipfleet report JOB1 JOB2 ...`: each job's own report in a subdirectory, their curves side by side
    (per stage name), and their final metrics compared (comparison.md/.json/.png, as the experiment's)."""
    plt = _pyplot()
    os.makedirs(out, exist_ok=True)
    jobs = data["jobs"]
    labels = job_labels(jobs)
    plots: list[Plot] = []
    rows: list[list[str]] = []
    for label, j in zip(labels, jobs):
        sub = _safe(str(j["job"].get("id", label)))
        write_report({"schema": SCHEMA, "generatedAtMs": data.get("generatedAtMs"), **j}, os.path.join(out, sub))
        s = j.get("summary") or {}
        wall = s.get("wallSeconds")
        rows.append([label, str(j["job"].get("id", "?")), str(j["job"].get("state", "?")), _fmt(s.get("steps")),
                     f"{_fmt(s.get('firstLoss'))} -> {_fmt(s.get('finalLoss'))}", _fmt(s.get("restarts", 0)), _fmt(s.get("userStops", 0)),
                     _fmt(s.get("preemptions", 0)), f"{wall:.1f} s" if isinstance(wall, (int, float)) else "-", f"{sub}/index.html"])

    # Curves: one plot per stage name and series, a line per job that ran that stage and reported the series.
    stage_order = list(dict.fromkeys(str(st.get("name")) for j in jobs for st in j["stages"]))
    curves: list[Plot] = []
    for stage in stage_order:
        for suffix, title, ylabel, field in COMPARED_CURVES:
            entries = [(label, st.get("points") or []) for label, j in zip(labels, jobs) for st in j["stages"]
                       if str(st.get("name")) == stage and has_series(st.get("points") or [], field)]
            if len(entries) < 1:
                continue
            name = f"compare_{_safe(stage)}_{suffix}.png"
            _compared_curve(plt, stage, entries, title, ylabel, field, os.path.join(out, name))
            curves.append(Plot(name, f"{title} of stage {stage}, side by side", WIDTH_PX, HEIGHT_PX))

    title = f"clipfleet report: {len(jobs)} jobs compared ({', '.join(labels)})"
    generated = _when(data.get("generatedAtMs"))
    md: list[str] = [f"# {title}", "", f"Generated {generated}. Each job's own report is in the folder its row names.", "", "## Jobs", ""]
    md += _md_table(JOBS_HEADER, [r[:-1] + [f"[{r[-1]}]({r[-1]})"] for r in rows])
    parts: list[str] = [
        *_html_head(title),
        f"<p>Generated {html.escape(generated)}. Each job's own report is linked from its row.</p>",
        "<h2>Jobs</h2>",
        _html_table(JOBS_HEADER, rows, link_column=len(JOBS_HEADER) - 1),
    ]
    cmp = compare_jobs(data)
    if cmp.columns:
        heading = f"{len(jobs)} jobs: comparison by {cmp.by}"
        subtitle = f"Jobs {', '.join(str(j['job'].get('id', '?')) for j in jobs)}; report generated {generated}."
        cmp_md, cmp_html, cmp_plot = _comparison_outputs(plt, cmp, heading, subtitle, out, panel_per_column=cmp.by == "job")
        plots.append(cmp_plot)
        md += ["", f"## Final metrics, by {cmp.by}", ""] + cmp_md + ["", f"![{cmp_plot.caption}]({cmp_plot.file})"]
        parts += [f"<h2>Final metrics, by {html.escape(cmp.by)}</h2>", cmp_html,
                  f'<img src="{cmp_plot.file}" alt="{html.escape(cmp_plot.caption)}" width="{cmp_plot.width}" height="{cmp_plot.height}">']
    else:
        md += ["", "No job has evaluation metrics to compare."]
        parts += ["<p>No job has evaluation metrics to compare.</p>"]
    if curves:
        md += ["", "## Training curves, side by side"]
        parts += ["<h2>Training curves, side by side</h2>"]
    for p in curves:
        md += ["", f"### {p.caption}", "", f"![{p.caption}]({p.file})"]
        parts += [f"<h3>{html.escape(p.caption)}</h3>", f'<img src="{html.escape(p.file)}" alt="{html.escape(p.caption)}" width="{p.width}" height="{p.height}">']
    parts += ["</body></html>"]
    index_md, index_html = _write_index(out, md, parts)
    return Report(out, index_md, index_html, plots + curves)


def add_subcommand(sub: "argparse._SubParsersAction") -> None:
    """Register `report` on the subparsers of `python -m clipfleet_worker` (see __main__.py)."""
    p = sub.add_parser("report", help="render plots and index.md/index.html from a report.json (`clipfleet report` writes it)")
    p.add_argument("--data", required=True, help="report.json written by `clipfleet report`")
    p.add_argument("--out", required=True, help="directory for the PNGs, index.md and index.html")
    p.add_argument("--json", action="store_true", help="print what was written as one JSON line")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    """Runs a parsed `report` command; user errors print one line and exit 2."""
    try:
        data = load(args.data)
        report = write_jobs_report(data, args.out) if "jobs" in data else write_report(data, args.out)
    except ClipfleetWorkerError as err:
        print(f"clipfleet report: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.quiet:
        return 0
    if args.json:
        print(
            json.dumps(
                {
                    "out": report.out,
                    "indexMd": report.index_md,
                    "indexHtml": report.index_html,
                    "plots": [{"file": p.file, "caption": p.caption, "width": p.width, "height": p.height} for p in report.plots],
                },
                sort_keys=True,
            )
        )
    else:
        print(f"report: {report.index_html} and {report.index_md}, {len(report.plots)} plot(s) in {report.out}")
    return 0
