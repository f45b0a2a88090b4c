/**
 * Who is calling. Over mutual TLS the identity is the client certificate's:
 * its CN is the name and its O the role (as Kubernetes reads groups from O),
 * both written by `clipfleet certs issue`. Without TLS there is no caller to
 * tell apart: the local socket of an embedded orchestrator is the user's own
 * (mode 0600), and an `--insecure` server trusts whoever reaches it.
 */
import { userInfo } from "node:os";
import { PermissionDeniedError, UnauthenticatedError } from "../domain/index.js";
import { allows, METHOD_ROLES, parseRole, type ControlMethod, type Role } from "./roles.js";

/** An authenticated caller. */
export interface Identity {
  readonly name: string;
  readonly role: Role;
  /** How it was established: a client certificate, the owner of the local socket, or nobody checked (--insecure). */
  readonly via: "certificate" | "local" | "insecure";
}

/** Names a certificate may carry: letters, digits and . _ @ -, at most 64. */
export const IDENTITY_NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

/** The user who owns an embedded orchestrator's socket. */
export function localIdentity(): Identity {
  let user = "user";
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (a container): the uid is all there is
  }
  return { name: `local:${user}`, role: "admin", via: "local" };
}

/** Whoever reaches an --insecure server. */
export const ANONYMOUS: Identity = { name: "anonymous", role: "admin", via: "insecure" };

/** A certificate subject's fields as Node's tls gives them. */
export type Subject = Readonly<Record<string, string | string[] | undefined>>;

/** The identity a client certificate's subject names, or null when it names no valid name and role. */
export function identityFromSubject(subject: Subject | undefined): Identity | null {
  const one = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? (v.length === 1 ? v[0] : undefined) : v);
  const name = one(subject?.CN);
  const role = parseRole(one(subject?.O));
  if (!name || !IDENTITY_NAME.test(name) || !role) return null;
  return { name, role, via: "certificate" };
}

/** The caller, allowed to make this call; UNAUTHENTICATED or PERMISSION_DENIED (naming the role needed) otherwise. */
export function authorize(identity: Identity | null, method: ControlMethod): Identity {
  if (!identity) throw new UnauthenticatedError("no client identity: the certificate names no clipfleet name (CN) and role (O)");
  if (!allows(identity.role, method)) {
    throw new PermissionDeniedError(`permission denied: ${method} needs role ${METHOD_ROLES[method]}; ${identity.name} is ${/^[aeiou]/.test(identity.role) ? "an" : "a"} ${identity.role}`);
  }
  return identity;
}
