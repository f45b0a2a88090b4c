/** nats: how the orchestrator reaches NATS (servers, TLS, credentials), shared by the job store and the event bus. */
export { loadNatsAccess, NO_NATS_ACCESS, type NatsAccess, type NatsAccessFlags, type NatsCredential, type NatsTlsFiles } from "./access.js";
export { connectError, connectNats, natsTarget, redactNatsUrl, type NatsTarget } from "./target.js";
