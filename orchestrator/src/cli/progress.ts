/**
 * Live progress of a run: a one-line bar redrawn in place on a terminal,
 * plain periodic lines otherwise (CI logs, pipes), so the same command reads
 * well in both.
 */

/** One progress sample of a stage, as carried by step events. */
export interface ProgressSample {
  stage: string;
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  samplesPerSecond: number;
  etaSeconds: number;
  worldSize: number;
  /** What a step is when it is not a training step: "shards" (recaption: a committed shard; no loss, no epoch). */
  unit?: "shards";
}

export interface ProgressOptions {
  /** Write target (process.stderr in the CLI). */
  stream: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /** Force line mode even on a TTY. */
  plain?: boolean;
  /** Line mode: at most one line per interval (the first and last steps always print). */
  intervalMs?: number;
  now?: () => number;
}

export class ProgressView {
  private readonly tty: boolean;
  private lastLineMs = -Infinity;
  private barShown = false;
  private last: ProgressSample | null = null;

  constructor(private readonly opts: ProgressOptions) {
    this.tty = Boolean(opts.stream.isTTY) && !opts.plain;
  }

  /** Shows a new sample: redraws the bar (TTY) or prints a line when due. */
  update(s: ProgressSample): void {
    this.last = s;
    if (this.tty) {
      this.draw(renderBar(s, Math.max(40, (this.opts.stream.columns ?? 100) - 1)));
      return;
    }
    const now = (this.opts.now ?? Date.now)();
    const due = now - this.lastLineMs >= (this.opts.intervalMs ?? 10_000);
    if (due || s.step === 1 || s.step >= s.totalSteps) {
      this.lastLineMs = now;
      this.opts.stream.write(renderLine(s) + "\n");
    }
  }

  /** Prints a message above the bar (events: restarts, checkpoints). */
  message(text: string): void {
    if (this.tty && this.barShown) this.opts.stream.write("\r\x1b[2K");
    this.opts.stream.write(text + "\n");
    this.barShown = false;
    if (this.tty && this.last) this.draw(renderBar(this.last, Math.max(40, (this.opts.stream.columns ?? 100) - 1)));
  }

  /**
   * Runs `write`, which prints to another stream of the same terminal (the
   * log lines of `logs -f` on stdout), with the bar lifted, then redraws it.
   */
  around(write: () => void): void {
    const lifted = this.tty && this.barShown;
    if (lifted) this.opts.stream.write("\r\x1b[2K");
    write();
    if (lifted && this.last) this.draw(renderBar(this.last, Math.max(40, (this.opts.stream.columns ?? 100) - 1)));
  }

  /** Leaves the terminal on a clean line. */
  finish(): void {
    if (this.tty && this.barShown) this.opts.stream.write("\n");
    this.barShown = false;
  }

  private draw(text: string): void {
    this.opts.stream.write(`\r\x1b[2K${text}`);
    this.barShown = true;
  }
}

/** `[stage] step 40/60 |#####.....| 67% epoch 1 loss 3.912 1,234 samples/s ETA 0:12` */
export function renderBar(s: ProgressSample, width: number): string {
  const frac = s.totalSteps > 0 ? Math.min(1, s.step / s.totalSteps) : 0;
  const head = `${s.stage} ${s.step}/${s.totalSteps}`;
  const what = s.unit === "shards" ? " shards" : ` ep ${s.epoch} loss ${fmtLoss(s.loss)}`;
  const tail = ` ${Math.round(frac * 100)}%${what} ${fmtRate(s.samplesPerSecond)}/s ETA ${fmtDuration(s.etaSeconds)}`;
  const barWidth = Math.max(10, Math.min(40, width - head.length - tail.length - 3));
  const filled = Math.round(frac * barWidth);
  return `${head} |${"#".repeat(filled)}${".".repeat(barWidth - filled)}|${tail}`;
}

/** `stage main: step 40/60 (67%) epoch 1 loss 3.912, 1234 samples/s, ETA 0:12, 2 ranks` */
export function renderLine(s: ProgressSample): string {
  const pct = s.totalSteps > 0 ? Math.round((100 * s.step) / s.totalSteps) : 0;
  const ranks = `${s.worldSize} rank${s.worldSize === 1 ? "" : "s"}`;
  if (s.unit === "shards") return `stage ${s.stage}: shard ${s.step}/${s.totalSteps} (${pct}%), ${fmtRate(s.samplesPerSecond)} samples/s, ETA ${fmtDuration(s.etaSeconds)}, ${ranks}`;
  return `stage ${s.stage}: step ${s.step}/${s.totalSteps} (${pct}%) epoch ${s.epoch} loss ${fmtLoss(s.loss)}, ${fmtRate(s.samplesPerSecond)} samples/s, ETA ${fmtDuration(s.etaSeconds)}, ${ranks}`;
}

function fmtLoss(x: number): string {
  return Number.isFinite(x) ? x.toFixed(4) : String(x);
}

function fmtRate(x: number): string {
  return x >= 100 ? Math.round(x).toString() : x.toFixed(1);
}

/** Seconds as h:mm:ss or m:ss. */
export function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`;
}
