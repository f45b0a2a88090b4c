/**
 * Who may open the dashboard. Two ways in, one per kind of orchestrator:
 * a one-time secret in the printed URL (as Jupyter does), traded at once for
 * an HttpOnly, SameSite=Strict cookie so reloads work; or, on a server with
 * --tls-dir, a client certificate signed by the fleet CA naming a role of
 * viewer or above (the control API's rule: the dashboard calls only what a
 * viewer may). Pure decisions; server.ts applies them.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { allows, identityFromSubject, type Identity, type Subject } from "../auth/index.js";

/** The cookie that carries the token after the first visit. */
export const TOKEN_COOKIE = "clipfleet_ui";
/** Longest token or cookie header looked at; anything longer is refused unread. */
export const MAX_TOKEN_CHARS = 256;
const MAX_COOKIE_HEADER = 8192;

/** A fresh secret for one orchestrator's dashboard (192 bits, URL-safe). */
export function newToken(): string {
  return randomBytes(24).toString("base64url");
}

/** Constant-time comparison (of digests, so neither length nor content leaks through timing). */
export function tokenMatches(expected: string, given: string | null | undefined): boolean {
  if (typeof given !== "string" || given.length === 0 || given.length > MAX_TOKEN_CHARS) return false;
  const a = createHash("sha256").update(expected, "utf8").digest();
  const b = createHash("sha256").update(given, "utf8").digest();
  return timingSafeEqual(a, b);
}

/** The dashboard cookie's value in a Cookie header, or null (an oversized header is not parsed). */
export function cookieToken(header: string | undefined): string | null {
  if (!header || header.length > MAX_COOKIE_HEADER) return null;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === TOKEN_COOKIE) return part.slice(eq + 1).trim();
  }
  return null;
}

/** The Set-Cookie value that keeps the token (Secure when served over HTTPS). */
export function tokenCookie(token: string, secure: boolean): string {
  return `${TOKEN_COOKIE}=${token}; HttpOnly; SameSite=Strict; Path=/${secure ? "; Secure" : ""}`;
}

/** How a dashboard authenticates its visitors. */
export type AccessMode = { readonly kind: "token"; readonly token: string } | { readonly kind: "certificate" };

/** What a request shows about its caller. */
export interface RequestCredentials {
  /** `token` of the query string, if any. */
  readonly queryToken: string | null;
  readonly cookieHeader: string | undefined;
  /** TLS only: whether the client certificate verified against the fleet CA, and its subject. */
  readonly certificate: { readonly authorized: boolean; readonly subject: Subject | undefined } | null;
}

/** The verdict on a request: let it in (maybe setting the cookie first), or refuse it with a status and a reason. */
export type AccessDecision =
  | { readonly allow: true; readonly who: string; readonly setCookie: boolean }
  | { readonly allow: false; readonly status: 401 | 403; readonly reason: string };

/** Decides whether a request may see the dashboard. */
export function decideAccess(mode: AccessMode, creds: RequestCredentials): AccessDecision {
  if (mode.kind === "certificate") {
    const cert = creds.certificate;
    if (!cert || cert.subject === undefined || Object.keys(cert.subject).length === 0) {
      return { allow: false, status: 401, reason: "this dashboard needs a client certificate of the fleet CA (clipfleet certs issue --role viewer)" };
    }
    if (!cert.authorized) return { allow: false, status: 401, reason: "the client certificate is not signed by this fleet's CA" };
    const identity: Identity | null = identityFromSubject(cert.subject);
    if (!identity) return { allow: false, status: 403, reason: "the client certificate names no clipfleet name (CN) and role (O)" };
    if (!allows(identity.role, "listJobs")) return { allow: false, status: 403, reason: `${identity.name} may not view jobs` };
    return { allow: true, who: identity.name, setCookie: false };
  }
  if (tokenMatches(mode.token, creds.queryToken)) return { allow: true, who: "token", setCookie: true };
  if (tokenMatches(mode.token, cookieToken(creds.cookieHeader))) return { allow: true, who: "token", setCookie: false };
  return {
    allow: false,
    status: creds.queryToken !== null ? 403 : 401,
    reason: creds.queryToken !== null ? "the token in this URL is not this dashboard's (it changes each time the orchestrator starts)" : "open the dashboard with the URL clipfleet printed (it carries a token)",
  };
}
