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
  Scheduler,
  type NodeStatus,
  type QuarantinePolicy,
  type ScheduleResult,
  type Waiting,
} from "./scheduler.js";
export { rankEnv, type Placement, type PlacementRequest, type RankPlacement } from "./placement.js";
