/**
 * Benchmark 2, recovery: a rank of a running `clipfleet run` is killed
 * (kill -9) or frozen (SIGSTOP, a hung rank) mid-run, repeatedly; each run
 * measures the seconds from the signal to the orchestrator's detection
 * ("attempt N failed" in the job's log), from detection to the first step
 * the next attempt completes (rank 0's step history), the steps redone, and
 * the phases in between: teardown (with the stack dump of a hung gang),
 * backoff (failure.backoff_seconds), process start, imports (torch),
 * registration, rendezvous, restore (model build, checkpoint verify and
 * load), first step. The phase boundaries come from the orchestrator's log
 * lines and attempt records and the `clipfleet worker: phase NAME at T`
 * lines every rank prints; each boundary is the slowest rank's (the gang
 * waits for it).
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { LogEntry } from "../orchestrator/src/jobs/index.js";
import { BIN, PYTHON, runProcess, sleep, waitFor } from "./lib/proc.js";
import { figure, median, type Figure } from "./lib/results.js";
import { readLogs, readSteps, writeTinySpec } from "./lib/spec.js";

/** The failures injected. */
type Injection = "SIGKILL" | "SIGSTOP";

/** Phases of a recovery, in order: [name, seconds]. */
const PHASES = ["detect", "teardown", "backoff", "process start", "imports (torch)", "register", "rendezvous", "restore (model+checkpoint)", "first step"] as const;
type Phase = (typeof PHASES)[number];

/** One injected failure and what followed. */
interface RecoveryRun {
  readonly signal: Injection;
  /** The last step rank 0 reported in attempt 1 (after a SIGSTOP, the stack dump's SIGCONT lets it go on a little). */
  readonly lastStepOfFirstAttempt: number;
  readonly detectSeconds: number;
  readonly recoverSeconds: number;
  readonly totalSeconds: number;
  readonly stepsRedone: number;
  readonly resumedFromStep: number;
  readonly phases: Record<Phase, number>;
  readonly reason: string;
}

/** Sizes (quick: one run of each kind on a short job). */
export function recoveryPlan(quick: boolean): { runs: number; steps: number; killAt: number; everySteps: number } {
  return quick ? { runs: 1, steps: 24, killAt: 12, everySteps: 10 } : { runs: 3, steps: 50, killAt: 25, everySteps: 10 };
}

/** The heartbeat timeout of the spec (the SIGSTOP detection bound). */
const HEARTBEAT_TIMEOUT = 3;

/** Runs every kill -9 and SIGSTOP run; returns figures per injection kind. */
export async function benchRecovery(quick: boolean, work: string): Promise<{ figures: Figure[]; details: unknown }> {
  const p = recoveryPlan(quick);
  const specOf = (spares: number): string =>
    writeTinySpec(work, {
      name: `recovery-spares${spares}`,
      steps: p.steps,
      batch: 64,
      everySteps: p.everySteps,
      finalCheckpoint: false,
      shuffle: true,
      failure: { heartbeat_timeout: HEARTBEAT_TIMEOUT },
      spares,
    });
  const warm = specOf(WARM_SPARES);
  const cold = specOf(0);
  const runs: RecoveryRun[] = [];
  const coldRuns: RecoveryRun[] = [];
  for (let i = 0; i < p.runs; i++) {
    // Side by side: the same kill with and without spares, alternating which goes first.
    const pair = async (): Promise<void> => {
      runs.push(await recoverOnce(warm, join(work, `SIGKILL-${i}`), "SIGKILL", p.killAt, WARM_SPARES));
    };
    const coldOne = async (): Promise<void> => {
      coldRuns.push(await recoverOnce(cold, join(work, `SIGKILL-cold-${i}`), "SIGKILL", p.killAt, 0));
    };
    if (i % 2 === 0) await pair().then(coldOne);
    else await coldOne().then(pair);
    runs.push(await recoverOnce(warm, join(work, `SIGSTOP-${i}`), "SIGSTOP", p.killAt, WARM_SPARES));
  }
  const figures: Figure[] = [];
  const killWarm = runs.filter((r) => r.signal === "SIGKILL");
  figures.push(
    figure({
      benchmark: "recovery",
      figure: "kill -9 to first step of the new attempt",
      unit: "s",
      values: killWarm.map((r) => r.totalSeconds),
      baseline: coldRuns.map((r) => r.totalSeconds),
      baselineWhat: "cluster.spares 0 (new processes), same code",
      target: "< 1.0",
      note: `cluster.spares ${WARM_SPARES} (a spare per rank of the node); cold median phases: ${PHASES.map((ph) => `${ph} ${median(coldRuns.map((r) => r.phases[ph])).toFixed(2)}`).join(", ")}`,
    }),
  );
  for (const signal of ["SIGKILL", "SIGSTOP"] as const) {
    const rs = runs.filter((r) => r.signal === signal);
    const what = signal === "SIGKILL" ? "kill -9" : "SIGSTOP";
    const phaseMedians = PHASES.map((ph) => [ph, median(rs.map((r) => r.phases[ph]))] as const);
    const largest = [...phaseMedians].sort((a, b) => b[1] - a[1])[0];
    figures.push(
      figure({
        benchmark: "recovery",
        figure: `${what}: signal to detection`,
        unit: "s",
        values: rs.map((r) => r.detectSeconds),
        note: signal === "SIGSTOP" ? `failure.heartbeat_timeout ${HEARTBEAT_TIMEOUT} s; the watchdog looks every 0.5 s` : "the rank's exit is seen at once",
      }),
      figure({
        benchmark: "recovery",
        figure: `${what}: detection to first step of the new attempt`,
        unit: "s",
        values: rs.map((r) => r.recoverSeconds),
        note: `largest phase: ${largest?.[0] ?? "?"} (${(largest?.[1] ?? 0).toFixed(2)} s); median phases: ${phaseMedians.map(([n, s]) => `${n} ${s.toFixed(2)}`).join(", ")}`,
      }),
      figure({
        benchmark: "recovery",
        figure: `${what}: steps redone`,
        unit: "steps",
        values: rs.map((r) => r.stepsRedone),
        note:
          `checkpoint every ${p.everySteps} steps; signalled at step ${p.killAt}` +
          (signal === "SIGSTOP" ? "; the stack dump sends SIGCONT first, so the gang trains on (and may checkpoint) for the 1.5 s dump before it is killed" : ""),
      }),
    );
    for (const [ph, _] of phaseMedians) {
      figures.push(figure({ benchmark: "recovery", figure: `${what}: phase ${ph}`, unit: "s", values: rs.map((r) => r.phases[ph]) }));
    }
  }
  return { figures, details: { ...p, heartbeatTimeoutSeconds: HEARTBEAT_TIMEOUT, spares: WARM_SPARES, runs, coldRuns } };
}

/** Spares per node in the measured runs: one per rank of the node, so the whole gang restarts warm. */
const WARM_SPARES = 2;

/**
 * One `clipfleet run` with one failure injected into rank 1 once rank 0 reported `killAt` steps
 * and `spares` spares are ready: attempt 1's ranks wait before step killAt + 1 until then
 * (CLIPFLEET_FAULT's gate), so the machine's load decides neither when spares are ready nor
 * whether the job ends first.
 */
async function recoverOnce(spec: string, stateDir: string, signal: Injection, killAt: number, spares: number): Promise<RecoveryRun> {
  mkdirSync(stateDir, { recursive: true });
  const gate = join(stateDir, "go");
  const child = spawn(process.execPath, [BIN, "run", spec, "--state-dir", stateDir, "--json"], {
    env: { ...process.env, CLIPFLEET_PYTHON: PYTHON, CLIPFLEET_FAULT: `gate@${killAt + 1}:file=${gate}:attempt=1` },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  const timer = setTimeout(() => child.kill("SIGKILL"), 5 * 60_000);
  try {
    const jobId = await waitFor("the job id", () => /clipfleet: job (j-[0-9a-f-]+)/.exec(stderr)?.[1], 120_000, 20);
    // The victim's pid from its registration, read once training runs (before the step to kill at).
    await waitFor("the first step", () => readSteps(stateDir, jobId).length > 0, 180_000, 20);
    const victim = registration(await readLogs(stateDir, jobId), 1, 1);
    await waitFor(`step ${killAt}`, () => readSteps(stateDir, jobId).some((s) => s.attempt === 1 && s.step >= killAt), 180_000, 10);
    if (spares > 0) await waitFor(`${spares} spares ready`, async () => (await readLogs(stateDir, jobId)).filter((e) => /^spare pid \d+ ready$/.test(e.line)).length >= spares, 180_000, 100);
    const killedAtMs = Date.now();
    process.kill(victim.pid, signal);
    writeFileSync(gate, "");
    const code = await done;
    if (code !== 0) throw new Error(`clipfleet run exited ${code} after ${signal} of rank 1:\n${stderr.slice(-3000)}`);
    return analyse(stateDir, jobId, signal, killedAtMs, JSON.parse(stdout) as { restarts: number });
  } finally {
    clearTimeout(timer);
    if (child.exitCode === null) {
      child.kill("SIGKILL");
      await sleep(100);
    }
  }
}

/** The registration of `rank` in `attempt` (the orchestrator logs pid and time). */
function registration(logs: readonly LogEntry[], attempt: number, rank: number): { pid: number; tsMs: number } {
  for (const e of logs) {
    if (e.stream !== "orchestrator" || e.attempt !== attempt) continue;
    const m = /^rank (\d+) registered from \S+ pid (\d+)/.exec(e.line);
    if (m && Number(m[1]) === rank) return { pid: Number(m[2]), tsMs: e.tsMs };
  }
  throw new Error(`no registration of rank ${rank} in attempt ${attempt}`);
}

/** Reads the log and step history of a finished run into detection, recovery and its phases. */
async function analyse(stateDir: string, jobId: string, signal: Injection, killedAtMs: number, summary: { restarts: number }): Promise<RecoveryRun> {
  if (summary.restarts !== 1) throw new Error(`expected exactly 1 restart after ${signal}, got ${summary.restarts}`);
  const logs = await readLogs(stateDir, jobId);
  const steps = readSteps(stateDir, jobId);
  const orch = (attempt: number, re: RegExp): LogEntry[] => logs.filter((e) => e.stream === "orchestrator" && e.attempt === attempt && re.test(e.line));
  const failed = orch(1, /^attempt 1 failed: /)[0];
  if (!failed) throw new Error("no 'attempt 1 failed' line in the job's log");
  const [first, second] = await attemptTimes(stateDir, jobId);
  // Worker phase lines of attempt 2, slowest rank first.
  const workerPhase = (name: string): number => {
    const ts = logs
      .filter((e) => e.attempt === 2 && e.rank >= 0)
      .map((e) => new RegExp(`^clipfleet worker: phase ${name} at ([0-9.]+)$`).exec(e.line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]) * 1000);
    if (ts.length !== 2) throw new Error(`expected 'clipfleet worker: phase ${name}' from both ranks of attempt 2, found ${ts.length}`);
    return Math.max(...ts);
  };
  const registered = Math.max(registration(logs, 2, 0).tsMs, registration(logs, 2, 1).tsMs);
  const firstStep = steps.find((s) => s.attempt === 2);
  if (!firstStep) throw new Error("attempt 2 reported no step");
  const lastOfFirst = Math.max(...steps.filter((s) => s.attempt === 1).map((s) => s.step));
  const resumedFrom = firstStep.step - 1;
  const marks: [Phase, number][] = [
    ["detect", failed.tsMs],
    ["teardown", first.endedAtMs],
    ["backoff", second.startedAtMs],
    ["process start", workerPhase("started")],
    ["imports (torch)", workerPhase("imported")],
    ["register", registered],
    ["rendezvous", workerPhase("rendezvous")],
    ["restore (model+checkpoint)", workerPhase("restored")],
    ["first step", firstStep.tsMs],
  ];
  const phases = {} as Record<Phase, number>;
  let prev = killedAtMs;
  for (const [name, at] of marks) {
    // The killed rank's exit can be logged before the failure line (it is the cause): never negative.
    phases[name] = Math.max(0, at - prev) / 1000;
    prev = Math.max(prev, at);
  }
  return {
    signal,
    lastStepOfFirstAttempt: lastOfFirst,
    detectSeconds: (failed.tsMs - killedAtMs) / 1000,
    recoverSeconds: (firstStep.tsMs - failed.tsMs) / 1000,
    totalSeconds: (firstStep.tsMs - killedAtMs) / 1000,
    stepsRedone: lastOfFirst - resumedFrom,
    resumedFromStep: resumedFrom,
    phases,
    reason: failed.line,
  };
}

/**
 * When attempts 1 and 2 started and ended, from the job's record (`clipfleet
 * status --json`): attempt 1 ends once its gang is torn down (after the stack
 * dump of a hung gang) and the restart is decided; attempt 2 starts when its
 * ranks are launched, after the backoff.
 */
async function attemptTimes(stateDir: string, jobId: string): Promise<[{ startedAtMs: number; endedAtMs: number }, { startedAtMs: number; endedAtMs: number }]> {
  const r = await runProcess(process.execPath, [BIN, "status", jobId, "--json", "--state-dir", stateDir]);
  if (r.code !== 0) throw new Error(`clipfleet status failed: ${r.stderr}`);
  const v = JSON.parse(r.stdout) as { job: { stages: { attempts: { number: number; startedAtMs: number | string; endedAtMs: number | string }[] }[] } };
  const times = [1, 2].map((n) => {
    const a = v.job.stages[0]?.attempts.find((x) => x.number === n);
    if (!a) throw new Error(`no attempt ${n} in the job's record`);
    return { startedAtMs: Number(a.startedAtMs), endedAtMs: Number(a.endedAtMs) };
  });
  return [times[0] as { startedAtMs: number; endedAtMs: number }, times[1] as { startedAtMs: number; endedAtMs: number }];
}
