/** rpc: thin grpc-js servers over the job service: the control API and the worker gateway, each on its own address. */
export { CONTROL_MAX_RECEIVE_BYTES, startControlServer, startWorkerServer, WORKER_MAX_RECEIVE_BYTES, type RpcServer } from "./server.js";
export { type ControlSecurity, type ServerInfoSource } from "./control.js";
export { jobToProto, eventToProto, stateFromProto, stateToProto } from "./convert.js";
export { toServiceError } from "./status.js";
