/** jobs: the job lifecycle, the one place that drives transitions, restarts and failure handling. */
export { JobLedger } from "./ledger.js";
export { JobLogs, type LogEntry } from "./logs.js";
export { transition, note, RECENT_EVENTS_KEPT } from "./lifecycle.js";
export {
  backoffMs,
  causeOfExit,
  causeOfPreemptExit,
  causeOfReport,
  decide,
  decidePreemption,
  describeCause,
  failureNode,
  hangBoundSeconds,
  isSecondary,
  percentile,
  repeatedUserError,
  type Decision,
  type FailureCause,
} from "./policy.js";
export { JobService } from "./service.js";
export type { JobServiceDeps } from "./context.js";
export { problemOf, type AdmissionCheck, type AdmissionProblem, type StageData, type SubmitInput } from "./admission.js";
export { ORCHESTRATOR_VERSION } from "./gateway.js";
export { interruptedView, newJobRecord } from "./records.js";
export { confined as confinedFile } from "./commit.js";
export { Attempt, nextPhase, SETTLE_MS, type AttemptEvent, type AttemptPhase, type StopAt } from "./attempt.js";
export type { RankRuntime, SessionHandle } from "./runtime.js";
export { appendStepPoint, readStepHistory, stepHistoryPath, stepPointOf, thinPoints, type StepPointRecord } from "./step-history.js";
export { checkpointRoots, type DeleteResult } from "./deletion.js";
