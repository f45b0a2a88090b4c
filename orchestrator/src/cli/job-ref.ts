/**
 * The CLI's one way to find the job a command names: the orchestrator resolves
 * the reference (id, job name, unique id prefix: domain resolveJobRef) so it
 * stays right however many jobs there are; the command then uses the full id
 * for every further call.
 */
import type { ControlClient } from "../client/index.js";
import type { Job } from "../gen/clipfleet/v1/control.js";
import { note, type GlobalArgs } from "./context.js";

/** The job `ref` names; --verbose says which job a name or prefix picked (on stderr). */
export async function resolveJob(client: ControlClient, ref: string, args: Pick<GlobalArgs, "verbose">): Promise<Job> {
  const job = await client.getJob(ref);
  if (args.verbose && job.id !== ref) note(`clipfleet: ${ref} is ${job.id}${job.name === ref ? " (the newest job of that name)" : " (id prefix)"}`);
  return job;
}
