/** How spec problems reach the user: one line each, file first, all of them at once. */
import { InvalidArgumentError } from "../domain/index.js";

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
