/**
 * The CLI's one way to find the job a command names: the orchestrator resolves
 * the reference (id, job name, unique id prefix: domain resolveJobRef) so it
 * stays right however many jobs there are; the command then uses the full id
 * for every further call.
 */
import type { ControlClient } from "../client/index.js";
import type { Job } from "../gen/clipfleet/v1/control.js";
import { note, type GlobalArgs } from "./context.js";

/**
 * The job `ref` names. On stderr: which job a name picked when several have
 * that name (always), and what a name or prefix picked (--verbose).
 */
export async function resolveJob(client: ControlClient, ref: string, args: Pick<GlobalArgs, "verbose">): Promise<Job> {
  const job = await client.getJob(ref);
  if (job.id === ref) return job;
  if (job.name === ref) {
    // Counted in the list a `clipfleet list` would show (the newest that fit in a reply): a hint, not the resolution.
    const { jobs, omitted } = await client.listJobs([], 0);
    const same = jobs.filter((j) => j.name === ref).length;
    if (same > 1) note(`clipfleet: ${ref} is ${job.id}, the newest of ${same}${omitted > 0 ? " or more" : ""} jobs of that name (give an id for another)`);
    else if (args.verbose) note(`clipfleet: ${ref} is ${job.id} (the job of that name)`);
  } else if (args.verbose) {
    note(`clipfleet: ${ref} is ${job.id} (id prefix)`);
  }
  return job;
}
