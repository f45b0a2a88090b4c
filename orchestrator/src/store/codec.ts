/**
 * Encoding of job records for both stores. Decoding is where schema versions
 * are enforced: a record written by a newer clipfleet is refused with a clear
 * message rather than half-understood.
 */
import { ClipfleetError, FailedPreconditionError, RECORD_SCHEMA_VERSION, type JobRecord } from "../domain/index.js";

/** Serialises a record (compact JSON; `jq` is the reading tool). */
export function encodeJob(job: JobRecord): string {
  return JSON.stringify(job);
}

/**
 * Parses and checks one record. `where` names the file or key in messages;
 * `expectedId` guards against a record filed under the wrong name.
 */
export function decodeJob(value: unknown, where: string, expectedId: string): JobRecord {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw corrupt(where, "not a JSON object");
  }
  const rec = value as Partial<JobRecord>;
  const version = rec.schemaVersion;
  if (typeof version !== "number" || !Number.isInteger(version) || version < 1) {
    throw corrupt(where, `schemaVersion is ${JSON.stringify(version)}`);
  }
  if (version > RECORD_SCHEMA_VERSION) {
    throw new FailedPreconditionError(
      `${where}: record schemaVersion ${version} is newer than this clipfleet supports ` +
        `(${RECORD_SCHEMA_VERSION}); upgrade clipfleet to read it`,
    );
  }
  if (rec.id !== expectedId) {
    throw corrupt(where, `holds job ${JSON.stringify(rec.id)}, expected ${expectedId}`);
  }
  return value as JobRecord;
}

/** Parses JSON text, naming `where` when it is not JSON. */
export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw corrupt(where, `not valid JSON (${(err as Error).message})`);
  }
}

function corrupt(where: string, what: string): ClipfleetError {
  return new ClipfleetError("INTERNAL", `${where}: corrupt job record: ${what}`);
}
