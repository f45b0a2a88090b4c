"""Shared parts of run reports: report.json loading, plot and table helpers, restart kinds."""

from __future__ import annotations

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

from ..errors import ConfigError, WorkerEnvironmentError


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


# Metrics where lower is better (the rest: higher is better), for the "best" marks.
LOWER_IS_BETTER = re.compile(r"(rmse|abs_rel|mean_rank|median_rank|loss)$", re.IGNORECASE)
