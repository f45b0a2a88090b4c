/** events: job events fanned out in-process and, optionally, over NATS. */
export {
  decodeEvent,
  eventSubject,
  reportToStderr,
  type ErrorReporter,
  type EventBus,
  type EventHandler,
  type Unsubscribe,
} from "./bus.js";
export { InProcessEventBus } from "./in-process.js";
export { NatsEventBus, type NatsEventBusOptions } from "./nats.js";
export { TeeEventBus } from "./tee.js";
export { openEventBus } from "./open.js";
