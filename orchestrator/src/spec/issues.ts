/** How spec problems reach the user: one line each, file first, all of them at once. */
import { InvalidArgumentError } from "../domain/index.js";
import { formatPath, type Path } from "./nodes.js";

/** One problem of a spec, located when the spec came from a file. */
export interface SpecIssue {
  /** Dotted field path (`stages[1].train.lr`); "" for the document as a whole. */
  readonly path: string;
  /** What is wrong, without the path: `expected a positive number, got "fast"`. */
  readonly message: string;
  /** 1-based position of the offending key in the file, when known. */
  readonly line: number | null;
  readonly column: number | null;
}

/** `spec.yaml:4:3: train.lr: expected a positive number, got "fast"`. */
export function formatIssue(file: string, issue: SpecIssue): string {
  const where = issue.line === null ? file : `${file}:${issue.line}:${issue.column ?? 1}`;
  return issue.path === "" ? `${where}: ${issue.message}` : `${where}: ${issue.path}: ${issue.message}`;
}

/**
 * A spec failed validation. The message has one line per issue, most
 * important first; `issues` has them structured (for `--json` output), and
 * `path` is the first issue's path.
 */
export class SpecValidationError extends InvalidArgumentError {
  readonly file: string;
  readonly issues: readonly SpecIssue[];
  constructor(file: string, issues: readonly SpecIssue[]) {
    super(issues.map((i) => formatIssue(file, i)).join("\n"), issues[0]?.path || null);
    this.file = file;
    this.issues = issues;
  }
}

/**
 * A problem found after validation (a stage's data, its init checkpoint, its
 * placement) as an issue at the field the user wrote: the stage's own
 * `stages[i].FIELD` in a pipeline, else the top-level FIELD its stages
 * inherit, else the nearest written part of that path. `raw` is the document
 * as parsed; `stage` null or "main" means the job as a whole.
 */
export function issueAtField(
  raw: unknown,
  stage: string | null,
  field: string,
  message: string,
  locate: (path: Path) => { line: number; column: number } | null,
): SpecIssue {
  const segs: Path = field === "" ? [] : field.split(".");
  const stages = raw !== null && typeof raw === "object" && Array.isArray((raw as { stages?: unknown }).stages) ? ((raw as { stages: unknown[] }).stages) : null;
  const index = stage === null || stages === null ? -1 : stages.findIndex((s) => s !== null && typeof s === "object" && (s as { name?: unknown }).name === stage);
  const candidates: Path[] = index >= 0 ? [["stages", index, ...segs], segs] : [segs];
  for (const path of candidates) {
    const at = path.length > 0 ? locate(path) : null;
    if (at !== null) return { path: formatPath(path), message, line: at.line, column: at.column };
  }
  // Not written anywhere (a default): the nearest written ancestor of the first candidate.
  const first = candidates[0]!;
  for (let n = first.length - 1; n > 0; n--) {
    const at = locate(first.slice(0, n));
    if (at !== null) return { path: formatPath(first), message, line: at.line, column: at.column };
  }
  return { path: formatPath(first), message, line: null, column: null };
}
