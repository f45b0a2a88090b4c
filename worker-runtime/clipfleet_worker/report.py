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
   "summary": {...}  # the CLI's `status --json` summary (steps, samples, losses, restarts, wall time)
   "stages": [{"name", "task", "state", "reason", "restarts", "metrics": {name: value},
               "attempts": [{"attempt", "resumedFromStep", "lastStep", "startedAtMs", "endedAtMs",
                             "outcome", "reason", "worldSize"}],
               "checkpoints": [{"step", "committedAtMs", "sizeBytes"}],
               "points": [{"attempt", "step", "epoch", "loss", "lr", "temperature", "samplesPerSecond",
                           "stepSeconds", "dataWaitSeconds", "gradNorm", "tsMs"}],
               "labels": {name: value}}],           # the stage's spec labels
   "compare": {"by": LABEL, "metrics": [names]}}   # optional: `--compare LABEL [--metrics ...]`

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
    if not isinstance(data.get("stages"), list) or not isinstance(data.get("job"), dict):
        raise ConfigError(f"report data {path}: needs a `job` mapping and a `stages` list")
    return data


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


def _restarts(stage: dict[str, Any]) -> list[tuple[int, int]]:
    """(attempt, step it resumed from) of every attempt after the stage's first."""
    attempts = sorted(stage.get("attempts") or [], key=lambda a: int(a.get("attempt", 0)))
    return [(int(a["attempt"]), int(a.get("resumedFromStep", 0))) for a in attempts[1:]]


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
    for n, (attempt, step) in enumerate(_restarts(stage)):
        ax.axvline(step, color=RESTART_COLOR, linestyle="--", linewidth=1.6, label="restart" if n == 0 else None)
        ax.annotate(
            f"attempt {attempt}\nfrom step {step}",
            xy=(step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color=RESTART_COLOR,
        )
    ax.set_title(f"{title}: stage {stage.get('name', '?')}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _eval_bars(plt: Any, stage: dict[str, Any], path: str) -> None:
    metrics = sorted((k, _finite(v)) for k, v in (stage.get("metrics") or {}).items())
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    names = [k for k, _ in metrics]
    values = [0.0 if math.isnan(v) else v for _, v in metrics]
    bars = ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    for bar, (_, v) in zip(bars, metrics):
        ax.annotate(_fmt(v), xy=(bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_title(f"Evaluation results: stage {stage.get('name', '?')}")
    ax.set_xlabel("value")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


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
        ("restarts", _fmt(s.get("restarts"))),
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


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
        if stage.get("points"):
            for suffix, title, ylabel, fields in CURVES:
                name = f"{base}_{suffix}.png"
                _curve(plt, stage, title, ylabel, fields, os.path.join(out, name))
                curves.append(Plot(name, f"{title} over steps", WIDTH_PX, HEIGHT_PX))
        if stage.get("metrics"):
            name = f"{base}_eval.png"
            _eval_bars(plt, stage, os.path.join(out, name))
            evals.append(Plot(name, "Evaluation results", WIDTH_PX, HEIGHT_PX))
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
        cmp_md, cmp_html, cmp_plot = _comparison_outputs(plt, cmp, data, out)
        extra_plots.append(cmp_plot)
        md += ["", f"## Comparison by {cmp.by}", ""] + cmp_md + ["", f"![{cmp_plot.caption}]({cmp_plot.file})"]
        cmp_parts = [f"<h2>Comparison by {html.escape(cmp.by)}</h2>", cmp_html, f'<img src="{cmp_plot.file}" alt="{html.escape(cmp_plot.caption)}" width="{cmp_plot.width}" height="{cmp_plot.height}">']
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "img{max-width:100%;border:1px solid #eee;margin:.5em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {html.escape(generated)}.</p>",
        "<h2>Summary</h2>",
        _html_table(["", ""], [[k, v] for k, v in summary]),
        *cmp_parts,
    ]
    for stage, curves, evals in plots_by_stage:
        head = f"Stage {stage.get('name', '?')} ({stage.get('task', '?')}): {stage.get('state', '?')}"
        restarts = _restarts(stage)
        note = (
            f"{len(restarts)} restart(s), marked by dashed red lines at the step each new attempt resumed from."
            if restarts
            else "No restarts."
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
        metrics = sorted((stage.get("metrics") or {}).items())
        if metrics:
            rows = [[k, _fmt(v)] for k, v in metrics]
            md += ["", "### Evaluation results", ""] + _md_table(["metric", "value"], rows)
            parts += ["<h3>Evaluation results</h3>", _html_table(["metric", "value"], rows)]
            for p in evals:
                md += ["", f"![{p.caption}]({p.file})"]
                parts += [f'<img src="{html.escape(p.file)}" alt="{html.escape(p.caption)}" width="{p.width}" height="{p.height}">']
    parts += ["</body></html>"]
    index_md = os.path.join(out, "index.md")
    index_html = os.path.join(out, "index.html")
    with open(index_md, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(index_html, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return Report(out, index_md, index_html, extra_plots + [p for _, c, e in plots_by_stage for p in c + e])


# Metrics where lower is better (the rest: higher is better), for the "best" marks.
LOWER_IS_BETTER = re.compile(r"(rmse|abs_rel|mean_rank|median_rank|loss)$")


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
    order = [m for m in wanted if m in metrics_seen] if wanted else sorted(metrics_seen)
    columns = [(m, q) for m in order for q in quals if any((r, (m, q)) in cells for r in rows)]
    values = [[cells.get((r, c)) for c in columns] for r in rows]
    return Comparison(by, rows, columns, values)


def _comparison_outputs(plt: Any, cmp: Comparison, data: dict[str, Any], out: str) -> tuple[list[str], str, Plot]:
    """Writes comparison.json, comparison.md and comparison.png; returns (markdown lines, html, plot)."""
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
    job = data["job"]
    with open(os.path.join(out, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(
            "\n".join(
                [f"# {job.get('name', '?')}: comparison by {cmp.by}", "", f"Job {job.get('id', '?')} ({job.get('state', '?')}), report generated {_when(data.get('generatedAtMs'))}.", ""]
                + md
                + ["", legend, "", f"![Comparison by {cmp.by}](comparison.png)"]
            )
            + "\n"
        )

    # One panel per metric; bars per row value, one colour per combination of the other labels.
    metrics = list(dict.fromkeys(m for m, _ in cmp.columns))
    quals = list(dict.fromkeys(q for _, q in cmp.columns))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIGSIZE[0], max(FIGSIZE[1], 2.8 * nrows)), dpi=DPI, squeeze=False)
    width = 0.8 / max(1, len(quals))
    for k, m in enumerate(metrics):
        ax = axes[k // ncols][k % ncols]
        for qi, q in enumerate(quals):
            if (m, q) not in cmp.columns:
                continue
            j = cmp.columns.index((m, q))
            ys = [0.0 if row[j] is None or not math.isfinite(row[j]) else row[j] for row in cmp.values]
            ax.bar([i + qi * width for i in range(len(cmp.rows))], ys, width, label=q or m, color=COLORS[qi % len(COLORS)])
        ax.set_xticks([i + width * (len(quals) - 1) / 2 for i in range(len(cmp.rows))])
        ax.set_xticklabels(cmp.rows, fontsize=8)
        ax.set_title(m + (" (lower is better)" if LOWER_IS_BETTER.search(m) else ""), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if len(quals) > 1 and k == 0:
            ax.legend(fontsize=7)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.suptitle(f"Comparison by {cmp.by}")
    fig.tight_layout()
    path = os.path.join(out, "comparison.png")
    fig.savefig(path, dpi=DPI)
    w, h = fig.get_size_inches()
    plt.close(fig)
    plot = Plot("comparison.png", f"Comparison by {cmp.by}", round(w * DPI), round(h * DPI))
    return md, _html_table(header, rows_txt), plot


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
        report = write_report(load(args.data), args.out)
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
