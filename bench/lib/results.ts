/**
 * Benchmark results: the figure record every benchmark produces, summary
 * statistics, the machine description, and the renderings (terminal table,
 * Markdown table for docs/benchmarks.md). Shared machines are noisy, so a
 * figure is either a median of repeated runs with its min and max, or a
 * ratio against a baseline measured in the same run.
 */
import { execFileSync } from "node:child_process";
import { cpus, hostname, loadavg, release, totalmem, type as osType } from "node:os";

/** One measured figure, as written to bench/results/latest.json. */
export interface Figure {
  /** Benchmark id: overhead, recovery, scale, datapath, checkpoint, dataplan. */
  readonly benchmark: string;
  /** What is measured, in words (unique within its benchmark). */
  readonly figure: string;
  /** The headline value: the median of the runs (or the single measurement). */
  readonly value: number;
  readonly unit: string;
  /** The same quantity for the baseline run side by side, when there is one. */
  readonly baseline: number | null;
  /** What the baseline is, in words (null without a baseline). */
  readonly baselineWhat: string | null;
  /** value / baseline, or the median of per-run ratios; null without a baseline. */
  readonly ratio: number | null;
  /** Repetitions (or samples) the statistics are over. */
  readonly runs: number;
  readonly min: number;
  readonly median: number;
  readonly max: number;
  /** A target the figure should meet, in words (e.g. ">= 0.98"), when the issue sets one. */
  readonly target: string | null;
  readonly note: string | null;
}

/** Everything one `bench/run` writes. */
export interface ResultsFile {
  readonly schemaVersion: 1;
  readonly mode: "full" | "quick";
  readonly startedAt: string;
  readonly durationSeconds: number;
  readonly machine: MachineDescription;
  readonly figures: Figure[];
  /** Per-benchmark raw details (per-run values, breakdowns), for whoever wants to dig. */
  readonly details: Record<string, unknown>;
}

/** Where the numbers were measured. */
export interface MachineDescription {
  readonly hostname: string;
  readonly os: string;
  readonly cpuModel: string;
  readonly cpus: number;
  readonly memoryBytes: number;
  readonly node: string;
  readonly python: string | null;
  readonly torch: string | null;
  /** 1, 5 and 15 minute load averages when the run started (how busy the shared machine was). */
  readonly loadAverage: number[];
  readonly notes: string;
}

/** Median of a non-empty list (mean of the middle two for even lengths). */
export function median(xs: readonly number[]): number {
  return quantile(xs, 0.5);
}

/** Linear-interpolated quantile q in [0, 1] of a non-empty list. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) throw new Error("quantile of an empty list");
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = s[lo] as number;
  const b = s[hi] as number;
  return a + (b - a) * (pos - lo);
}

/** Arithmetic mean of a non-empty list. */
export function mean(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error("mean of an empty list");
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Options of figure(): the repeated values, and optionally the baseline's and the per-run ratios. */
export interface FigureInput {
  readonly benchmark: string;
  readonly figure: string;
  readonly unit: string;
  /** One value per run (a single-element list for a single measurement). */
  readonly values: readonly number[];
  readonly baseline?: readonly number[] | null;
  readonly baselineWhat?: string | null;
  /** Per-run ratios (paired runs); default: median(values) / median(baseline). */
  readonly ratios?: readonly number[] | null;
  readonly target?: string | null;
  readonly note?: string | null;
  /** Samples behind a single value (a percentile of many reports); default: values.length. */
  readonly runs?: number;
}

/** Summarises repeated runs into a Figure (value = median; ratio = median of paired ratios when given). */
export function figure(f: FigureInput): Figure {
  const v = median(f.values);
  const base = f.baseline && f.baseline.length > 0 ? median(f.baseline) : null;
  let ratio: number | null = null;
  if (f.ratios && f.ratios.length > 0) ratio = median(f.ratios);
  else if (base !== null && base !== 0) ratio = v / base;
  return {
    benchmark: f.benchmark,
    figure: f.figure,
    value: v,
    unit: f.unit,
    baseline: base,
    baselineWhat: base === null ? null : (f.baselineWhat ?? null),
    ratio,
    runs: f.runs ?? f.values.length,
    min: f.values.reduce((a, b) => Math.min(a, b), Infinity),
    median: v,
    max: f.values.reduce((a, b) => Math.max(a, b), -Infinity),
    target: f.target ?? null,
    note: f.note ?? null,
  };
}

/** The machine the run happens on; python and torch versions come from the worker interpreter. */
export function describeMachine(python: string): MachineDescription {
  let py: string | null = null;
  let torch: string | null = null;
  try {
    const out = execFileSync(python, ["-c", "import platform, torch; print(platform.python_version(), torch.__version__)"], { encoding: "utf8" }).trim();
    [py, torch] = out.split(" ") as [string, string];
  } catch {
    // described as unknown; the Python benchmarks will say why they fail
  }
  const c = cpus();
  return {
    hostname: hostname(),
    os: `${osType()} ${release()}`,
    cpuModel: c[0]?.model ?? "unknown",
    cpus: c.length,
    memoryBytes: totalmem(),
    node: process.version,
    python: py,
    torch,
    loadAverage: loadavg().map((x) => Math.round(x * 100) / 100),
    notes: "shared virtual machine, no GPU; other tenants' load shows up as noise: read ratios measured side by side, and medians with their min and max",
  };
}

/** A number for humans: 3 significant digits, no exponent for everyday magnitudes. */
export function fmt(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return "-";
  const a = Math.abs(x);
  if (a === 0) return "0";
  if (a >= 1e6) return x.toExponential(2);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  if (a >= 0.001) return x.toPrecision(3);
  return x.toExponential(2);
}

const COLUMNS = ["benchmark", "figure", "value", "unit", "baseline", "ratio", "runs", "min", "median", "max"] as const;

function cells(f: Figure): string[] {
  return [f.benchmark, f.figure, fmt(f.value), f.unit, fmt(f.baseline), f.ratio === null ? "-" : f.ratio.toFixed(3), String(f.runs), fmt(f.min), fmt(f.median), fmt(f.max)];
}

/** The figures as an aligned plain-text table (what `make bench` prints). */
export function renderTable(figures: readonly Figure[]): string {
  const rows = [COLUMNS.map(String), ...figures.map(cells)];
  const widths = COLUMNS.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]): string => r.map((c, i) => (i >= 2 && i !== 3 ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join("  ");
  return [line(rows[0] ?? []), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)].join("\n");
}

/** The figures as a Markdown table, with the machine and date above it (docs/benchmarks.md). */
export function renderMarkdown(r: ResultsFile): string {
  const m = r.machine;
  const head = [
    `Measured ${r.startedAt.slice(0, 10)} (${r.mode} run, ${r.durationSeconds.toFixed(0)} s) on ${m.cpus} x ${m.cpuModel}, ` +
      `${(m.memoryBytes / 2 ** 30).toFixed(0)} GiB, ${m.os}, Node ${m.node}, Python ${m.python ?? "?"}, torch ${m.torch ?? "?"}; ` +
      `load average ${m.loadAverage.join(" / ")} at the start. ${m.notes.charAt(0).toUpperCase()}${m.notes.slice(1)}.`,
    "",
    `| ${COLUMNS.join(" | ")} |`,
    `|${COLUMNS.map((c) => (c === "benchmark" || c === "figure" || c === "unit" ? "---" : "---:")).join("|")}|`,
  ];
  const esc = (s: string): string => s.replace(/\|/g, "\\|");
  const rows = r.figures.map((f) => `| ${cells(f).map(esc).join(" | ")} |`);
  const notes = r.figures.filter((f) => f.note || f.target || f.baselineWhat).map((f) => {
    const parts = [f.baselineWhat ? `baseline: ${f.baselineWhat}` : "", f.target ? `target ${f.target}` : "", f.note ?? ""].filter(Boolean);
    return `- ${f.benchmark} / ${f.figure}: ${esc(parts.join("; "))}`;
  });
  return [...head, ...rows, "", ...notes].join("\n");
}
