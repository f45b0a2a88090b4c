/**
 * Shard URL patterns as WebDataset and open_clip accept them: `::`-joined
 * lists of patterns, each with bash-style brace lists (`{a,b}`) and numeric
 * ranges (`{00000..00099}`, zero padding kept, optional `..step`).
 */
import { InvalidArgumentError } from "./errors.js";
import { MAX_SHARDS } from "./limits.js";

const RANGE = /^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$/;

/**
 * Every shard name `pattern` stands for, in order. `field` names the spec field
 * in error messages. An unbalanced `{` is an error rather than a literal, since
 * in a shard pattern it is always a typo.
 */
export function expandShardPattern(pattern: string, field = "data.train"): string[] {
  // Counted before anything is expanded: a 200-byte pattern can stand for 10^9 names.
  checkShardCount(pattern, field);
  const out: string[] = [];
  for (const part of pattern.split("::")) {
    if (part.trim() === "") {
      throw new InvalidArgumentError(`${field}: empty shard pattern in ${JSON.stringify(pattern)}`, field);
    }
    for (const name of expandBraces(part, pattern, field)) out.push(name);
  }
  return out;
}

function expandBraces(s: string, whole: string, field: string): string[] {
  for (let open = s.indexOf("{"); open >= 0; open = s.indexOf("{", open + 1)) {
    const close = matchingBrace(s, open);
    if (close < 0) {
      throw new InvalidArgumentError(`${field}: unbalanced "{" in ${JSON.stringify(whole)}`, field);
    }
    const body = s.slice(open + 1, close);
    const items = braceItems(body, whole, field);
    // A group with neither a comma nor a range is literal text (as in bash);
    // keep scanning inside it for nested groups.
    if (items === null) continue;
    const prefix = s.slice(0, open);
    const rests = expandBraces(s.slice(close + 1), whole, field);
    const out: string[] = [];
    for (const item of items) for (const rest of rests) out.push(prefix + item + rest);
    return out;
  }
  return [s];
}

function braceItems(body: string, whole: string, field: string): string[] | null {
  const range = RANGE.exec(body);
  if (range) return numericRange(range[1] ?? "", range[2] ?? "", range[3]);
  const alts = splitTopLevelCommas(body);
  if (alts.length < 2) return null;
  return alts.flatMap((alt) => expandBraces(alt, whole, field));
}

function numericRange(from: string, to: string, stepText: string | undefined): string[] {
  const a = Number(from);
  const b = Number(to);
  const step = Math.max(1, Math.abs(stepText === undefined ? 1 : Number(stepText)));
  const padded = (t: string): boolean => /^-?0\d/.test(t);
  const width = padded(from) || padded(to) ? Math.max(from.length, to.length) : 0;
  const fmt = (n: number): string => {
    const digits = String(Math.abs(n)).padStart(width - (n < 0 ? 1 : 0), "0");
    return n < 0 ? `-${digits}` : digits;
  };
  const out: string[] = [];
  if (a <= b) for (let n = a; n <= b; n += step) out.push(fmt(n));
  else for (let n = a; n >= b; n -= step) out.push(fmt(n));
  return out;
}

function matchingBrace(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === "{") depth++;
    else if (s[i] === "}" && --depth === 0) return i;
  }
  return -1;
}

function splitTopLevelCommas(body: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (c === "{") depth++;
    else if (c === "}") depth--;
    else if (c === "," && depth === 0) {
      parts.push(body.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(body.slice(start));
  return parts;
}

/**
 * How many shard names `pattern` stands for, without expanding it (the
 * same grammar as expandShardPattern; a number, possibly huge or Infinity).
 */
export function countShardPattern(pattern: string, field = "data.train"): number {
  let total = 0;
  for (const part of pattern.split("::")) {
    if (part.trim() === "") throw new InvalidArgumentError(`${field}: empty shard pattern in ${JSON.stringify(pattern)}`, field);
    total += countBraces(part, pattern, field);
  }
  return total;
}

/** Refuses a pattern standing for more than MAX_SHARDS names, naming the field and the count. */
export function checkShardCount(pattern: string, field = "data.train", limit = MAX_SHARDS): void {
  const n = countShardPattern(pattern, field);
  if (n > limit) {
    const shown = Number.isFinite(n) && n < 1e15 ? n.toLocaleString("en-US") : n.toExponential(2);
    throw new InvalidArgumentError(`${field}: ${JSON.stringify(pattern.slice(0, 120))} stands for ${shown} shards, more than the limit of ${limit.toLocaleString("en-US")}`, field);
  }
}

function countBraces(s: string, whole: string, field: string): number {
  for (let open = s.indexOf("{"); open >= 0; open = s.indexOf("{", open + 1)) {
    const close = matchingBrace(s, open);
    if (close < 0) throw new InvalidArgumentError(`${field}: unbalanced "{" in ${JSON.stringify(whole)}`, field);
    const items = countItems(s.slice(open + 1, close), whole, field);
    if (items === null) continue;
    return items * countBraces(s.slice(close + 1), whole, field);
  }
  return 1;
}

function countItems(body: string, whole: string, field: string): number | null {
  const range = RANGE.exec(body);
  if (range) {
    const a = Number(range[1]);
    const b = Number(range[2]);
    const step = Math.max(1, Math.abs(range[3] === undefined ? 1 : Number(range[3])));
    return Math.floor(Math.abs(b - a) / step) + 1;
  }
  const alts = splitTopLevelCommas(body);
  if (alts.length < 2) return null;
  return alts.reduce((acc, alt) => acc + countBraces(alt, whole, field), 0);
}
