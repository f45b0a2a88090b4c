/**
 * `clipfleet manifests sign|verify DIR...`: an admin's offline tools for
 * signed checkpoint manifests, run on the orchestrator's machine. `sign`
 * adopts checkpoints this orchestrator will not use as they are (committed
 * before manifests were signed, or copied from another orchestrator): their
 * files are hashed again and must match the manifest, then manifest.sig is
 * written with the state dir's key. `verify` checks the signature (with the
 * state dir's key or any public key file) and every file's digest.
 */
import { resolve } from "node:path";
import { readForeignCheckpoint, readPublicKey, readSigningKey, readVerifiedManifest, signManifestBytes, verifyCheckpoint, type ManifestVerifier } from "../../checkpoints/index.js";
import { InvalidArgumentError } from "../../domain/index.js";
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";

interface ManifestsArgs {
  action: string;
  dirs: string[];
  "public-key"?: string;
}

export const manifestsCommand: Command<ManifestsArgs> = () => ({
  command: "manifests <action> <dirs..>",
  describe: "Sign (adopt) or verify checkpoint directories' manifests with the orchestrator's key in --state-dir (offline, on its machine)",
  builder: (y) =>
    y
      .positional("action", { type: "string", choices: ["sign", "verify"], demandOption: true, describe: "sign: hash the files again and sign the manifest if they match it; verify: check the signature and every file" })
      .positional("dirs", { type: "string", array: true, demandOption: true, describe: "checkpoint directories (each holds manifest.json)" })
      .option("public-key", { type: "string", describe: "verify: check with this public key file (another server's keys/manifest-signing.pub) instead of --state-dir's key" })
      .example("$0 manifests sign state/checkpoints/j-20261123-101500-a1b2c3/main/step-00000100-a1 --state-dir state", "adopt a checkpoint committed before manifests were signed")
      .example("$0 manifests verify DIR --public-key manifest-signing.pub", "check a checkpoint against a server's public key"),
  handler: async (args) => {
    const results: { dir: string; files: number; fingerprint: string }[] = [];
    if (args.action === "sign") {
      const key = readSigningKey(args["state-dir"]);
      for (const dir of args.dirs.map((d) => resolve(d))) {
        // The exact bytes are signed, so the digests the record of a job already holds stay valid.
        const manifest = await readForeignCheckpoint(dir, "dirs");
        await signManifestBytes(dir, manifest.bytes, key);
        results.push({ dir, files: manifest.files.length, fingerprint: key.fingerprint });
        if (!args.json) out(`${dir}: signed with ${key.fingerprint} (${manifest.files.length} files hashed, all match the manifest)`);
      }
    } else {
      const key: ManifestVerifier = args["public-key"] ? readPublicKey(args["public-key"]) : readSigningKey(args["state-dir"]);
      for (const dir of args.dirs.map((d) => resolve(d))) {
        const verified = readVerifiedManifest(dir, key);
        if (verified === null) throw new InvalidArgumentError(`${dir}: no manifest.json: not a committed checkpoint directory`, "dirs");
        const problem = await verifyCheckpoint({ dir, files: verified.manifest.files });
        if (problem) throw new InvalidArgumentError(`${dir}: the signature verifies, but the files do not match the manifest: ${problem}`, "dirs");
        results.push({ dir, files: verified.manifest.files.length, fingerprint: key.fingerprint });
        if (!args.json) out(`${dir}: OK, signed with ${key.fingerprint}; ${verified.manifest.files.length} files match the manifest`);
      }
    }
    if (args.json) printJson(results);
  },
});
