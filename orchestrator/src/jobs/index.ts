/** jobs: the job lifecycle, the one place that drives transitions, restarts and failure handling. */
export { JobLedger } from "./ledger.js";
export { JobLogs, type LogEntry } from "./logs.js";
export { transition, note, RECENT_EVENTS_KEPT } from "./lifecycle.js";
export { backoffMs, decide, describeCause, hangBoundSeconds, percentile, repeatedUserError, type Decision, type FailureCause } from "./policy.js";
export { JobService, ORCHESTRATOR_VERSION, allowedWorldSizes, newJobRecord, type JobServiceDeps, type SubmitInput } from "./service.js";
export type { AttemptRuntime, RankRuntime, SessionHandle } from "./runtime.js";
export { appendStepPoint, readStepHistory, stepHistoryPath, stepPointOf, thinPoints, type StepPointRecord } from "./step-history.js";
