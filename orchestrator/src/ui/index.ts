/** ui: the read-only web dashboard (docs/ui.md): pages, JSON and Server-Sent Events over node's http(s), a thin transport over jobs. */
export { serveDashboard, refusedPage, DEFAULT_LIMITS, ASSETS_DIR, type Dashboard, type DashboardLimits, type DashboardOptions } from "./server.js";
export { cookieToken, decideAccess, newToken, tokenCookie, tokenMatches, TOKEN_COOKIE, type AccessDecision, type AccessMode, type RequestCredentials } from "./access.js";
export { sseFrame, SseChannel, SSE_PING } from "./sse.js";
export { route, isRefusal, withoutToken, MAX_URL_CHARS, MAX_QUERY_PARAMS, MAX_HISTORY_POINTS, MAX_LOG_TAIL, type Route, type Refusal } from "./request.js";
export { JsonlTail, MAX_TAIL_READ_BYTES } from "./tail.js";
export { jobList, jobSummary, jobDetail, nodeList, MAX_LISTED_JOBS, type JobSummary } from "./views.js";
