/**
 * A dashboard request, parsed and bounded before anything acts on it: the
 * URL's length, the query's size and names, job ids, stage names, numbers.
 * Pure: every request of a browser, or of anyone else, ends here as a Route
 * or a refusal (status and reason).
 */
import { isValidJobId } from "../domain/index.js";

/** Longest request target accepted (414 beyond). */
export const MAX_URL_CHARS = 4096;
/** Most query parameters accepted. */
export const MAX_QUERY_PARAMS = 16;
/** Most jobs the comparison view takes at once. */
export const MAX_COMPARE_JOBS = 8;
/** Most points a history request may ask for (per stage). */
export const MAX_HISTORY_POINTS = 20_000;
export const DEFAULT_HISTORY_POINTS = 4_000;
/** Most log lines replayed when a job's stream opens. */
export const MAX_LOG_TAIL = 2_000;

const ASSET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const STAGE = /^[a-z0-9-]{1,64}$/;

/** What a request asks for. Pages all load the same app; it reads the path. */
export type Route =
  | { readonly kind: "page"; readonly token: string | null }
  | { readonly kind: "asset"; readonly name: string }
  | { readonly kind: "jobs" }
  | { readonly kind: "job"; readonly id: string }
  | { readonly kind: "history"; readonly id: string; readonly stage: string; readonly maxPoints: number }
  | { readonly kind: "nodes" }
  | { readonly kind: "overview-stream" }
  | { readonly kind: "job-stream"; readonly id: string; readonly tail: number; readonly maxPoints: number };

/** A request refused before routing: its HTTP status and why. */
export interface Refusal {
  readonly status: 400 | 404 | 405 | 414;
  readonly reason: string;
}

/** Parses a request line's method and target into a Route, or a refusal. */
export function route(method: string | undefined, target: string | undefined): Route | Refusal {
  if (method !== "GET" && method !== "HEAD") return { status: 405, reason: "the dashboard is read-only: GET only" };
  if (!target || target.length > MAX_URL_CHARS) return { status: 414, reason: `request target longer than ${MAX_URL_CHARS} characters` };
  if (!target.startsWith("/")) return { status: 400, reason: "request target must be a path" };
  let url: URL;
  try {
    url = new URL(target, "http://dashboard.invalid");
  } catch {
    return { status: 400, reason: "malformed request target" };
  }
  const params = [...url.searchParams.keys()];
  if (params.length > MAX_QUERY_PARAMS) return { status: 400, reason: `more than ${MAX_QUERY_PARAMS} query parameters` };
  let parts: string[];
  try {
    parts = url.pathname.split("/").slice(1).map(decodeURIComponent);
  } catch {
    return { status: 400, reason: "malformed percent-encoding in the path" };
  }
  const q = url.searchParams;
  const [a, b, c, d, ...rest] = parts;
  const token = q.get("token");
  // Pages: /, /jobs/ID, /nodes, /compare (the app routes on the client).
  if (parts.length === 1 && (a === "" || a === "nodes" || a === "compare")) return { kind: "page", token };
  if (parts.length === 2 && a === "jobs" && b !== undefined && isValidJobId(b)) return { kind: "page", token };
  if (parts.length === 2 && a === "assets" && b !== undefined) {
    return ASSET_NAME.test(b) ? { kind: "asset", name: b } : { status: 404, reason: "no such asset" };
  }
  if (a !== "api" || rest.length > 0) return { status: 404, reason: "no such page" };
  if (b === "jobs" && c === undefined) return { kind: "jobs" };
  if (b === "nodes" && c === undefined) return { kind: "nodes" };
  if (b === "stream" && c === undefined) return { kind: "overview-stream" };
  if (b !== "jobs" || c === undefined) return { status: 404, reason: "no such API path" };
  if (!isValidJobId(c)) return { status: 400, reason: `job: not a job id: ${JSON.stringify(c.slice(0, 80))}` };
  const max = intParam(q.get("max"), "max", DEFAULT_HISTORY_POINTS, 1, MAX_HISTORY_POINTS);
  if (typeof max !== "number") return max;
  if (d === undefined) return { kind: "job", id: c };
  if (d === "history") {
    const stage = q.get("stage") ?? "";
    if (stage !== "" && !STAGE.test(stage)) return { status: 400, reason: "stage: expected a stage name (a-z 0-9 -, at most 64)" };
    return { kind: "history", id: c, stage, maxPoints: max };
  }
  if (d === "stream") {
    const tail = intParam(q.get("tail"), "tail", 500, 0, MAX_LOG_TAIL);
    if (typeof tail !== "number") return tail;
    return { kind: "job-stream", id: c, tail, maxPoints: max };
  }
  return { status: 404, reason: "no such API path" };
}

/** A bounded integer query parameter (absent: the default). */
function intParam(v: string | null, name: string, dflt: number, min: number, max: number): number | Refusal {
  if (v === null) return dflt;
  if (!/^\d{1,9}$/.test(v)) return { status: 400, reason: `${name}: expected an integer from ${min} to ${max}` };
  const n = Number(v);
  if (n < min || n > max) return { status: 400, reason: `${name}: expected an integer from ${min} to ${max}, got ${n}` };
  return n;
}

/** Whether a parse result is a refusal. */
export function isRefusal(r: Route | Refusal): r is Refusal {
  return "status" in r;
}

/** The URL without its `token` parameter (where the first visit is sent once the cookie is set). */
export function withoutToken(target: string): string {
  const url = new URL(target, "http://dashboard.invalid");
  url.searchParams.delete("token");
  return url.pathname + url.search;
}
