/**
 * `clipfleet certs`: a certificate authority for one fleet, made with the
 * openssl command (no ASN.1 of our own). init makes the CA, the server's
 * certificate (its names and addresses as subjectAltName) and an admin
 * client identity; issue makes a client identity with a name and a role,
 * laid out as a ready --tls-dir (ca.crt, client.crt, client.key).
 * Keys are P-256, files 0600, folders 0700.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { EnvironmentError, InvalidArgumentError } from "../domain/index.js";
import { IDENTITY_NAME } from "./identity.js";
import type { Role } from "./roles.js";

const CA_DAYS = 3650;
const LEAF_DAYS = 825;

function openssl(args: readonly string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile("openssl", args, { cwd, timeout: 60_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return reject(new EnvironmentError("the openssl command is not installed (Debian package openssl; `make deps` installs it)"));
      reject(new EnvironmentError(`openssl ${args[0] ?? ""} failed: ${stderr.trim().split("\n").pop() ?? err.message}`));
    });
  });
}

/** A fresh key and a certificate for `subject` signed by the CA in `dir`, with the given extensions. */
async function signLeaf(dir: string, out: string, base: string, subject: string, extensions: string): Promise<void> {
  const ext = join(out, `${base}.ext`);
  const csr = join(out, `${base}.csr`);
  writeFileSync(ext, `[leaf]\n${extensions}\n`, { mode: 0o600 });
  try {
    await openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", join(out, `${base}.key`), "-out", csr, "-subj", subject], dir);
    await openssl(
      ["x509", "-req", "-in", csr, "-CA", join(dir, "ca.crt"), "-CAkey", join(dir, "ca.key"), "-set_serial", `0x${randomBytes(16).toString("hex")}`, "-days", String(LEAF_DAYS), "-sha256", "-extfile", ext, "-extensions", "leaf", "-out", join(out, `${base}.crt`)],
      dir,
    );
  } finally {
    rmSync(ext, { force: true });
    rmSync(csr, { force: true });
  }
  chmodSync(join(out, `${base}.key`), 0o600);
  chmodSync(join(out, `${base}.crt`), 0o600);
}

/** The subjectAltName of a server reachable as each of `hosts` (names and IP addresses). */
export function subjectAltName(hosts: readonly string[]): string {
  if (hosts.length === 0) throw new InvalidArgumentError("--host: name at least one host name or address clients and workers use to reach the server", "host");
  return hosts
    .map((h) => {
      if (isIP(h)) return `IP:${h}`;
      if (!/^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$/.test(h)) throw new InvalidArgumentError(`--host: not a host name or IP address: "${h.slice(0, 80)}"`, "host");
      return `DNS:${h}`;
    })
    .join(",");
}

/**
 * Makes a CA in `dir` (refusing to overwrite one), the server's certificate
 * for `hosts`, and the admin identity `admin` (client.crt, client.key).
 */
export async function initCerts(dir: string, hosts: readonly string[]): Promise<void> {
  subjectAltName(hosts);
  if (existsSync(join(dir, "ca.key"))) throw new InvalidArgumentError(`--dir ${dir} already holds a CA (ca.key): issue identities with \`clipfleet certs issue --dir ${dir}\``, "dir");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  await openssl(
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", String(CA_DAYS), "-sha256",
      "-subj", "/O=clipfleet/CN=clipfleet CA",
      "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ],
    dir,
  );
  chmodSync(join(dir, "ca.key"), 0o600);
  await issueServerCert(dir, hosts);
  await signLeaf(dir, dir, "client", "/O=admin/CN=admin", clientExtensions());
}

/** (Re)issues the server's certificate and key in `dir` for `hosts`, signed by the CA there (rotation, a new address). */
export async function issueServerCert(dir: string, hosts: readonly string[]): Promise<void> {
  const san = subjectAltName(hosts);
  if (!existsSync(join(dir, "ca.key"))) throw new InvalidArgumentError(`--dir ${dir} holds no CA (ca.key): make one with \`clipfleet certs init --dir ${dir} --host HOST\``, "dir");
  await signLeaf(dir, dir, "server", "/O=clipfleet/CN=clipfleet server", `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}`);
}

/** Makes a client identity `name` with `role`, signed by the CA in `dir`, as a ready --tls-dir in `out`. */
export async function issueCert(dir: string, name: string, role: Role, out: string): Promise<void> {
  if (!IDENTITY_NAME.test(name)) throw new InvalidArgumentError(`--name: "${name.slice(0, 80)}" is not a valid identity name (letters, digits, . _ @ -, at most 64)`, "name");
  if (!existsSync(join(dir, "ca.key"))) throw new InvalidArgumentError(`--dir ${dir} holds no CA (ca.key): make one with \`clipfleet certs init --dir ${dir} --host HOST\``, "dir");
  if (existsSync(join(out, "client.key"))) throw new InvalidArgumentError(`--out ${out} already holds an identity (client.key)`, "out");
  mkdirSync(out, { recursive: true, mode: 0o700 });
  chmodSync(out, 0o700);
  await signLeaf(dir, out, "client", `/O=${role}/CN=${name}`, clientExtensions());
  copyFileSync(join(dir, "ca.crt"), join(out, "ca.crt"));
  chmodSync(join(out, "ca.crt"), 0o644);
}

function clientExtensions(): string {
  return "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth";
}
