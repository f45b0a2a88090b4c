/**
 * task recaption's shard leases: a rank asks for an input shard, captions
 * it into an output shard (temp name, fsync, rename), reports the digest with
 * its next request; the commit is persisted in the stage record before the
 * reply, so an acknowledged shard is never leased again, across kill -9 of a
 * rank or of the orchestrator. The decisions are data/leases.ts's (pure);
 * this room keeps one ledger per live attempt, persists, and turns each
 * commit into the stage's progress (a step is a committed shard).
 */
import { join } from "node:path";
import { FencedError, InvalidArgumentError, type RecaptionShardRecord } from "../domain/index.js";
import { LeaseLedger } from "../data/index.js";
import { StepReport, type LeaseReply, type LeaseRequest } from "../gen/clipfleet/v1/worker.js";
import { recaptionOutputName } from "../spec/index.js";
import type { Attempt } from "./attempt.js";
import type { JobContext } from "./context.js";
import type { RankRuntime } from "./runtime.js";

/** Where a commit's progress goes (the progress room's step sink, wired by the service). */
export type RecaptionStepSink = (a: Attempt, rank: RankRuntime, rep: StepReport, now: number) => void;

/** The live state of one attempt's leases: its ledger and its throughput. */
interface LiveLeases {
  readonly ledger: LeaseLedger;
  readonly sinceMs: number;
  samples: number;
}

export class Recaption {
  private readonly live = new WeakMap<Attempt, LiveLeases>();

  constructor(
    private readonly ctx: JobContext,
    private readonly step: RecaptionStepSink,
  ) {}

  /** A rank's Lease call: commit what it reports (persisted first), then lease it the next shard. */
  async lease(a: Attempt, rank: RankRuntime, req: LeaseRequest): Promise<LeaseReply> {
    if (a.spec.task !== "recaption" || !a.spec.recaption) throw new InvalidArgumentError(`stage ${a.stage} is not a recaption stage`);
    const l = this.leasesOf(a);
    const now = this.ctx.now();
    rank.lastProgressMs = now;
    rank.phase = "training";
    if (req.commit) {
      const c = req.commit;
      const decision = l.ledger.commit(rank.rank, { shard: c.shard, output: c.output, sha256: c.sha256, bytes: c.bytes, samples: c.samples, seconds: c.seconds }, now);
      if (decision.kind === "refused") throw new InvalidArgumentError(`commit refused: ${decision.why}`);
      if (decision.kind === "commit") {
        const record = decision.record;
        // Applied only while the attempt is current: a fenced rank's report is not a commit.
        if (a.over) {
          l.ledger.abandon(record);
          throw new FencedError(`attempt ${a.attempt} is over`);
        }
        try {
          await this.ctx.ledger.update(a.jobId, (j) => {
            const s = j.stages.find((x) => x.name === a.stage);
            if (!s) return;
            const list = (s.recaption ??= []);
            if (!list.some((x) => x.shard === record.shard)) list.push(record);
          });
        } catch (err) {
          l.ledger.abandon(record);
          throw err;
        }
        l.ledger.confirm(record);
        l.samples += record.samples;
        this.progress(a, rank, l, record, this.ctx.now());
      }
    }
    const grant = l.ledger.lease(rank.rank);
    const base = { committed: l.ledger.committedCount, total: l.ledger.total };
    if (grant.kind === "granted") {
      return { granted: true, shard: grant.shard, inputUrl: l.ledger.inputs[grant.shard] ?? "", output: l.ledger.outputs[grant.shard] ?? "", done: false, shards: [], ...base };
    }
    const shards = grant.kind === "done" ? l.ledger.commits().map(toProto) : [];
    return { granted: false, shard: 0, inputUrl: "", output: "", done: grant.kind === "done", shards, ...base };
  }

  /** The attempt's ledger, built on its first call from the commits its stage record holds. */
  private leasesOf(a: Attempt): LiveLeases {
    let l = this.live.get(a);
    if (l) return l;
    const inputs = a.facts.manifest?.shards.map((s) => s.url) ?? [];
    const out = a.spec.recaption?.out ?? "";
    const outputs = inputs.map((u) => join(out, recaptionOutputName(u)));
    const persisted = this.ctx.ledger.get(a.jobId).stages.find((s) => s.name === a.stage)?.recaption ?? [];
    l = { ledger: new LeaseLedger(inputs, outputs, a.attempt, persisted), sinceMs: this.ctx.now(), samples: 0 };
    this.live.set(a, l);
    return l;
  }

  /** A commit is the stage's step: shards done of total, samples/s over this attempt so far. */
  private progress(a: Attempt, rank: RankRuntime, l: LiveLeases, record: RecaptionShardRecord, now: number): void {
    if (Number.isFinite(record.seconds) && record.seconds >= 0) rank.stepSeconds.push(record.seconds);
    if (rank.stepSeconds.length > 200) rank.stepSeconds.shift();
    const elapsed = Math.max(1e-3, (now - l.sinceMs) / 1000);
    const rep = StepReport.fromPartial({
      step: l.ledger.committedCount,
      samplesPerSecond: l.samples / elapsed,
      stepSeconds: record.seconds,
      computeSeconds: record.seconds,
      loss: Number.NaN,
      extra: { "recaption/shards_committed": l.ledger.committedCount, "recaption/shards_total": l.ledger.total },
    });
    rank.step = Math.max(rank.step, rep.step);
    // Samples are the committed shards' (every attempt's), not step x batch: a step here is a shard.
    a.samplesDone = l.ledger.commits().reduce((n, c) => n + c.samples, 0);
    this.ctx.metrics.samplesSeen.inc({ job_id: a.jobId, stage: a.stage }, record.samples);
    // The stage's progress is the ledger's, whichever rank committed: rank 0 speaks for the stage.
    a.lastReport = rep;
    const rank0 = a.ranks[0];
    if (rank0) this.step(a, rank0, rep, now);
  }
}

function toProto(r: RecaptionShardRecord): LeaseReply["shards"][number] {
  return { shard: r.shard, input: r.input, output: r.output, sha256: r.sha256, bytes: r.bytes, samples: r.samples, attempt: r.attempt, rank: r.rank };
}
