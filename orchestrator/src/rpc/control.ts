/**
 * ControlService over grpc-js: decode and check request fields, call the job
 * service, encode. Streams (logs, watch) end when the job reaches a terminal
 * state or the client goes away.
 */
import type { handleUnaryCall, sendUnaryData, ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import { authorize, changesState, identityFromSubject, type AccessLog, type ControlMethod, type Identity } from "../auth/index.js";
import { asClipfleetError, InvalidArgumentError, isTerminal, type JobEvent as DomainEvent, type SlurmNode } from "../domain/index.js";
import type {
  CancelRequest,
  DeleteRequest,
  ControlServiceServer,
  JobEvent,
  JobRef,
  ListJobsRequest,
  LogLine,
  LogsRequest,
  Node,
  NodeSchedulableRequest,
  StepHistoryRequest,
  SubmitRequest,
  ValidateJobReply,
  WatchRequest,
} from "../gen/clipfleet/v1/control.js";
import type { JobService } from "../jobs/index.js";
import { checkpointToProto, eventToProto, jobToProto, stateFromProto } from "./convert.js";
import { fitJob, fitJobList } from "./reply-budget.js";
import { toServiceError } from "./status.js";

/** Facts about the server for GetServerInfo. */
export interface ServerInfoSource {
  version: string;
  stateDir: string;
  metricsAddress: () => string;
  store: string;
  events: string;
  /** The manifest signing key's public half (SPKI PEM) and fingerprint. */
  manifestKey: { publicKeyPem: string; fingerprint: string };
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
    // A quarantine asked for "forever" (1e308 s) ends at Infinity, which int64 cannot carry.
    quarantinedUntilMs: n.quarantinedUntilMs === null ? 0 : Math.min(n.quarantinedUntilMs, Number.MAX_SAFE_INTEGER),
    failures: n.failures,
    launcher: n.node.launcher,
    slurmState: "",
    slurmPartition: "",
    gpusUsed: 0,
    slurmReason: "",
    address: n.node.address,
  };
}

/** A node of the Slurm partition (sinfo): its CPUs as slots, Slurm's state and reason. */
function clusterNodeToProto(n: SlurmNode): Node {
  return {
    name: n.name,
    host: n.name,
    slots: n.cpusTotal,
    freeSlots: n.cpusIdle,
    gpus: n.gpusTotal,
    labels: {},
    state: `slurm:${n.state}`,
    quarantinedUntilMs: 0,
    failures: 0,
    launcher: "slurm",
    slurmState: n.state,
    slurmPartition: n.partition,
    gpusUsed: n.gpusUsed,
    slurmReason: n.reason,
    address: n.address,
  };
}

/** The id of the job a request names: its id, a name or a unique id prefix (see JobService.resolve); every RPC taking a job goes through here. */
function jobIdOf(service: JobService, ref: string): string {
  return service.resolve(ref).job.id;
}

/**
 * Who may call the control API, and where refused and state-changing calls
 * are recorded. With TLS the caller is its client certificate; without, every
 * caller is `plainIdentity` (the owner of a 0600 local socket, or anyone on
 * an --insecure server).
 */
export interface ControlSecurity {
  readonly tls: boolean;
  readonly plainIdentity: Identity;
  readonly accessLog: AccessLog;
  now(): number;
}

/** The caller of a call, from its TLS peer certificate or the plain identity. */
function callerOf(call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>, security: ControlSecurity): Identity | null {
  if (!security.tls) return security.plainIdentity;
  const peer = call.getAuthContext()?.sslPeerCertificate;
  return identityFromSubject(peer?.subject);
}

/** What a request names (a job id or a node), for the access log. */
function targetOf(req: unknown): string {
  const r = req as { jobId?: unknown; name?: unknown; specPath?: unknown };
  const t = r.jobId ?? r.name ?? r.specPath;
  return typeof t === "string" ? t : "";
}

/**
 * Checks the caller may make `method`, then runs `fn`; refusals and calls
 * that change something are written to the access log. Any throw (sync or
 * async) becomes a gRPC status; the server keeps serving.
 */
function guard(security: ControlSecurity, method: ControlMethod, call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>): Identity {
  const who = callerOf(call, security);
  try {
    return authorize(who, method);
  } catch (err) {
    security.accessLog.record(who, method, targetOf(call.request), asClipfleetError(err).code, security.now());
    throw err;
  }
}

function unaryFor(security: ControlSecurity) {
  return function unary<Req, Res>(method: ControlMethod, fn: (req: Req, who: Identity) => Res | Promise<Res>): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
      let who: Identity | null = null;
      Promise.resolve()
        .then(() => {
          who = guard(security, method, call);
          return fn(call.request, who);
        })
        .then(
          (res) => {
            if (changesState(method)) security.accessLog.record(who, method, targetOf(call.request), "ok", security.now());
            callback(null, res);
          },
          (err: unknown) => {
            if (who && changesState(method)) security.accessLog.record(who, method, targetOf(call.request), asClipfleetError(err).code, security.now());
            callback(toServiceError(err));
          },
        );
    };
  };
}

export function controlService(service: JobService, info: ServerInfoSource, security: ControlSecurity): ControlServiceServer {
  const unary = unaryFor(security);
  return {
    submit: unary("submit", async (req: SubmitRequest, who) => {
      if (!req.specJson) throw new InvalidArgumentError("spec_json: required", "spec_json");
      return fitJob(jobToProto(await service.submit({ specJson: req.specJson, specPath: req.specPath, baseDir: req.baseDir || process.cwd(), submittedBy: who.name })));
    }),
    validateJob: unary("validateJob", async (req: SubmitRequest): Promise<ValidateJobReply> => {
      // Bounded as submit is: the spec is validated (size, JSON, fields) before any check of its data.
      if (!req.specJson) throw new InvalidArgumentError("spec_json: required", "spec_json");
      const checked = await service.checkInput({ specJson: req.specJson, specPath: req.specPath, baseDir: req.baseDir || process.cwd() });
      return {
        problems: checked.problems.map((p) => ({ stage: p.stage ?? "", field: p.field, message: p.message, specPath: p.specPath ?? "" })),
        stages: [...checked.data].map(([stage, d]) => ({
          stage,
          trainSamples: d.train?.samples ?? 0,
          trainShards: d.train?.shards ?? 0,
          trainCounted: d.train !== null,
          steps: d.steps ?? 0,
          stepsKnown: d.steps !== null,
          valSamples: d.val?.samples ?? 0,
          valShards: d.val?.shards ?? 0,
          valCounted: d.val !== null,
          synth: d.synth ?? "",
        })),
      };
    }),
    getJob: unary("getJob", (req: JobRef) => fitJob(jobToProto(service.get(jobIdOf(service, req.jobId))))),
    listJobs: unary("listJobs", (req: ListJobsRequest) => {
      const states = new Set(req.states.map(stateFromProto));
      if (states.has(null)) throw new InvalidArgumentError("states: unknown job state", "states");
      let jobs = service.list();
      if (states.size > 0) jobs = jobs.filter((j) => states.has(j.state));
      if (req.limit > 0) jobs = jobs.slice(-req.limit);
      return fitJobList(jobs.map(jobToProto));
    }),
    cancelJob: unary("cancelJob", async (req: CancelRequest) => {
      if (req.graceSeconds < 0 || req.graceSeconds > 86400) throw new InvalidArgumentError(`grace_seconds: expected 0..86400, got ${req.graceSeconds}`, "grace_seconds");
      const job = await service.cancel(jobIdOf(service, req.jobId), { checkpoint: req.checkpoint, graceSeconds: req.graceSeconds > 0 ? req.graceSeconds : null });
      return fitJob(jobToProto(job));
    }),
    deleteJob: unary("deleteJob", async (req: DeleteRequest) => {
      // A job whose deletion was interrupted is hidden from references (NOT_FOUND says so); its exact id still finishes it.
      const r = await service.delete(service.deleting(req.jobId) ? req.jobId : jobIdOf(service, req.jobId), { keepCheckpoints: req.keepCheckpoints });
      return { jobId: r.jobId, freedBytes: r.freedBytes, checkpointsKept: r.checkpointsKept };
    }),
    resumeJob: unary("resumeJob", async (req: JobRef) => fitJob(jobToProto(await service.resume(jobIdOf(service, req.jobId))))),
    requestCheckpoint: unary("requestCheckpoint", (req: JobRef) => {
      const id = jobIdOf(service, req.jobId);
      const r = service.requestCheckpoint(id);
      return { jobId: id, stage: r.stage, step: r.step };
    }),
    listCheckpoints: unary("listCheckpoints", (req: JobRef) => {
      const list = service.checkpoints(jobIdOf(service, req.jobId));
      return { checkpoints: list.map(({ record, untrusted }) => ({ ...checkpointToProto(record), ...(untrusted === null ? {} : { status: "untrusted", reason: untrusted }) })) };
    }),
    setNodeSchedulable: unary("setNodeSchedulable", (req: NodeSchedulableRequest) => {
      if (!req.name) throw new InvalidArgumentError("name: required", "name");
      return nodeToProto(service.setNodeSchedulable(req.name, req.schedulable));
    }),
    listNodes: unary("listNodes", async () => ({ nodes: [...service.nodes().map(nodeToProto), ...(await service.clusterNodes()).map(clusterNodeToProto)] })),
    audit: unary("audit", async (req: JobRef) => ({ json: JSON.stringify(await service.audit(jobIdOf(service, req.jobId))) })),
    stepHistory: unary("stepHistory", (req: StepHistoryRequest) => {
      const h = service.stepHistory(jobIdOf(service, req.jobId), req.stage, req.maxPoints);
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
    getServerInfo: unary("getServerInfo", () => ({
      version: info.version,
      stateDir: info.stateDir,
      metricsAddress: info.metricsAddress(),
      store: info.store,
      events: info.events,
      manifestPublicKey: info.manifestKey.publicKeyPem,
      manifestKeyFingerprint: info.manifestKey.fingerprint,
    })),
    streamLogs(call: ServerWritableStream<LogsRequest, LogLine>) {
      void Promise.resolve()
        .then(() => {
          guard(security, "streamLogs", call);
          return streamLogs(service, call);
        })
        .catch((err: unknown) => call.emit("error", toServiceError(err)));
    },
    watch(call: ServerWritableStream<WatchRequest, JobEvent>) {
      try {
        guard(security, "watch", call);
        watch(service, call);
      } catch (err) {
        call.emit("error", toServiceError(err));
      }
    },
  };
}

async function streamLogs(service: JobService, call: ServerWritableStream<LogsRequest, LogLine>): Promise<void> {
  const req = call.request;
  if (req.rank < -1) throw new InvalidArgumentError(`rank: expected -1 (all ranks) or a rank >= 0, got ${req.rank}`, "rank");
  const id = jobIdOf(service, req.jobId);
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
  const id = jobIdOf(service, req.jobId);
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
  // Over with no terminal event to send: none stored, --from past it, or a view (a job shown interrupted) that no event made.
  if (!ended && isTerminal(service.get(id).state)) {
    ended = true;
    unsub();
    call.end();
  }
}
