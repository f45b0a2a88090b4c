/** `clipfleet cordon NODE` / `uncordon NODE`: take a node out of placement, or put it back. */
import type { Command } from "../command.js";
import { out, printJson } from "../context.js";
import { connectLive } from "../offline.js";

function schedulable(verb: "cordon" | "uncordon"): Command<{ node: string }> {
  const on = verb === "uncordon";
  return () => ({
    command: `${verb} <node>`,
    describe: on ? "Put a cordoned node back into placement" : "Take a node out of placement: it gets no new ranks (running ones are not touched)",
    builder: (y) =>
      y
        .positional("node", { type: "string", demandOption: true, describe: "node name from the inventory" })
        .example(`$0 ${verb} gpu-07 --server 127.0.0.1:7070`, on ? "the node is back in service" : "before maintenance on gpu-07"),
    handler: async (args) => {
      const client = await connectLive(args);
      try {
        const n = await client.setNodeSchedulable(args.node, on);
        if (args.json) printJson(n);
        else out(`node ${n.name}: ${n.state} (${n.freeSlots}/${n.slots} slots free)`);
      } finally {
        client.close();
      }
    },
  });
}

export const cordonCommand = schedulable("cordon");
export const uncordonCommand = schedulable("uncordon");
