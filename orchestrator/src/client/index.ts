/**
 * client: the typed ControlService client the CLI uses. gRPC failures come
 * back as clipfleet errors (the server sends the code in metadata), so the
 * CLI maps them to exit codes in one place.
 */
import { credentials, Metadata, status, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import {
  ClipfleetError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
  type ErrorCode,
} from "../domain/index.js";
import {
  ControlServiceClient,
  type AuditReport,
  type CheckpointList,
  type CheckpointRequested,
  type DeleteReply,
  type Job,
  type JobEvent,
  type JobState,
  type ListJobsResponse,
  type LogLine,
  type Node,
  type NodeList,
  type ServerInfo,
  type StepHistoryResponse,
  type ValidateJobReply,
} from "../gen/clipfleet/v1/control.js";

const CODES: readonly ErrorCode[] = ["INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "UNAVAILABLE", "UNAUTHENTICATED", "PERMISSION_DENIED", "FENCED", "JOB_FAILED", "ENVIRONMENT", "INTERNAL"];

/** A clipfleet error for a failed call, naming the server address when it cannot be reached. */
export function fromServiceError(err: ServiceError, address: string): ClipfleetError {
  const code = err.metadata?.get("x-clipfleet-code")[0];
  const message = err.details || err.message;
  if (typeof code === "string" && (CODES as readonly string[]).includes(code)) {
    if (code === "INVALID_ARGUMENT") {
      const path = err.metadata?.get("x-clipfleet-path")[0];
      return new InvalidArgumentError(message, typeof path === "string" ? path : null);
    }
    return new ClipfleetError(code as ErrorCode, message);
  }
  switch (err.code) {
    case status.UNAVAILABLE:
    case status.DEADLINE_EXCEEDED:
      return new UnavailableError(`cannot reach the orchestrator at ${address}: ${message}`);
    case status.NOT_FOUND:
      return new NotFoundError(message);
    case status.INVALID_ARGUMENT:
      return new InvalidArgumentError(message);
    case status.RESOURCE_EXHAUSTED:
      // The transport's size limit (either side's): the request, or a reply, is larger than allowed.
      return new InvalidArgumentError(`${address}: ${message} (a request larger than the server accepts, or a reply larger than this client takes)`);
    default:
      return new ClipfleetError("INTERNAL", `${address}: ${message}`);
  }
}

type Unary<Req, Res> = (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res: Res) => void) => unknown;

/** A client identity for a server with --tls-dir: the CA to trust and this client's certificate and key (PEM). */
export interface ClientTls {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export class ControlClient {
  private readonly client: InstanceType<typeof ControlServiceClient>;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 30_000,
    private readonly tls: ClientTls | null = null,
  ) {
    const creds = tls ? credentials.createSsl(tls.ca, tls.key, tls.cert) : credentials.createInsecure();
    this.client = new ControlServiceClient(address, creds, {
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
    });
  }

  /** Fails fast with UNAVAILABLE (exit 3) when nothing answers at the address (or refuses this client's TLS). */
  async ping(timeoutMs = 5000): Promise<ServerInfo> {
    await new Promise<void>((resolve, reject) => {
      this.client.waitForReady(new Date(Date.now() + timeoutMs), (err) => {
        if (!err) return resolve();
        const hint = this.tls
          ? "is `clipfleet server` running, and does it trust this client certificate's CA?"
          : "is `clipfleet server` running? a server with --tls-dir needs --tls-dir or CLIPFLEET_TLS_DIR here";
        reject(new UnavailableError(`cannot reach the orchestrator at ${this.address} (${hint})`));
      });
    });
    return this.call(this.client.getServerInfo.bind(this.client), {});
  }

  submit(specJson: string, specPath: string, baseDir: string, timeoutMs = 15 * 60_000): Promise<Job> {
    return this.call(this.client.submit.bind(this.client) as Unary<object, Job>, { specJson, specPath, baseDir }, timeoutMs);
  }
  /** ValidateJob: the server's dry run of submit (every problem, each stage's data counted); nothing is created. */
  validateJob(specJson: string, specPath: string, baseDir: string, timeoutMs = 15 * 60_000): Promise<ValidateJobReply> {
    return this.call(this.client.validateJob.bind(this.client) as Unary<object, ValidateJobReply>, { specJson, specPath, baseDir }, timeoutMs);
  }
  getJob(jobId: string): Promise<Job> {
    return this.call(this.client.getJob.bind(this.client) as Unary<object, Job>, { jobId });
  }
  /** Jobs oldest first (the list view: GetJob has a job's spec and events); `omitted`: older jobs the reply had no room for. */
  listJobs(states: JobState[] = [], limit = 0): Promise<ListJobsResponse> {
    return this.call(this.client.listJobs.bind(this.client) as Unary<object, ListJobsResponse>, { states, limit });
  }
  cancel(jobId: string, checkpoint: boolean, graceSeconds: number): Promise<Job> {
    return this.call(this.client.cancelJob.bind(this.client) as Unary<object, Job>, { jobId, checkpoint, graceSeconds }, 10 * 60_000);
  }
  delete(jobId: string, keepCheckpoints: boolean): Promise<DeleteReply> {
    return this.call(this.client.deleteJob.bind(this.client) as Unary<object, DeleteReply>, { jobId, keepCheckpoints }, 10 * 60_000);
  }
  resume(jobId: string): Promise<Job> {
    return this.call(this.client.resumeJob.bind(this.client) as Unary<object, Job>, { jobId });
  }
  requestCheckpoint(jobId: string): Promise<CheckpointRequested> {
    return this.call(this.client.requestCheckpoint.bind(this.client) as Unary<object, CheckpointRequested>, { jobId });
  }
  checkpoints(jobId: string): Promise<CheckpointList> {
    return this.call(this.client.listCheckpoints.bind(this.client) as Unary<object, CheckpointList>, { jobId });
  }
  nodes(): Promise<NodeList> {
    return this.call(this.client.listNodes.bind(this.client), {});
  }
  setNodeSchedulable(name: string, schedulable: boolean): Promise<Node> {
    return this.call(this.client.setNodeSchedulable.bind(this.client) as Unary<object, Node>, { name, schedulable });
  }
  audit(jobId: string): Promise<AuditReport> {
    return this.call(this.client.audit.bind(this.client) as Unary<object, AuditReport>, { jobId });
  }
  /** Rank 0's per-step reports of a job (stage "": every stage), thinned to about `maxPoints` per stage when > 0. */
  stepHistory(jobId: string, stage = "", maxPoints = 0): Promise<StepHistoryResponse> {
    return this.call(this.client.stepHistory.bind(this.client) as Unary<object, StepHistoryResponse>, { jobId, stage, maxPoints }, 5 * 60_000);
  }
  serverInfo(): Promise<ServerInfo> {
    return this.call(this.client.getServerInfo.bind(this.client), {});
  }

  /** Follows a job's events (replaying those from `fromSeq`) until the job ends or `signal` aborts. */
  watch(jobId: string, onEvent: (e: JobEvent) => void, fromSeq = 0, signal?: AbortSignal): Promise<void> {
    return this.consume(this.client.watch({ jobId, fromSeq }), onEvent, signal);
  }

  /** Streams a job's log lines; with follow, until the job ends. */
  logs(req: { jobId: string; follow: boolean; stage: string; rank: number; tail: number }, onLine: (l: LogLine) => void, signal?: AbortSignal): Promise<void> {
    return this.consume(this.client.streamLogs(req), onLine, signal);
  }

  close(): void {
    this.client.close();
  }

  private consume<T>(stream: ClientReadableStream<T>, onItem: (t: T) => void, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const abort = (): void => {
        stream.cancel();
        resolve();
      };
      signal?.addEventListener("abort", abort, { once: true });
      stream.on("data", onItem);
      stream.on("end", () => {
        signal?.removeEventListener("abort", abort);
        resolve();
      });
      stream.on("error", (err: ServiceError) => {
        signal?.removeEventListener("abort", abort);
        if (err.code === status.CANCELLED && signal?.aborted) resolve();
        else reject(fromServiceError(err, this.address));
      });
    });
  }

  private call<Res>(fn: Unary<object, Res>, req: object, timeoutMs = this.timeoutMs): Promise<Res> {
    return new Promise((resolve, reject) => {
      fn(req, new Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => {
        if (err) reject(fromServiceError(err, this.address));
        else resolve(res);
      });
    });
  }
}
