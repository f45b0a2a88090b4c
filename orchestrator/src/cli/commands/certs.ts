/** `clipfleet certs init|issue`: the fleet's certificate authority, server certificate and client identities (openssl). */
import { join } from "node:path";
import { initCerts, issueCert, issueServerCert, parseRole, ROLES } from "../../auth/index.js";
import { InvalidArgumentError } from "../../domain/index.js";
import type { Command } from "../command.js";
import { note, printJson } from "../context.js";

interface CertsArgs {
  action: string;
  dir: string;
  host?: string[];
  name?: string;
  role?: string;
  out?: string;
}

export const certsCommand: Command<CertsArgs> = () => ({
  command: "certs <action>",
  describe: "Make the TLS identities of a server with --tls-dir: `init` a CA, the server's certificate and an admin; `issue` a user's; `server` a new server certificate",
  builder: (y) =>
    y
      .positional("action", { type: "string", choices: ["init", "issue", "server"], demandOption: true, describe: "init: a new CA in --dir; issue: a client identity signed by it; server: re-issue the server's certificate (rotation, new --host)" })
      .option("dir", { type: "string", demandOption: true, describe: "the CA's folder (ca.key stays here; the server's --tls-dir)" })
      .option("host", { type: "string", array: true, describe: "init, server: a name or address clients and ranks use to reach the server (repeat for each)" })
      .option("name", { type: "string", describe: "issue: the identity's name (shown in the access log and as a job's submitter)" })
      .option("role", { type: "string", describe: `issue: ${ROLES.join(" | ")}` })
      .option("out", { type: "string", describe: "issue: where to write the identity (default DIR/clients/NAME): ca.crt, client.crt, client.key, a ready --tls-dir" })
      .example("$0 certs init --dir tls --host 10.0.0.5 --host head.example.org", "a CA, the server's certificate, and the admin identity (tls/client.*)")
      .example("$0 certs issue --dir tls --name alice --role operator", "alice may submit and cancel jobs: give her tls/clients/alice/"),
  handler: async (args) => {
    if (args.action === "init") {
      await initCerts(args.dir, args.host ?? []);
      if (args.json) printJson({ dir: args.dir, hosts: args.host ?? [] });
      else note(`clipfleet: CA, server certificate (${(args.host ?? []).join(", ")}) and admin identity in ${args.dir}; serve with \`clipfleet server --tls-dir ${args.dir}\``);
      return;
    }
    if (args.action === "server") {
      await issueServerCert(args.dir, args.host ?? []);
      if (args.json) printJson({ dir: args.dir, hosts: args.host ?? [] });
      else note(`clipfleet: new server certificate (${(args.host ?? []).join(", ")}) in ${args.dir}; restart the server to use it`);
      return;
    }
    if (!args.name) throw new InvalidArgumentError("--name: required for `certs issue`", "name");
    const role = parseRole(args.role);
    if (!role) throw new InvalidArgumentError(`--role: expected one of ${ROLES.join(", ")}, got ${JSON.stringify(args.role ?? "")}`, "role");
    const out = args.out ?? join(args.dir, "clients", args.name);
    await issueCert(args.dir, args.name, role, out);
    if (args.json) printJson({ name: args.name, role, dir: out });
    else note(`clipfleet: identity ${args.name} (${role}) in ${out}; use it with --tls-dir ${out} or CLIPFLEET_TLS_DIR=${out}`);
  },
});
