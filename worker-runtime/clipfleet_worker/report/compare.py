"""Stages compared by a label (an experiment's variants): comparison.md, .json and .png."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .common import (
    COLORS,
    DPI,
    FIGSIZE,
    LOWER_IS_BETTER,
    Plot,
    _finite,
    _fmt,
    _html_table,
    _md_table,
    natural_key,
    png_size,
)


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
