/** The orchestrator's gRPC server: WorkerGateway and ControlService on one port. */
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { EnvironmentError } from "../domain/index.js";
import { ControlServiceService } from "../gen/clipfleet/v1/control.js";
import { WorkerGatewayService } from "../gen/clipfleet/v1/worker.js";
import type { JobService } from "../jobs/index.js";
import { controlService, type ServerInfoSource } from "./control.js";
import { workerGateway } from "./worker.js";

export interface RpcServer {
  /** The port actually bound (listen may have asked for 0). */
  readonly port: number;
  close(): Promise<void>;
}

/** Binds `listen` ("host:port", port 0 for any) and serves both services. */
export async function startRpcServer(listen: string, service: JobService, info: ServerInfoSource): Promise<RpcServer> {
  const server = new Server({
    // Notice dead peers (a node that vanished without closing its connection).
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 1_000,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
  server.addService(WorkerGatewayService, workerGateway(service));
  server.addService(ControlServiceService, controlService(service, info));
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(listen, ServerCredentials.createInsecure(), (err, p) => {
      if (err) reject(new EnvironmentError(`cannot listen on ${listen}: ${err.message}`));
      else resolve(p);
    });
  });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
