/**
 * ControlService over grpc-js: decode and check request fields, call the job
 * service, encode. Streams (logs, watch) end when the job reaches a terminal
 * state or the client goes away.
 */
import type { handleUnaryCall, sendUnaryData, ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import { InvalidArgumentError, isTerminal, isValidJobId, type JobEvent as DomainEvent } from "../domain/index.js";
import type { ControlServiceServer, JobEvent, LogLine, LogsRequest, Node, WatchRequest } from "../gen/clipfleet/v1/control.js";
import type { JobService } from "../jobs/index.js";
import { checkpointToProto, eventToProto, jobToProto, stateFromProto } from "./convert.js";
import { toServiceError } from "./status.js";

/** Facts about the server for GetServerInfo. */
export interface ServerInfoSource {
  version: string;
  stateDir: string;
  metricsAddress: () => string;
  store: string;
  events: string;
}

function nodeToProto(n: ReturnType<JobService["nodes"]>[number]): Node {
  return {
    name: n.node.name,
    host: n.node.host,
    slots: n.node.slots,
    freeSlots: n.freeSlots,
    gpus: n.node.gpus,
    labels: { ...n.node.labels },
    state: n.state,
    quarantinedUntilMs: n.quarantinedUntilMs ?? 0,
    failures: n.failures,
    launcher: n.node.launcher,
  };
}

function requireJobId(id: string): string {
  if (!id) throw new InvalidArgumentError("job_id: required", "job_id");
  if (!isValidJobId(id)) throw new InvalidArgumentError(`job_id: not a job id: "${id.slice(0, 80)}"`, "job_id");
  return id;
}

/** Wraps a unary handler: any throw (sync or async) becomes a gRPC status; the server keeps serving. */
function unary<Req, Res>(fn: (req: Req) => Res | Promise<Res>): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => callback(null, res),
        (err: unknown) => callback(toServiceError(err)),
      );
  };
}

export function controlService(service: JobService, info: ServerInfoSource): ControlServiceServer {
  return {
    submit: unary(async (req) => {
      if (!req.specJson) throw new InvalidArgumentError("spec_json: required", "spec_json");
      return jobToProto(await service.submit({ specJson: req.specJson, specPath: req.specPath, baseDir: req.baseDir || process.cwd() }));
    }),
    getJob: unary((req) => jobToProto(service.get(requireJobId(req.jobId)))),
    listJobs: unary((req) => {
      const states = new Set(req.states.map(stateFromProto));
      if (states.has(null)) throw new InvalidArgumentError("states: unknown job state", "states");
      let jobs = service.list();
      if (states.size > 0) jobs = jobs.filter((j) => states.has(j.state));
      if (req.limit > 0) jobs = jobs.slice(-req.limit);
      return { jobs: jobs.map(jobToProto) };
    }),
    cancelJob: unary(async (req) => {
      if (req.graceSeconds < 0 || req.graceSeconds > 86400) throw new InvalidArgumentError(`grace_seconds: expected 0..86400, got ${req.graceSeconds}`, "grace_seconds");
      const job = await service.cancel(requireJobId(req.jobId), { checkpoint: req.checkpoint, graceSeconds: req.graceSeconds > 0 ? req.graceSeconds : null });
      return jobToProto(job);
    }),
    resumeJob: unary(async (req) => jobToProto(await service.resume(requireJobId(req.jobId)))),
    requestCheckpoint: unary((req) => {
      const id = requireJobId(req.jobId);
      const r = service.requestCheckpoint(id);
      return { jobId: id, stage: r.stage, step: r.step };
    }),
    listCheckpoints: unary((req) => {
      const job = service.get(requireJobId(req.jobId));
      return { checkpoints: job.stages.flatMap((s) => s.checkpoints.map(checkpointToProto)) };
    }),
    setNodeSchedulable: unary((req) => {
      if (!req.name) throw new InvalidArgumentError("name: required", "name");
      return nodeToProto(service.setNodeSchedulable(req.name, req.schedulable));
    }),
    listNodes: unary(() => ({ nodes: service.nodes().map(nodeToProto) })),
    audit: unary(async (req) => ({ json: JSON.stringify(await service.audit(requireJobId(req.jobId))) })),
    stepHistory: unary((req) => {
      const h = service.stepHistory(requireJobId(req.jobId), req.stage, req.maxPoints);
      return {
        points: h.points,
        attempts: h.attempts.map(({ stage, attempt: a }) => ({
          stage,
          attempt: a.number,
          resumedFromStep: a.resumedFromStep,
          lastStep: a.lastStep,
          startedAtMs: a.startedAtMs,
          endedAtMs: a.endedAtMs ?? 0,
          outcome: a.outcome,
          reason: a.reason,
          worldSize: a.worldSize,
        })),
      };
    }),
    getServerInfo: unary(() => ({
      version: info.version,
      stateDir: info.stateDir,
      metricsAddress: info.metricsAddress(),
      store: info.store,
      events: info.events,
    })),
    streamLogs(call: ServerWritableStream<LogsRequest, LogLine>) {
      void streamLogs(service, call).catch((err: unknown) => call.emit("error", toServiceError(err)));
    },
    watch(call: ServerWritableStream<WatchRequest, JobEvent>) {
      try {
        watch(service, call);
      } catch (err) {
        call.emit("error", toServiceError(err));
      }
    },
  };
}

async function streamLogs(service: JobService, call: ServerWritableStream<LogsRequest, LogLine>): Promise<void> {
  const req = call.request;
  const id = requireJobId(req.jobId);
  if (req.rank < -1) throw new InvalidArgumentError(`rank: expected -1 (all ranks) or a rank >= 0, got ${req.rank}`, "rank");
  const match = (e: { stage: string; rank: number }): boolean => (!req.stage || e.stage === req.stage) && (req.rank === -1 || e.rank === req.rank);
  const toLine = (e: { stage: string; attempt: number; rank: number; stream: string; line: string; tsMs: number }): LogLine => ({
    stage: e.stage,
    attempt: e.attempt,
    rank: e.rank,
    stream: e.stream,
    line: e.line,
    tsMs: e.tsMs,
  });
  // Follow first, so no line falls between the read and the subscription.
  const live: LogLine[] = [];
  let replaying = true;
  let stop: () => void = () => undefined;
  let unsubEvents: () => void = () => undefined;
  const finish = (): void => {
    stop();
    unsubEvents();
    call.end();
  };
  if (req.follow) {
    stop = service.followLogs(id, (e) => {
      if (!match(e)) return;
      if (replaying) live.push(toLine(e));
      else call.write(toLine(e));
    });
    unsubEvents = service.subscribe(id, (ev) => {
      if (ev.stage === "" && ev.type === "state" && isTerminal(ev.state)) setTimeout(finish, 200);
    });
    call.on("cancelled", () => {
      stop();
      unsubEvents();
    });
  }
  let stored = await service.readLogs(id, match);
  if (req.tail > 0) stored = stored.slice(-req.tail);
  const seen = stored.length;
  for (const e of stored) call.write(toLine(e));
  replaying = false;
  // Lines that arrived while reading were also appended to the file; skip those already sent.
  const lastTs = stored.at(-1)?.tsMs ?? 0;
  for (const l of live) if (l.tsMs > lastTs || seen === 0) call.write(l);
  if (!req.follow || isTerminal(service.get(id).state)) finish();
}

function watch(service: JobService, call: ServerWritableStream<WatchRequest, JobEvent>): void {
  const req = call.request;
  const id = requireJobId(req.jobId);
  let lastSeq = -1;
  let buffering = true;
  const buffered: DomainEvent[] = [];
  let ended = false;
  const send = (e: DomainEvent): void => {
    if (ended) return;
    if (e.seq !== 0 || e.type !== "step") {
      if (e.seq <= lastSeq) return;
      lastSeq = e.seq;
    }
    call.write(eventToProto(e));
    // The end of the job, not an earlier end it was resumed from (replayed history).
    if (e.stage === "" && e.type === "state" && isTerminal(e.state) && isTerminal(service.get(id).state)) {
      ended = true;
      unsub();
      call.end();
    }
  };
  const unsub = service.subscribe(id, (e) => (buffering ? buffered.push(e) : send(e)));
  call.on("cancelled", () => {
    ended = true;
    unsub();
  });
  const job = service.get(id);
  for (const e of job.recentEvents) if (e.seq >= req.fromSeq) send(e);
  buffering = false;
  for (const e of buffered) send(e);
  if (!ended && isTerminal(service.get(id).state) && job.recentEvents.length === 0) {
    ended = true;
    unsub();
    call.end();
  }
}
