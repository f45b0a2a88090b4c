/** Canonical JSON: the byte-stable form a config hash is computed over. */

/**
 * JSON with object keys sorted (by UTF-16 code units, recursively) and no
 * whitespace, so equal configs hash equally whatever their key order.
 * Properties whose value is undefined are left out, as JSON.stringify does.
 * The hash is computed here only: Python formats floats differently, so the
 * worker treats config_sha256 as opaque.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`canonicalJson: ${value} has no JSON form`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map((item: unknown) => canonicalJson(item)).join(",")}]`;
  if (typeof value === "object") {
    const record = value as Record<string, unknown>;
    const parts: string[] = [];
    for (const key of Object.keys(record).sort()) {
      if (record[key] === undefined) continue;
      parts.push(`${JSON.stringify(key)}:${canonicalJson(record[key])}`);
    }
    return `{${parts.join(",")}}`;
  }
  throw new Error(`canonicalJson: a ${typeof value} has no JSON form`);
}
