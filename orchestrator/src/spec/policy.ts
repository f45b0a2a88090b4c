/**
 * A server's policy for what a spec may reach, applied at admission after
 * the spec is valid. An operator's job runs code on the fleet by design (as a
 * Slurm user's job does); the policy keeps a spec from reaching further than
 * its own processes: environment variables that make other programs load
 * code (LD_PRELOAD, PYTHONSTARTUP, BROWSER, ...), interpreters the admin did
 * not name, and failure settings that would bench the fleet's nodes for
 * everyone (quarantine length and threshold are the fleet's; a spec may only
 * make them milder). `clipfleet run` on a user's own machine has no policy.
 */
import { InvalidArgumentError, type JobSpec } from "../domain/index.js";

/** What a server lets a spec set. */
export interface SpecPolicy {
  /** worker.env names allowed besides the defaults: exact names, or prefixes ending in `*` (`MYLAB_*`). */
  readonly allowEnv: readonly string[];
  /** Interpreters worker.python may name (exact paths or names); empty: worker.python is refused. */
  readonly allowPython: readonly string[];
  /** Longest node quarantine a spec may ask for (failure.quarantine_seconds). */
  readonly maxQuarantineSeconds: number;
  /** Fewest failures before quarantine a spec may ask for (failure.quarantine_after; 0, never, is always allowed). */
  readonly minQuarantineAfter: number;
}

/**
 * Names a spec may set by default: the knobs of the libraries a rank uses
 * (threads, collectives, CUDA, PyTorch, Hugging Face, experiment trackers),
 * locale and time zone.
 */
export const DEFAULT_ALLOWED_ENV: readonly string[] = [
  "NCCL_*", "GLOO_*", "OMP_*", "MKL_*", "OPENBLAS_*", "TORCH_*", "PYTORCH_*", "CUBLAS_*", "CUDNN_*",
  "CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_ORDER", "CUDA_MODULE_LOADING", "HF_*", "HUGGINGFACE_*", "TRANSFORMERS_*",
  "TOKENIZERS_PARALLELISM", "WANDB_*", "MLFLOW_*", "TZ", "LANG", "LC_*",
];

/**
 * Names that make a program load code or change what it runs, refused even
 * when a default pattern matches them (NCCL_NET_PLUGIN loads a library);
 * only an admin's --allow-env of the exact name lets one through.
 */
export const DENIED_ENV: readonly string[] = [
  "LD_*", "DYLD_*", "PYTHON*", "BROWSER", "PATH", "HOME", "SHELL", "BASH_ENV", "ENV", "IFS", "PERL5OPT", "PERL5LIB", "RUBYOPT",
  "NODE_OPTIONS", "GCONV_PATH", "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "NCCL_PROFILER_PLUGIN", "TORCH_EXTENSIONS_DIR",
];

/** The policy of a server started with no policy flags. */
export const DEFAULT_SPEC_POLICY: SpecPolicy = { allowEnv: [], allowPython: [], maxQuarantineSeconds: 600, minQuarantineAfter: 3 };

function matches(name: string, pattern: string): boolean {
  return pattern.endsWith("*") ? name.startsWith(pattern.slice(0, -1)) : name === pattern;
}

/** Whether a spec may set the environment variable `name` under `policy`. */
export function envAllowed(name: string, policy: SpecPolicy): boolean {
  if (policy.allowEnv.includes(name)) return true;
  if (DENIED_ENV.some((p) => matches(name, p))) return false;
  return [...DEFAULT_ALLOWED_ENV, ...policy.allowEnv].some((p) => matches(name, p));
}

/** Refuses a spec that reaches past `policy`, naming the field (INVALID_ARGUMENT, exit 2). */
export function checkSpecPolicy(spec: JobSpec, policy: SpecPolicy, where: string): void {
  for (const st of spec.stages) {
    const at = (field: string): string => `${where}: ${st.name === "main" ? "" : `stages.${st.name}.`}${field}`;
    for (const name of Object.keys(st.worker.env)) {
      if (!envAllowed(name, policy)) {
        throw new InvalidArgumentError(`${at(`worker.env.${name}`)}: not allowed by this server's policy (variables that load code are refused; an admin may allow a name with --allow-env)`, "worker.env");
      }
    }
    if (st.worker.python !== null && !policy.allowPython.includes(st.worker.python)) {
      throw new InvalidArgumentError(
        `${at("worker.python")}: ${JSON.stringify(st.worker.python)} is not an interpreter this server allows (${policy.allowPython.length > 0 ? policy.allowPython.join(", ") : "none: leave worker.python out"}; an admin adds one with --allow-python)`,
        "worker.python",
      );
    }
    const f = st.failure;
    if (f.quarantine_seconds > policy.maxQuarantineSeconds) {
      throw new InvalidArgumentError(`${at("failure.quarantine_seconds")}: ${f.quarantine_seconds} is longer than this server allows (${policy.maxQuarantineSeconds} s)`, "failure.quarantine_seconds");
    }
    if (f.quarantine_after !== 0 && f.quarantine_after < policy.minQuarantineAfter) {
      throw new InvalidArgumentError(
        `${at("failure.quarantine_after")}: ${f.quarantine_after} failures is fewer than this server allows (at least ${policy.minQuarantineAfter}, or 0: never quarantine)`,
        "failure.quarantine_after",
      );
    }
  }
}
