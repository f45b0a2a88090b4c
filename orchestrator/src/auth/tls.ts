/**
 * The TLS material of a server or a client, read from a --tls-dir as
 * `clipfleet certs` lays it out: ca.crt, server.crt and server.key for a
 * server; ca.crt, client.crt and client.key for a client. A private key
 * readable by group or others is refused, as OpenSSH refuses such a key.
 */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError } from "../domain/index.js";

/** PEM bytes of a CA, a certificate and its key. */
export interface TlsFiles {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly dir: string;
}

/** The server's files in `dir`. */
export function loadServerTls(dir: string): TlsFiles {
  return load(dir, "server");
}

/** A client's files in `dir`. */
export function loadClientTls(dir: string): TlsFiles {
  return load(dir, "client");
}

function load(dir: string, who: "server" | "client"): TlsFiles {
  const read = (name: string): Buffer => {
    const path = join(dir, name);
    try {
      return readFileSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const how = who === "server" ? "clipfleet certs init --dir DIR --host HOST" : "clipfleet certs issue --dir CA_DIR --name NAME --role ROLE";
      throw new InvalidArgumentError(`--tls-dir ${dir}: ${name} ${code === "ENOENT" ? "is missing" : `cannot be read (${code ?? "error"})`} (make the files with \`${how}\`)`, "tls-dir");
    }
  };
  const keyName = `${who}.key`;
  const files = { ca: read("ca.crt"), cert: read(`${who}.crt`), key: read(keyName), dir };
  const mode = statSync(join(dir, keyName)).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new InvalidArgumentError(
      `--tls-dir ${dir}: ${keyName} is accessible by group or others (mode 0${mode.toString(8)}); \`chmod 600 ${join(dir, keyName)}\``,
      "tls-dir",
    );
  }
  return files;
}
