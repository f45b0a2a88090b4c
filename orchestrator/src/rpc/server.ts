/**
 * The orchestrator's two gRPC servers: ControlService for users on one
 * address, WorkerGateway for ranks on another, so a firewall, TLS settings
 * and message limits fit each audience. The control server of an embedded
 * orchestrator listens on a Unix socket only its user can open.
 */
import { chmodSync, rmSync } from "node:fs";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import type { TlsFiles } from "../auth/index.js";
import { EnvironmentError } from "../domain/index.js";
import { ControlServiceService } from "../gen/clipfleet/v1/control.js";
import { WorkerGatewayService } from "../gen/clipfleet/v1/worker.js";
import type { JobService } from "../jobs/index.js";
import { controlService, type ControlSecurity, type ServerInfoSource } from "./control.js";
import { workerGateway } from "./worker.js";

/**
 * Largest request each port takes: a spec is at most 1 MiB (the CLI and
 * admission check it), so the control port needs little more; ranks send
 * step reports, checkpoint file lists and failure reports.
 */
export const CONTROL_MAX_RECEIVE_BYTES = 4 * 1024 * 1024;
export const WORKER_MAX_RECEIVE_BYTES = 16 * 1024 * 1024;

export interface RpcServer {
  /** The port actually bound (listen may have asked for 0); 0 for a Unix socket. */
  readonly port: number;
  /** What clients dial: host:port, or unix:PATH. */
  readonly address: string;
  close(): Promise<void>;
}

function newServer(maxReceive: number): Server {
  return new Server({
    // Notice dead peers (a node that vanished without closing its connection).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 1_000,
    "grpc.max_receive_message_length": maxReceive,
  });
}

/** Server credentials: TLS with this server's certificate (client certificates required when `mutual`), or none. */
function credentialsOf(tls: TlsFiles | null, mutual: boolean): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(tls.ca, [{ private_key: tls.key, cert_chain: tls.cert }], mutual);
}

async function bind(server: Server, listen: string, creds: ServerCredentials): Promise<RpcServer> {
  const socket = listen.startsWith("unix:") ? listen.slice("unix:".length) : null;
  // A socket file left by a process that died: the name is this process's own.
  if (socket) rmSync(socket, { force: true });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(listen, creds, (err, p) => {
      if (err) reject(new EnvironmentError(`cannot listen on ${listen}: ${err.message}`));
      else resolve(p);
    });
  });
  if (socket) chmodSync(socket, 0o600);
  const host = listen.replace(/:\d+$/, "");
  return {
    port,
    address: socket ? listen : `${host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          if (socket) rmSync(socket, { force: true });
          resolve();
        });
      }),
  };
}

/** Serves ControlService on `listen` (host:port, or unix:PATH); over mutual TLS when `tls` is given. */
export function startControlServer(listen: string, service: JobService, info: ServerInfoSource, security: Omit<ControlSecurity, "tls">, tls: TlsFiles | null): Promise<RpcServer> {
  const server = newServer(CONTROL_MAX_RECEIVE_BYTES);
  server.addService(ControlServiceService, controlService(service, info, { ...security, tls: tls !== null }));
  return bind(server, listen, credentialsOf(tls, true));
}

/** Serves WorkerGateway on `listen`; over TLS when `tls` is given (ranks authenticate with their job token). */
export function startWorkerServer(listen: string, service: JobService, tls: TlsFiles | null): Promise<RpcServer> {
  const server = newServer(WORKER_MAX_RECEIVE_BYTES);
  server.addService(WorkerGatewayService, workerGateway(service));
  return bind(server, listen, credentialsOf(tls, false));
}
