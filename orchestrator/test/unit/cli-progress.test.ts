/**
 * ProgressView: a bar redrawn in place with \r on a terminal, plain
 * periodic lines (no \r, no ANSI escapes) on anything else (CI logs, pipes).
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { fmtDuration, ProgressView, renderBar, renderLine } from "../../src/cli/index.js";
import type { ProgressSample } from "../../src/cli/progress.js";

/** A stream that records what is written; `tty` makes it look like a terminal of `columns` columns. */
class Capture extends Writable {
  text = "";
  isTTY: boolean;
  columns: number | undefined;
  constructor(tty: boolean, columns?: number) {
    super();
    this.isTTY = tty;
    this.columns = columns;
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

function sample(step: number, totalSteps = 60): ProgressSample {
  return { stage: "main", step, totalSteps, epoch: Math.floor(step / 20), loss: 4 - step / 30, samplesPerSecond: 1234.5, etaSeconds: (totalSteps - step) * 0.5, worldSize: 2 };
}

const ANSI = /\x1b\[/;

void describe("ProgressView", () => {
  void it("without a TTY writes plain lines, at most one per interval, always the first and last step", () => {
    const stream = new Capture(false);
    let now = 0;
    const view = new ProgressView({ stream, intervalMs: 10_000, now: () => now });
    for (let step = 1; step <= 60; step++) {
      view.update(sample(step));
      now += 1000; // one step a second: a line every 10 steps
    }
    view.message("12:00:00 [main] checkpoint: checkpoint committed at step 20");
    view.finish();
    assert.doesNotMatch(stream.text, /\r/);
    assert.doesNotMatch(stream.text, ANSI);
    const lines = stream.text.trimEnd().split("\n");
    const progress = lines.filter((l) => l.startsWith("stage main:"));
    assert.deepEqual(
      progress.map((l) => /step (\d+)\/60/.exec(l)?.[1]),
      ["1", "11", "21", "31", "41", "51", "60"],
    );
    assert.equal(progress[0], "stage main: step 1/60 (2%) epoch 0 loss 3.9667, 1235 samples/s, ETA 0:30, 2 ranks");
    assert.equal(lines.at(-1), "12:00:00 [main] checkpoint: checkpoint committed at step 20");
  });

  void it("on a TTY redraws one bar in place with \\r, lifts it for messages and other streams' lines, ends on a clean line", () => {
    const stream = new Capture(true, 80);
    const view = new ProgressView({ stream, now: () => 0 });
    view.update(sample(1));
    view.update(sample(2));
    assert.equal(stream.text, `\r\x1b[2K${renderBar(sample(1), 79)}\r\x1b[2K${renderBar(sample(2), 79)}`);
    assert.doesNotMatch(stream.text, /\n/, "no line feeds while only the bar changes");

    stream.text = "";
    view.message("restarting");
    assert.equal(stream.text, `\r\x1b[2Krestarting\n\r\x1b[2K${renderBar(sample(2), 79)}`);

    stream.text = "";
    const other: string[] = [];
    view.around(() => other.push("a log line on stdout"));
    assert.deepEqual(other, ["a log line on stdout"]);
    assert.equal(stream.text, `\r\x1b[2K\r\x1b[2K${renderBar(sample(2), 79)}`);

    stream.text = "";
    view.finish();
    assert.equal(stream.text, "\n");
    for (const bar of [renderBar(sample(2), 79), renderBar(sample(60), 79)]) assert.ok(bar.length <= 79, `${bar.length} columns: ${bar}`);
  });

  void it("plain: true forces lines on a TTY; around() on a non-TTY just writes", () => {
    const stream = new Capture(true, 80);
    const view = new ProgressView({ stream, plain: true, now: () => 0 });
    view.update(sample(1));
    view.around(() => stream.write("x\n"));
    assert.equal(stream.text, `${renderLine(sample(1))}\nx\n`);
  });

  void it("renders stage, step/total, percent, epoch, loss, samples/s and ETA", () => {
    const bar = renderBar(sample(40), 100);
    assert.match(bar, /^main 40\/60 \|#+\.+\| 67% ep 2 loss 2\.6667 1235\/s ETA 0:10$/);
    assert.equal((/\|([#.]+)\|/.exec(bar)?.[1] ?? "").length, 40);
    assert.match(renderBar({ ...sample(0, 0), loss: NaN }, 60), /^main 0\/0 \|\.+\| 0% ep 0 loss NaN/);
    assert.equal(renderLine({ ...sample(3), worldSize: 1, samplesPerSecond: 12.34 }), "stage main: step 3/60 (5%) epoch 0 loss 3.9000, 12.3 samples/s, ETA 0:29, 1 rank");
    assert.equal(fmtDuration(3725), "1:02:05");
    assert.equal(fmtDuration(65), "1:05");
    assert.equal(fmtDuration(NaN), "?");
  });

  void it("a recaption's steps are shards: no epoch and no loss (it has none)", () => {
    const shards: ProgressSample = { ...sample(3, 7), unit: "shards", loss: NaN };
    assert.equal(renderLine(shards), "stage main: shard 3/7 (43%), 1235 samples/s, ETA 0:02, 2 ranks");
    assert.doesNotMatch(renderBar(shards, 100), /loss|ep /);
    assert.match(renderBar(shards, 100), /^main 3\/7 \|#+\.+\| 43% shards 1235\/s ETA 0:02$/);
  });
});
