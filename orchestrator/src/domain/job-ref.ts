/**
 * Job references: what users type where a job is taken. A full id, a job
 * name (the newest job of that name), or a unique prefix of an id or of its
 * random part (`j-20261123-155955-a1b2c3`: `j-20261123-15`, `a1b2`), the way
 * git takes a short commit id. One pure function, so the server, the
 * read-only view of a state dir and the tests all resolve alike.
 */
import { InvalidArgumentError, NotFoundError } from "./errors.js";

/** What the resolver needs of a job. */
export interface JobRefCandidate {
  readonly id: string;
  readonly name: string;
  readonly createdAtMs: number;
}

/** How a reference matched: the id itself, a job name, or a prefix. */
export type JobRefMatch = "id" | "name" | "prefix";

export interface JobRefResolution<J extends JobRefCandidate> {
  readonly job: J;
  readonly by: JobRefMatch;
  /** With `by: "name"`: how many jobs have that name (the newest was picked). */
  readonly sameName: number;
}

/** The characters of ids and of job names (spec JOB_NAME), at most as long as an id. */
const JOB_REF = /^[A-Za-z0-9._-]{1,128}$/;

/** Candidates an ambiguous prefix lists at most (the rest are counted). */
const MAX_LISTED = 8;

/**
 * Resolves `ref` among `jobs`: an exact id first, then an exact name (the
 * newest such job), then a unique prefix of an id or of its random part.
 * NOT_FOUND names the reference; an ambiguous prefix is INVALID_ARGUMENT
 * listing the candidates.
 */
export function resolveJobRef<J extends JobRefCandidate>(ref: string, jobs: Iterable<J>): JobRefResolution<J> {
  checkJobRef(ref);
  const all = [...jobs];
  const exact = all.find((j) => j.id === ref);
  if (exact) return { job: exact, by: "id", sameName: 0 };
  const named = all.filter((j) => j.name === ref);
  if (named.length > 0) return { job: newest(named), by: "name", sameName: named.length };
  const prefixed = all.filter((j) => j.id.startsWith(ref) || randomPart(j.id).startsWith(ref));
  if (prefixed.length === 1) return { job: prefixed[0] as J, by: "prefix", sameName: 0 };
  if (prefixed.length === 0) throw new NotFoundError(`job ${ref} not found`);
  const sorted = [...prefixed].sort((a, b) => b.createdAtMs - a.createdAtMs || (a.id < b.id ? -1 : 1));
  const listed = sorted.slice(0, MAX_LISTED).map((j) => `${j.id} (${j.name})`);
  const more = sorted.length > MAX_LISTED ? ` and ${sorted.length - MAX_LISTED} more` : "";
  throw new InvalidArgumentError(`job ${ref} is ambiguous: it starts ${sorted.length} job ids: ${listed.join(", ")}${more}; give more characters`, "job");
}

/** Refuses what cannot be a reference (empty, too long, a character no id or name has: "/", spaces). */
export function checkJobRef(ref: string): string {
  if (!ref) throw new InvalidArgumentError("job_id: required", "job_id");
  if (!JOB_REF.test(ref)) throw new InvalidArgumentError(`job_id: not a job id: "${ref.slice(0, 80)}" (ids, job names and id prefixes have only A-Z a-z 0-9 . _ -)`, "job_id");
  return ref;
}

/** The random hex after the last dash of a generated id (`a1b2c3`); ids of other shapes have none. */
function randomPart(id: string): string {
  const m = /^j-\d{8}-\d{6}-([0-9a-f]+)$/.exec(id);
  return m ? (m[1] as string) : "";
}

function newest<J extends JobRefCandidate>(jobs: J[]): J {
  return jobs.reduce((a, b) => (b.createdAtMs > a.createdAtMs || (b.createdAtMs === a.createdAtMs && b.id > a.id) ? b : a));
}
