/**
 * One small typed hierarchy with stable codes. Codes map to gRPC status in
 * rpc/ (one function) and to exit codes in cli/ (one function); messages are
 * written for the user and must say what to fix, naming the field or file.
 */

export type ErrorCode =
  /** Bad input: spec, flags, request fields. Exit 2, gRPC INVALID_ARGUMENT. */
  | "INVALID_ARGUMENT"
  /** The request is valid but not now (resume a running job). Exit 2, gRPC FAILED_PRECONDITION. */
  | "FAILED_PRECONDITION"
  /** No such job, stage or checkpoint. Exit 3, gRPC NOT_FOUND. */
  | "NOT_FOUND"
  /** The orchestrator cannot be reached. Exit 3, gRPC UNAVAILABLE. */
  | "UNAVAILABLE"
  /** Missing or wrong job token. gRPC UNAUTHENTICATED. */
  | "UNAUTHENTICATED"
  /** The caller's identity may not make this call (its role is too low). Exit 4, gRPC PERMISSION_DENIED. */
  | "PERMISSION_DENIED"
  /** A worker of an attempt that is over (fencing). gRPC FAILED_PRECONDITION. */
  | "FENCED"
  /** The job ran and failed. Exit 1. */
  | "JOB_FAILED"
  /** The environment lacks something (no python with torch, no nats-server). Exit 2. */
  | "ENVIRONMENT"
  /** A bug or an unexpected failure. Exit 1, gRPC INTERNAL. */
  | "INTERNAL";

/** Base of every error clipfleet raises on purpose. */
export class ClipfleetError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A spec or option failed validation; `path` is the dotted field path, when there is one. */
export class InvalidArgumentError extends ClipfleetError {
  readonly path: string | null;
  constructor(message: string, path: string | null = null, options?: { cause?: unknown }) {
    super("INVALID_ARGUMENT", message, options);
    this.path = path;
  }
}

export class NotFoundError extends ClipfleetError {
  constructor(message: string) {
    super("NOT_FOUND", message);
  }
}

export class FailedPreconditionError extends ClipfleetError {
  constructor(message: string) {
    super("FAILED_PRECONDITION", message);
  }
}

/**
 * A checkpoint manifest this orchestrator did not sign: no manifest.sig, or
 * one that does not verify with its key (tampered, another orchestrator's,
 * or committed before manifests were signed). Never handed to a rank.
 */
export class UntrustedCheckpointError extends FailedPreconditionError {
  /** The checkpoint directory whose manifest is refused. */
  readonly dir: string;
  constructor(dir: string, message: string) {
    super(message);
    this.dir = dir;
  }
}

export class UnavailableError extends ClipfleetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("UNAVAILABLE", message, options);
  }
}

export class UnauthenticatedError extends ClipfleetError {
  constructor(message: string) {
    super("UNAUTHENTICATED", message);
  }
}

/** A call the caller's role does not allow; the message names the role needed. */
export class PermissionDeniedError extends ClipfleetError {
  constructor(message: string) {
    super("PERMISSION_DENIED", message);
  }
}

export class FencedError extends ClipfleetError {
  constructor(message: string) {
    super("FENCED", message);
  }
}

export class EnvironmentError extends ClipfleetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("ENVIRONMENT", message, options);
  }
}

export class JobFailedError extends ClipfleetError {
  constructor(message: string) {
    super("JOB_FAILED", message);
  }
}

/** Narrow an unknown throwable to a ClipfleetError, wrapping anything else as INTERNAL. */
export function asClipfleetError(err: unknown): ClipfleetError {
  if (err instanceof ClipfleetError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ClipfleetError("INTERNAL", message, { cause: err });
}
