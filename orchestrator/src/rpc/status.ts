/** The one mapping from clipfleet error codes to gRPC status codes (and back, for clients). */
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { asClipfleetError, type ErrorCode } from "../domain/index.js";

const TO_GRPC: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  NOT_FOUND: status.NOT_FOUND,
  UNAVAILABLE: status.UNAVAILABLE,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  FENCED: status.FAILED_PRECONDITION,
  JOB_FAILED: status.ABORTED,
  ENVIRONMENT: status.FAILED_PRECONDITION,
  INTERNAL: status.INTERNAL,
};

/** A grpc-js error for any throwable; the clipfleet code travels in `x-clipfleet-code` metadata. */
export function toServiceError(err: unknown): Partial<ServiceError> {
  const e = asClipfleetError(err);
  const md = new Metadata();
  md.set("x-clipfleet-code", e.code);
  const path = (e as { path?: unknown }).path;
  if (typeof path === "string") md.set("x-clipfleet-path", path);
  return { code: TO_GRPC[e.code], details: e.message, metadata: md };
}
