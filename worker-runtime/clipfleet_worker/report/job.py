"""One job's report: curves per stage, evaluation bars, attempts, index.md and index.html."""

from __future__ import annotations

import html
import os
from typing import Any

from .common import (
    ATTEMPT_HEADER,
    CURVES,
    HEIGHT_PX,
    Plot,
    Report,
    WIDTH_PX,
    _attempt_rows,
    _curve,
    _eval_bars,
    _fmt,
    _html_head,
    _html_table,
    _md_table,
    _pyplot,
    _safe,
    _summary_rows,
    _unit_label,
    _when,
    _write_index,
    describe_restarts,
    eval_groups,
    has_series,
    restart_counts,
)
from .compare import _comparison_outputs, compare


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
