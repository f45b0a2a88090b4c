/**
 * Summarises a V8 CPU profile (`node --cpu-prof`, or the scale benchmark's
 * --profile): self time by function and by file, largest first, so the
 * cause of a slow figure is readable without Chrome DevTools.
 *
 *   node dist/bench/profile-summary.js FILE.cpuprofile [TOP]
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
}

/** The parts of a .cpuprofile read here. */
interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** Self time (ms) per key, largest first, with the total. */
export function selfTimes(p: CpuProfile, keyOf: (n: ProfileNode) => string): { total: number; rows: [string, number][] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const acc = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const n = byId.get(id);
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    total += dt;
    if (n) acc.set(keyOf(n), (acc.get(keyOf(n)) ?? 0) + dt);
  });
  return { total, rows: [...acc].sort((a, b) => b[1] - a[1]) };
}

const short = (url: string): string => url.replace(/^.*\/(node_modules|dist)\//, "$1/").replace(/^file:\/\//, "");

function main(file: string, top: number): void {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const print = (title: string, r: { total: number; rows: [string, number][] }): void => {
    process.stdout.write(`${title} (total ${r.total.toFixed(0)} ms)\n`);
    for (const [k, ms] of r.rows.slice(0, top)) process.stdout.write(`${ms.toFixed(0).padStart(8)} ms ${((100 * ms) / r.total).toFixed(1).padStart(5)}%  ${k}\n`);
  };
  print("self time by function", selfTimes(p, (n) => `${n.callFrame.functionName || "(anonymous)"} ${short(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`));
  print("\nself time by file", selfTimes(p, (n) => short(n.callFrame.url) || n.callFrame.functionName));
}

const [file, top] = process.argv.slice(2);
if (!file) throw new Error("usage: profile-summary.js FILE.cpuprofile [TOP]");
main(file, Number(top ?? 30));
