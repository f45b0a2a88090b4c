/** Turns the `--nats` option into the orchestrator's event bus. */
import { NO_NATS_ACCESS, natsTarget, type NatsAccess } from "../nats/index.js";
import { reportToStderr, type ErrorReporter, type EventBus } from "./bus.js";
import { InProcessEventBus } from "./in-process.js";
import { NatsEventBus } from "./nats.js";
import { TeeEventBus } from "./tee.js";

/**
 * Without a URL: the in-process bus alone. With `nats://host:port` or
 * `tls://host:port` (or a comma-separated list): the in-process bus teed to
 * NATS, so local watchers and outside subscribers both see every event.
 * `access` is the --nats-* TLS files and credential.
 */
export async function openEventBus(natsUrl: string | null, access: NatsAccess = NO_NATS_ACCESS, onError: ErrorReporter = reportToStderr): Promise<EventBus> {
  if (natsUrl === null || natsUrl === "") return new InProcessEventBus(onError);
  const target = natsTarget(natsUrl, "nats", access);
  return new TeeEventBus(new InProcessEventBus(onError), await NatsEventBus.connect(target, { onError }));
}
