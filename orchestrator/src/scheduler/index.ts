/** scheduler: the node inventory, gang placement of ranks on slots, the placement queue and node quarantine. */
export {
  didYouMean,
  HOST_KEY_POLICIES,
  LAUNCHER_KINDS,
  localInventory,
  parseInventory,
  type LocalProbe,
  type Node,
} from "./inventory.js";
export {
  DEFAULT_QUARANTINE,
  rankEnv,
  Scheduler,
  type NodeStatus,
  type Placement,
  type PlacementRequest,
  type QuarantinePolicy,
  type RankPlacement,
  type ScheduleResult,
  type Waiting,
} from "./scheduler.js";
