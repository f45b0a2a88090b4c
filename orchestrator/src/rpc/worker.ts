/**
 * WorkerGateway over grpc-js: decode, authenticate by metadata, call the job
 * service, encode. No decisions here.
 */
import type { Metadata, ServerDuplexStream } from "@grpc/grpc-js";
import type { Command, WorkerGatewayServer, WorkerMessage } from "../gen/clipfleet/v1/worker.js";
import type { JobService } from "../jobs/index.js";
import { toServiceError } from "./status.js";

/** The bearer token of a call, from `authorization: Bearer <token>`. */
export function bearerToken(md: Metadata): string | null {
  const v = md.get("authorization")[0];
  if (typeof v !== "string") return null;
  const m = /^Bearer\s+(\S+)$/i.exec(v);
  return m?.[1] ?? null;
}

export function workerGateway(service: JobService): WorkerGatewayServer {
  return {
    register(call, callback) {
      try {
        callback(null, service.register(bearerToken(call.metadata), call.request));
      } catch (err) {
        callback(toServiceError(err));
      }
    },
    getPlan(call, callback) {
      try {
        callback(null, service.plan(bearerToken(call.metadata), call.request));
      } catch (err) {
        callback(toServiceError(err));
      }
    },
    getShards(call, callback) {
      try {
        callback(null, service.shards(bearerToken(call.metadata), call.request));
      } catch (err) {
        callback(toServiceError(err));
      }
    },
    lease(call, callback) {
      service.lease(bearerToken(call.metadata), call.request).then(
        (reply) => callback(null, reply),
        (err: unknown) => callback(toServiceError(err)),
      );
    },
    session(call: ServerDuplexStream<WorkerMessage, Command>) {
      let writable = true;
      let closed = false;
      const binding = service.openSession(bearerToken(call.metadata), {
        send: (cmd) => {
          if (writable) call.write(cmd);
        },
        end: () => {
          if (!writable) return;
          writable = false;
          call.end();
        },
      });
      const close = (why: string): void => {
        if (closed) return;
        closed = true;
        writable = false;
        binding.onClose(why);
      };
      call.on("data", (msg: WorkerMessage) => {
        if (closed) return;
        try {
          binding.onMessage(msg);
        } catch (err) {
          writable = false;
          call.emit("error", toServiceError(err));
        }
      });
      call.on("end", () => {
        const wasWritable = writable;
        close("the worker closed it");
        if (wasWritable) call.end();
      });
      call.on("cancelled", () => close("connection lost"));
      call.on("error", () => close("stream error"));
    },
  };
}
