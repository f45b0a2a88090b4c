/** auth: who may call what: identities from client certificates, roles, the access log, TLS material, the fleet's CA. */
export { allows, changesState, METHOD_ROLES, parseRole, ROLES, type ControlMethod, type Role } from "./roles.js";
export { ANONYMOUS, authorize, IDENTITY_NAME, identityFromSubject, localIdentity, type Identity, type Subject } from "./identity.js";
export { AccessLog, type AccessRecord } from "./access-log.js";
export { loadClientTls, loadServerTls, type TlsFiles } from "./tls.js";
export { initCerts, issueCert, issueServerCert, subjectAltName } from "./certs.js";
