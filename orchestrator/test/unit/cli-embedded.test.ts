/**
 * Which certificates an orchestrator takes from --tls-dir or
 * CLIPFLEET_TLS_DIR: a server takes the folder it is given; `clipfleet run`
 * takes the environment's folder only when it holds a server certificate,
 * since CLIPFLEET_TLS_DIR often names a user's client identity for a remote
 * server, and a local run must not fail for it.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, describe, it } from "node:test";
import { embedOptions, type OrchestratorArgs } from "../../src/cli/embedded.js";
import type { GlobalArgs } from "../../src/cli/context.js";

const tmp = mkdtempSync(join(tmpdir(), "cli-embedded-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A folder with the named (empty) files: only their presence matters here. */
function folder(name: string, files: string[]): string {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  for (const f of files) writeFileSync(join(dir, f), "");
  return dir;
}

const serverDir = folder("server", ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"]);
const clientDir = folder("client", ["ca.crt", "client.crt", "client.key"]);

function args(extra: Partial<GlobalArgs & OrchestratorArgs> = {}): GlobalArgs & OrchestratorArgs {
  return { "state-dir": join(tmp, "state"), json: false, verbose: false, listen: "127.0.0.1:0", "metrics-retention": 3600, ...extra };
}

void describe("embedOptions: TLS folders", () => {
  const saved = process.env.CLIPFLEET_TLS_DIR;
  afterEach(() => {
    if (saved === undefined) delete process.env.CLIPFLEET_TLS_DIR;
    else process.env.CLIPFLEET_TLS_DIR = saved;
  });

  void it("clipfleet run: a client identity in CLIPFLEET_TLS_DIR is left to the client side; a server's folder serves TLS", () => {
    process.env.CLIPFLEET_TLS_DIR = clientDir;
    assert.equal(embedOptions(args(), true).tlsDir, null);
    process.env.CLIPFLEET_TLS_DIR = serverDir;
    assert.equal(embedOptions(args(), true).tlsDir, serverDir);
    process.env.CLIPFLEET_TLS_DIR = "";
    assert.equal(embedOptions(args(), true).tlsDir, null, "empty means none");
  });

  void it("an explicit --tls-dir is taken as given (a folder without server files then fails to load, saying so)", () => {
    process.env.CLIPFLEET_TLS_DIR = serverDir;
    assert.equal(embedOptions(args({ "tls-dir": clientDir }), true).tlsDir, clientDir);
    assert.equal(embedOptions(args({ "tls-dir": clientDir }), false).tlsDir, clientDir);
  });

  void it("clipfleet server takes CLIPFLEET_TLS_DIR as its own", () => {
    process.env.CLIPFLEET_TLS_DIR = serverDir;
    assert.equal(embedOptions(args(), false).tlsDir, serverDir);
  });
});

void describe("embedOptions: the dashboard's address", () => {
  void it("run --ui: 127.0.0.1, any port, or a loopback --ui-listen; --ui-listen alone or off loopback is refused", () => {
    assert.equal(embedOptions(args(), true).uiListen, null);
    assert.equal(embedOptions(args({ ui: true }), true).uiListen, "127.0.0.1:0");
    assert.equal(embedOptions(args({ ui: true, "ui-listen": "127.0.0.1:8888" }), true).uiListen, "127.0.0.1:8888");
    assert.throws(() => embedOptions(args({ "ui-listen": "127.0.0.1:8888" }), true), /--ui-listen: has no effect without --ui/);
    assert.throws(() => embedOptions(args({ ui: true, "ui-listen": "0.0.0.0:8888" }), true), /--ui-listen: 0\.0\.0\.0:8888 is reachable from other machines/);
  });

  void it("server --ui-listen: off loopback only with --tls-dir (or --insecure); --ui is run's flag", () => {
    const server = (extra: Partial<GlobalArgs & OrchestratorArgs>) => embedOptions(args({ listen: "127.0.0.1:7070", "tls-dir": "", ...extra }), false);
    assert.equal(server({ "ui-listen": "127.0.0.1:8080" }).uiListen, "127.0.0.1:8080");
    assert.throws(() => server({ "ui-listen": "0.0.0.0:8080" }), /--listen: 0\.0\.0\.0:8080 is reachable from other machines/);
    assert.equal(server({ "ui-listen": "0.0.0.0:8080", "tls-dir": serverDir }).uiListen, "0.0.0.0:8080");
    assert.equal(server({ "ui-listen": "0.0.0.0:8080", insecure: true }).uiListen, "0.0.0.0:8080");
    assert.throws(() => server({ ui: true }), /--ui: a server's dashboard is --ui-listen HOST:PORT/);
  });
});
