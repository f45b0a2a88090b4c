/** Turns the `--store` option into a store. */
import { InvalidArgumentError } from "../domain/index.js";
import { NO_NATS_ACCESS, natsTarget, type NatsAccess } from "../nats/index.js";
import { FileJobStore } from "./file-store.js";
import { NatsKvJobStore, type NatsKvStoreOptions } from "./nats-kv-store.js";
import type { JobStore } from "./store.js";

/**
 * `spec` is "file" (or empty: the default, files under `stateDir`) or
 * `nats://host:port[,nats://host2:port...][?bucket=name&replicas=3&history=5]`
 * (tls:// for TLS; see nats/ for credentials); the query sets the bucket
 * options used when the bucket is created. `access` is the --nats-* TLS
 * files and credential.
 */
export async function openStore(spec: string, stateDir: string, access: NatsAccess = NO_NATS_ACCESS): Promise<JobStore> {
  if (spec === "" || spec === "file") return FileJobStore.open(stateDir);
  const q = spec.indexOf("?");
  // Parsed (and refused, naming --store) before the query, so a bad scheme is said first.
  const target = natsTarget(q < 0 ? spec : spec.slice(0, q), "store", access);
  const options: NatsKvStoreOptions = {};
  for (const [name, value] of new URLSearchParams(q < 0 ? "" : spec.slice(q + 1))) {
    if (name === "bucket") {
      if (!/^[A-Za-z0-9_-]+$/.test(value)) throw badParam(name, value, "letters, digits, '-' and '_'");
      options.bucket = value;
    } else if (name === "replicas" || name === "history") {
      const n = Number(value);
      const max = name === "replicas" ? 5 : 64; // JetStream's own limits
      if (!Number.isInteger(n) || n < 1 || n > max) throw badParam(name, value, `an integer from 1 to ${max}`);
      options[name] = n;
    } else {
      throw new InvalidArgumentError(
        `--store: unknown parameter ${JSON.stringify(name)} (known: bucket, replicas, history)`,
        "store",
      );
    }
  }
  return NatsKvJobStore.open(target, options);
}

function badParam(name: string, value: string, expected: string): InvalidArgumentError {
  return new InvalidArgumentError(`--store: ${name} must be ${expected}, got ${JSON.stringify(value)}`, "store");
}
