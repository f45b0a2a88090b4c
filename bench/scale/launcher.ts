/**
 * A launcher for the scale benchmark only: instead of starting a worker
 * process it hands the launch request's environment and token to a load
 * generator, which runs the rank as a simulated worker (a real gRPC client
 * of the worker gateway, no torch). Signals and exits travel over the same
 * IPC channel, so the job service's teardown works as with real processes.
 */
import type { ChildProcess } from "node:child_process";
import { freeLocalPort, type ExitInfo, type LaunchedProcess, type LaunchRequest, type Launcher } from "../../orchestrator/src/launcher/index.js";
import type { NodeSpec } from "../../orchestrator/src/domain/index.js";
import type { FromLoadgen, ToLoadgen } from "./protocol.js";

export class SimulatedLauncher implements Launcher {
  readonly kind = "local" as const;
  private readonly live = new Map<string, { resolve: (e: ExitInfo) => void; gen: ChildProcess; exited: Promise<ExitInfo> }>();

  /**
   * `gens`: load generator processes forked with an IPC channel; `route`
   * picks the one that runs a launch request's rank.
   */
  constructor(
    gens: readonly ChildProcess[],
    private readonly route: (req: LaunchRequest) => ChildProcess,
  ) {
    for (const gen of gens) {
      gen.on("message", (m: FromLoadgen) => {
        if (m.type !== "exit") return;
        const r = this.live.get(m.key);
        if (!r) return;
        this.live.delete(m.key);
        r.resolve({ code: m.code, signal: m.signal });
      });
      // A generator that dies takes its ranks with it (as a node would).
      gen.once("exit", () => {
        for (const [key, r] of [...this.live]) {
          if (r.gen !== gen) continue;
          this.live.delete(key);
          r.resolve({ code: null, signal: "SIGKILL", lost: "the load generator exited" });
        }
      });
    }
  }

  launch(req: LaunchRequest): Promise<LaunchedProcess> {
    const gen = this.route(req);
    if (!gen.pid || !gen.connected) return Promise.reject(new Error("the load generator is not running"));
    const key = `${req.jobId}/${req.stage}/${req.attempt}/${req.rank}`;
    let resolve: (e: ExitInfo) => void = () => undefined;
    const exited = new Promise<ExitInfo>((r) => (resolve = r));
    this.live.set(key, { resolve, gen, exited });
    void exited.then((e) => req.onExit(e));
    send(gen, { type: "launch", key, env: req.env, token: req.secrets.CLIPFLEET_TOKEN ?? "" });
    return Promise.resolve({
      // The generator's pid: a simulated rank has no process of its own.
      pid: gen.pid,
      exited,
      signal: (sig) => {
        send(gen, { type: "signal", key, signal: sig });
        return Promise.resolve();
      },
    });
  }

  freePort(_node: NodeSpec): Promise<number> {
    return freeLocalPort();
  }

  /** Stops every simulated rank still running and waits for their exits. */
  async close(): Promise<void> {
    const all = [...this.live.entries()];
    for (const [key, r] of all) send(r.gen, { type: "signal", key, signal: "SIGKILL" });
    await Promise.all(all.map(([, r]) => r.exited));
  }
}

function send(gen: ChildProcess, m: ToLoadgen): void {
  if (gen.connected) gen.send(m);
}
