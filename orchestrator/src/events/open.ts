/** Turns the `--nats` option into the orchestrator's event bus. */
import { InvalidArgumentError } from "../domain/index.js";
import { reportToStderr, type ErrorReporter, type EventBus } from "./bus.js";
import { InProcessEventBus } from "./in-process.js";
import { NatsEventBus } from "./nats.js";
import { TeeEventBus } from "./tee.js";

/**
 * Without a URL: the in-process bus alone. With `nats://host:port` (or a
 * comma-separated list): the in-process bus teed to NATS, so local watchers
 * and outside subscribers both see every event.
 */
export async function openEventBus(natsUrl: string | null, onError: ErrorReporter = reportToStderr): Promise<EventBus> {
  const local = new InProcessEventBus(onError);
  if (natsUrl === null || natsUrl === "") return local;
  if (!natsUrl.startsWith("nats://")) {
    throw new InvalidArgumentError(`--nats: expected nats://host:port, got ${JSON.stringify(natsUrl)}`, "nats");
  }
  return new TeeEventBus(local, await NatsEventBus.connect(natsUrl, { onError }));
}
