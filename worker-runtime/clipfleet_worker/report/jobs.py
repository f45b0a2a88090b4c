"""Several jobs side by side (`clipfleet report J1 J2 --out DIR`): each job's report, curves per stage, final metrics."""

from __future__ import annotations

import html
import os
from typing import Any

from .common import (
    COLORS,
    DPI,
    FIGSIZE,
    HEIGHT_PX,
    Plot,
    Report,
    SCHEMA,
    WIDTH_PX,
    _finite,
    _fmt,
    _html_head,
    _html_table,
    _integer_ticks,
    _md_table,
    _pyplot,
    _safe,
    _when,
    _write_index,
    has_series,
)
from .compare import COMPARED_CURVES, Comparison, _comparison_outputs, compare
from .job import write_report


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
