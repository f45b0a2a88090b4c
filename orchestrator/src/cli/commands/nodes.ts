/** `clipfleet nodes`: the fleet as the scheduler sees it. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { connectOrOpen } from "../offline.js";
import { table } from "../render.js";

export const nodesCommand: Command = (deps) => ({
  command: "nodes",
  describe: "List nodes with their slots, free slots and state",
  builder: (y) => y.example("$0 nodes --server 127.0.0.1:7070", "the server's fleet") as never,
  handler: async (args) => {
    await connectOrOpen(deps, args, async (client) => {
      const { nodes } = await client.nodes();
      if (args.json) {
        printJson(nodes);
        return;
      }
      out(
        table(
          ["NODE", "HOST", "LAUNCHER", "SLOTS", "FREE", "GPUS", "STATE", "LABELS"],
          nodes.map((n) => [
            n.name,
            n.host,
            n.launcher,
            String(n.slots),
            String(n.freeSlots),
            String(n.gpus),
            n.state + (n.quarantinedUntilMs ? ` until ${new Date(Number(n.quarantinedUntilMs)).toISOString().slice(11, 19)}` : ""),
            Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(","),
          ]),
        ),
      );
    });
  },
});
