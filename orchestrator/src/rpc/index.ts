/** rpc: thin grpc-js servers over the job service. */
export { startRpcServer, type RpcServer } from "./server.js";
export { type ServerInfoSource } from "./control.js";
export { jobToProto, eventToProto, stateFromProto, stateToProto } from "./convert.js";
export { toServiceError } from "./status.js";
