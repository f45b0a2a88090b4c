// clipfleet dashboard: plain JavaScript, no framework. Every page reads JSON
// and follows Server-Sent Events from the orchestrator; nothing here can
// change a job (the server has no handler that would). Text from jobs and
// logs is only ever set as textContent, never parsed as HTML.
"use strict";

(function () {
  const main = document.getElementById("main");
  const liveBadge = document.getElementById("live");

  // ---------------------------------------------------------------- helpers

  /** Builds an element: h("td", {class: "num"}, "3", child...). */
  function h(tag, attrs) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "onclick" || k === "oninput" || k === "onchange") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (let i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function append(el, c) {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) c.forEach((x) => append(el, x));
    else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  /** Metric names in reading order: R@1, R@5, R@10 (numbers compared as numbers, not as text). */
  const collator = new Intl.Collator("en", { numeric: true });
  function naturalOrder(a, b) { return collator.compare(a, b); }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function badge(state, prefix) { return h("span", { class: "badge " + (prefix || "s-") + state }, state); }
  function fmtNum(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "-";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return v.toFixed(digits === undefined ? (a >= 100 ? 1 : a >= 1 ? 3 : 4) : digits);
  }
  function ago(ms) {
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return Math.round(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.round((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.round((s % 86400) / 3600) + "h";
  }
  function clock(ms) { return ms ? new Date(ms).toLocaleTimeString() : "-"; }
  function dur(ms) { return ms > 0 ? ago(Date.now() - ms) : "-"; }
  function bytes(n) { return n >= 1e9 ? (n / 1e9).toFixed(2) + " GB" : n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : n >= 1e3 ? (n / 1e3).toFixed(1) + " kB" : n + " B"; }
  function progressBar(step, total) {
    const pct = total > 0 ? Math.min(100, (100 * step) / total) : 0;
    return h("div", { class: "bar", title: step + " / " + total }, h("span", { style: "width:" + pct.toFixed(1) + "%" }));
  }
  async function getJson(path) {
    const r = await fetch(path, { credentials: "same-origin" });
    if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
    return r.json();
  }

  /** An EventSource whose state shows in the header; handlers by event name. */
  function follow(path, handlers) {
    const es = new EventSource(path);
    es.onopen = () => { liveBadge.textContent = "live"; liveBadge.className = "live on"; };
    es.onerror = () => { liveBadge.textContent = "reconnecting"; liveBadge.className = "live off"; };
    for (const [name, fn] of Object.entries(handlers)) es.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
    return es;
  }

  function markNav(which) {
    document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === which));
  }

  // ---------------------------------------------------------------- jobs page

  function jobsPage() {
    markNav("jobs");
    document.title = "clipfleet: jobs";
    const q = h("input", { type: "search", placeholder: "filter by name, id or owner", id: "filter" });
    const stateSel = h("select", { id: "state-filter" }, ["all states", "active", "RUNNING", "PENDING", "RESTARTING", "SUCCEEDED", "FAILED", "CANCELLED"].map((s) => h("option", { value: s }, s)));
    const compareBtn = h("button", { class: "primary", disabled: true, onclick: () => { location.href = "/compare?jobs=" + [...selected].join(","); } }, "Compare selected");
    const summary = h("div", { class: "summary" });
    const body = h("tbody", { id: "jobs" });
    const selected = new Set();
    let jobs = [];
    const render = () => {
      const text = q.value.trim().toLowerCase();
      const st = stateSel.value;
      const active = (s) => !["SUCCEEDED", "FAILED", "CANCELLED"].includes(s);
      const shown = jobs.filter((j) => (!text || (j.name + " " + j.id + " " + j.owner).toLowerCase().includes(text)) && (st === "all states" || (st === "active" ? active(j.state) : j.state === st)));
      clear(summary);
      const count = (f) => jobs.filter(f).length;
      append(summary, [
        h("div", { class: "panel" }, h("b", {}, count((j) => j.state === "RUNNING")), "running"),
        h("div", { class: "panel" }, h("b", {}, count((j) => j.state === "PENDING")), "pending"),
        h("div", { class: "panel" }, h("b", {}, count((j) => j.state === "SUCCEEDED")), "succeeded"),
        h("div", { class: "panel" }, h("b", {}, count((j) => j.state === "FAILED")), "failed"),
      ]);
      clear(body);
      if (shown.length === 0) body.appendChild(h("tr", {}, h("td", { colspan: 10, class: "empty" }, jobs.length ? "no job matches the filter" : "no jobs yet")));
      for (const j of shown) {
        const box = h("input", { type: "checkbox", checked: selected.has(j.id), onchange: (e) => { if (e.target.checked) selected.add(j.id); else selected.delete(j.id); compareBtn.disabled = selected.size < 1; } });
        body.appendChild(
          h("tr", { "data-job": j.id },
            h("td", {}, box),
            h("td", {}, h("a", { href: "/jobs/" + j.id, class: "job-link" }, j.name), h("div", { class: "mono muted" }, j.id)),
            h("td", {}, badge(j.state)),
            h("td", {}, progressBar(j.step, j.totalSteps), h("div", { class: "muted" }, j.step + " / " + j.totalSteps + (j.stages > 1 ? " (" + j.stages + " stages)" : ""))),
            h("td", { class: "num" }, fmtNum(j.loss)),
            h("td", { class: "num" }, ago(j.createdAtMs)),
            h("td", {}, j.owner || "-"),
            h("td", { class: "num" }, j.restarts),
            h("td", { class: "muted" }, j.pendingReason || j.reason || ""),
          ),
        );
      }
    };
    q.addEventListener("input", render);
    stateSel.addEventListener("change", render);
    append(main, [
      h("h1", {}, "Jobs"),
      summary,
      h("div", { class: "filters" }, q, stateSel, compareBtn),
      h("table", {}, h("thead", {}, h("tr", {}, ["", "job", "state", "progress", "loss", "age", "owner", "restarts", "reason"].map((t, i) => h("th", { class: i === 4 || i === 5 || i === 7 ? "num" : "" }, t)))), body),
    ]);
    follow("/api/stream", { jobs: (d) => { jobs = d.jobs; render(); } });
    setInterval(render, 10000); // ages
  }

  // ---------------------------------------------------------------- charts

  const SERIES = [
    { key: "loss", col: 3, title: "loss", color: "#2563eb" },
    { key: "lr", col: 4, title: "learning rate", color: "#0891b2" },
    { key: "scale", col: 5, title: "logit scale", color: "#7c3aed" },
    { key: "throughput", col: 6, title: "throughput (samples/s)", color: "#15803d" },
    { key: "steptime", col: 7, title: "step time (s)", color: "#b45309" },
    { key: "datawait", col: 8, title: "data wait (s)", color: "#dc2626" },
  ];
  const MARK_COLORS = { restart: "#dc2626", checkpoint: "#15803d", eval: "#7c3aed" };

  /** A uPlot plugin drawing vertical lines (restarts, checkpoints, evaluations) across the plot. */
  function markerPlugin(getMarkers) {
    return {
      hooks: {
        draw: (u) => {
          const ctx = u.ctx;
          const { left, top, width, height } = u.bbox;
          ctx.save();
          for (const m of getMarkers()) {
            const x = Math.round(u.valToPos(m.t, "x", true));
            if (x < left || x > left + width) continue;
            ctx.strokeStyle = MARK_COLORS[m.kind];
            ctx.lineWidth = m.kind === "restart" ? 2 * devicePixelRatio : devicePixelRatio;
            ctx.setLineDash(m.kind === "restart" ? [] : [4 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            if (m.kind === "restart") {
              ctx.fillStyle = MARK_COLORS.restart;
              ctx.font = 11 * devicePixelRatio + "px system-ui, sans-serif";
              ctx.fillText(m.short, x + 4 * devicePixelRatio, top + 12 * devicePixelRatio);
            }
          }
          ctx.restore();
        },
      },
    };
  }

  function makeChart(el, title, seriesDefs, getMarkers, xTime) {
    const width = Math.max(300, el.clientWidth - 12);
    return new uPlot(
      {
        width,
        height: 210,
        title,
        scales: { x: { time: xTime } },
        cursor: { drag: { x: true, y: false } },
        series: [{ label: xTime ? "time" : "step" }].concat(seriesDefs.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, points: { show: false }, spanGaps: false }))),
        axes: [{}, { size: 64, values: (u, vals) => vals.map((v) => fmtNum(v)) }],
        plugins: [markerPlugin(getMarkers)],
      },
      [[]].concat(seriesDefs.map(() => [])),
      el,
    );
  }

  // ---------------------------------------------------------------- job page

  function jobPage(id) {
    markNav("jobs");
    const state = { job: null, points: {}, stage: null, logs: [], rank: "all", evals: [], lastMetrics: {} };
    const head = h("div", {});
    const stageSel = h("select", { id: "stage", onchange: () => { state.stage = stageSel.value; redrawCharts(); renderJob(); } });
    const chartsEl = h("div", { class: "charts" });
    const markersEl = h("ul", { class: "markers", id: "markers" });
    const evalEl = h("div", { id: "evals" });
    const timelineEl = h("div", { class: "timeline", id: "timeline" });
    const attemptsEl = h("div", { id: "attempts" });
    const ckptEl = h("div", { id: "checkpoints" });
    const eventsEl = h("div", { id: "events" });
    const logBar = h("div", { class: "logbar" });
    const logEl = h("pre", { class: "log", id: "log" });
    append(main, [
      head,
      h("h2", {}, "Curves ", stageSel),
      chartsEl,
      markersEl,
      h("h2", {}, "Evaluation"),
      evalEl,
      h("h2", {}, "Attempts"),
      timelineEl,
      attemptsEl,
      h("div", { class: "two" }, h("div", {}, h("h2", {}, "Checkpoints"), ckptEl), h("div", {}, h("h2", {}, "Events"), eventsEl)),
      h("h2", {}, "Logs (live tail)"),
      logBar,
      logEl,
    ]);

    const charts = SERIES.map((s) => {
      const box = h("div", { class: "chart", id: "chart-" + s.key, "data-points": "0" });
      const count = h("span", { class: "count" }, "0 points");
      box.appendChild(count);
      chartsEl.appendChild(box);
      return { def: s, box, count, plot: null };
    });
    const markers = () => {
      const out = [];
      const st = state.job && state.job.stages.find((s) => s.name === state.stage);
      if (!st) return out;
      st.attempts.forEach((a, i) => {
        if (i === 0) return;
        const prev = st.attempts[i - 1];
        out.push({ kind: "restart", t: a.startedAtMs / 1000, short: "attempt " + a.number, text: clock(a.startedAtMs) + ": attempt " + a.number + " from step " + a.resumedFromStep + " (" + prev.outcome + ": " + (prev.reason || "no reason") + ")" });
      });
      for (const c of st.checkpoints) if (c.status === "committed" && c.committedAtMs) out.push({ kind: "checkpoint", t: c.committedAtMs / 1000, text: "checkpoint at step " + c.step });
      for (const e of state.evals) if (e.stage === state.stage) out.push({ kind: "eval", t: e.tsMs / 1000, text: "evaluation at step " + ((e.data && e.data.step) || "?") });
      return out;
    };

    let drawPending = false;
    function redrawCharts() {
      if (drawPending) return;
      drawPending = true;
      requestAnimationFrame(() => {
        drawPending = false;
        const cols = state.points[state.stage] || { t: [], v: SERIES.map(() => []) };
        charts.forEach((c, i) => {
          if (!c.plot) c.plot = makeChart(c.box, c.def.title, [{ label: c.def.title, color: c.def.color }], markers, true);
          c.plot.setData([cols.t, cols.v[i]]);
          c.box.setAttribute("data-points", String(cols.n || 0));
          c.count.textContent = (cols.n || 0) + " points";
        });
        const ms = markers();
        clear(markersEl);
        for (const m of ms.filter((m) => m.kind !== "checkpoint" || ms.filter((x) => x.kind === "checkpoint").length <= 12)) {
          markersEl.appendChild(h("li", { class: "marker-" + m.kind }, m.text));
        }
      });
    }
    window.addEventListener("resize", () => charts.forEach((c) => c.plot && c.plot.setSize({ width: Math.max(300, c.box.clientWidth - 12), height: 210 })));

    function addPoints(pts, reset) {
      if (reset) state.points = {};
      for (const p of pts) {
        const stage = p[9];
        let cols = state.points[stage];
        if (!cols) cols = state.points[stage] = { t: [], v: SERIES.map(() => []) };
        const t = p[0] / 1000;
        // Points come in time order; a replayed one (same time) is skipped.
        if (cols.t.length && t < cols.t[cols.t.length - 1]) continue;
        if (cols.attempt !== undefined && cols.attempt !== p[2]) {
          // A gap between attempts: the curve breaks at a restart instead of bridging the outage.
          cols.t.push((cols.t[cols.t.length - 1] + t) / 2);
          cols.v.forEach((v) => v.push(null));
        }
        cols.attempt = p[2];
        cols.n = (cols.n || 0) + 1;
        cols.t.push(t);
        SERIES.forEach((s, i) => cols.v[i].push(typeof p[s.col] === "number" && Number.isFinite(p[s.col]) ? p[s.col] : null));
      }
      redrawCharts();
    }

    function renderJob() {
      const j = state.job;
      if (!j) return;
      document.title = "clipfleet: " + j.name;
      if (!state.stage || !j.stages.some((s) => s.name === state.stage)) {
        const running = j.stages.find((s) => !["PENDING", "SUCCEEDED"].includes(s.state)) || j.stages[j.stages.length - 1];
        state.stage = running ? running.name : null;
      }
      if (stageSel.options.length !== j.stages.length) {
        clear(stageSel);
        for (const s of j.stages) stageSel.appendChild(h("option", { value: s.name }, "stage " + s.name));
      }
      stageSel.value = state.stage;
      stageSel.style.display = j.stages.length > 1 ? "" : "none";
      const st = j.stages.find((s) => s.name === state.stage) || j.stages[0];
      const p = st ? st.progress : null;
      clear(head);
      append(head, [
        h("div", { class: "jobhead" }, h("h1", { id: "job-name" }, j.name), badge(j.state), h("span", { class: "mono muted" }, j.id)),
        h("div", { class: "facts" },
          h("div", {}, h("b", {}, "progress"), progressBar(j.step, j.totalSteps), j.step + " / " + j.totalSteps),
          h("div", {}, h("b", {}, "loss"), p ? fmtNum(p.loss) : "-"),
          h("div", {}, h("b", {}, "samples/s"), p ? fmtNum(p.samplesPerSecond, 1) : "-"),
          h("div", {}, h("b", {}, "ranks"), p ? p.worldSize : "-"),
          h("div", {}, h("b", {}, "restarts"), h("span", { id: "restarts" }, j.restarts)),
          h("div", {}, h("b", {}, "owner"), j.owner || "-"),
          h("div", {}, h("b", {}, "age"), ago(j.createdAtMs)),
        ),
        j.pendingReason ? h("div", { class: "reason pending", id: "pending" }, "pending: " + j.pendingReason) : null,
        j.reason ? h("div", { class: "reason" + (j.state === "FAILED" ? " failed" : j.state === "SUCCEEDED" ? " ok" : " info") }, j.reason) : null,
      ]);
      renderEval(st);
      renderAttempts(j);
      renderCheckpoints(st);
      renderEvents(j.events);
      renderLogBar(j);
      redrawCharts();
    }

    function renderEval(st) {
      clear(evalEl);
      const names = st ? Object.keys(st.metrics).sort(naturalOrder) : [];
      if (!names.length) { evalEl.appendChild(h("div", { class: "panel empty" }, "no evaluation results yet")); return; }
      const rows = names.map((n) => {
        const v = st.metrics[n];
        const changed = state.lastMetrics[st.name + "/" + n] !== undefined && state.lastMetrics[st.name + "/" + n] !== v;
        state.lastMetrics[st.name + "/" + n] = v;
        return h("tr", { class: changed ? "newval" : "" }, h("td", { class: "mono" }, n), h("td", { class: "num" }, fmtNum(v, 4)));
      });
      const list = state.evals.filter((e) => e.stage === st.name).slice(-6).map((e) => h("li", {}, clock(e.tsMs) + ": evaluation at step " + (e.data && e.data.step) + " (" + Object.keys((e.data && e.data.metrics) || {}).length + " metrics)"));
      append(evalEl, h("div", { class: "two" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", { class: "num" }, "value"))), h("tbody", {}, rows)), h("ul", { class: "muted" }, list)));
    }

    function renderAttempts(j) {
      clear(timelineEl);
      clear(attemptsEl);
      const all = j.stages.flatMap((s) => s.attempts.map((a) => Object.assign({ stage: s.name }, a)));
      if (!all.length) { timelineEl.appendChild(h("div", { class: "empty" }, j.pendingReason ? "waiting: " + j.pendingReason : "no attempt yet")); return; }
      const t0 = Math.min.apply(null, all.map((a) => a.startedAtMs));
      const t1 = Math.max.apply(null, all.map((a) => a.endedAtMs || Date.now()));
      const span = Math.max(1, t1 - t0);
      for (const a of all) {
        const left = (100 * (a.startedAtMs - t0)) / span;
        const width = (100 * ((a.endedAtMs || Date.now()) - a.startedAtMs)) / span;
        timelineEl.appendChild(h("div", { class: "tl-row" },
          h("div", { class: "tl-label" }, (j.stages.length > 1 ? a.stage + " " : "") + "attempt " + a.number),
          h("div", { class: "tl-track" }, h("div", { class: "tl-seg o-" + a.outcome, style: "left:" + left.toFixed(2) + "%;width:" + width.toFixed(2) + "%", title: a.outcome + ": " + a.reason })),
          h("div", { style: "width:260px" }, badge(a.outcome, "o-"), " steps " + a.resumedFromStep + "-" + a.lastStep + ", " + clock(a.startedAtMs) + (a.endedAtMs ? " to " + clock(a.endedAtMs) : "")),
        ));
      }
      const rows = all.slice().reverse().map((a) =>
        h("tr", { class: "attempt" },
          h("td", {}, (j.stages.length > 1 ? a.stage + " " : "") + a.number),
          h("td", {}, badge(a.outcome, "o-")),
          h("td", { class: "num" }, a.resumedFromStep + " - " + a.lastStep),
          h("td", { class: "ranks mono" }, a.ranks.map((r) => h("div", {}, "rank " + r.rank + " @ " + r.node + " slot " + r.slot + (r.pid ? " pid " + r.pid : "") + " " + r.state + (r.signal ? " (" + r.signal + ")" : r.exitCode !== null && r.exitCode !== undefined ? " (exit " + r.exitCode + ")" : "")))),
          h("td", {}, a.reason || "-"),
        ));
      attemptsEl.appendChild(h("table", {}, h("thead", {}, h("tr", {}, ["attempt", "outcome", "steps", "ranks and nodes", "cause"].map((t) => h("th", {}, t)))), h("tbody", {}, rows)));
    }

    function renderCheckpoints(st) {
      clear(ckptEl);
      const list = st ? st.checkpoints.slice().reverse() : [];
      if (!list.length) { ckptEl.appendChild(h("div", { class: "panel empty" }, "no checkpoint yet")); return; }
      ckptEl.appendChild(h("table", {}, h("thead", {}, h("tr", {}, ["step", "attempt", "status", "size", "committed"].map((t) => h("th", {}, t)))),
        h("tbody", {}, list.slice(0, 30).map((c) => h("tr", { class: "checkpoint" }, h("td", { class: "num" }, c.step), h("td", { class: "num" }, c.attempt), h("td", {}, c.status + (c.reason ? ": " + c.reason : "")), h("td", { class: "num" }, bytes(c.sizeBytes)), h("td", {}, clock(c.committedAtMs)))))));
    }

    function renderEvents(events) {
      clear(eventsEl);
      // A single-stage job's state events come twice (the stage's and the job's): show each once.
      const list = (events || []).filter((e, i, all) => !(i > 0 && all[i - 1].reason === e.reason && all[i - 1].type === e.type && Math.abs(all[i - 1].tsMs - e.tsMs) < 1000)).slice(-40).reverse();
      eventsEl.appendChild(h("table", {}, h("tbody", {}, list.map((e) => h("tr", {}, h("td", { class: "muted" }, clock(e.tsMs)), h("td", {}, e.type), h("td", {}, e.reason || e.state))))));
    }

    function renderLogBar(j) {
      const ranks = new Set();
      for (const s of j.stages) for (const a of s.attempts) for (const r of a.ranks) ranks.add(r.rank);
      const opts = ["all", "orchestrator"].concat([...ranks].sort((a, b) => a - b).map((r) => "rank " + r));
      if (logBar.childNodes.length === opts.length + 1) return;
      clear(logBar);
      logBar.appendChild(h("span", { class: "muted" }, "show: "));
      for (const o of opts) logBar.appendChild(h("button", { class: state.rank === o ? "on" : "", "data-rank": o, onclick: () => { state.rank = o; logBar.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.rank === o)); renderLogs(true); } }, o));
    }

    const MAX_LOG_LINES = 5000;
    const SHOWN_LOG_LINES = 1500;
    function logMatches(l) {
      return state.rank === "all" || (state.rank === "orchestrator" ? l[3] === -1 : "rank " + l[3] === state.rank);
    }
    function logLine(l) {
      const who = "[" + l[1] + "/a" + l[2] + " " + (l[3] === -1 ? "orchestrator" : "rank " + l[3]) + "] ";
      return h("div", { class: "l-" + l[4] }, h("span", { class: "who" }, who), l[5]);
    }
    function renderLogs(full, fresh) {
      const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 30;
      if (full) {
        clear(logEl);
        state.logs.filter(logMatches).slice(-SHOWN_LOG_LINES).forEach((l) => logEl.appendChild(logLine(l)));
      } else {
        for (const l of fresh.filter(logMatches)) logEl.appendChild(logLine(l));
        while (logEl.childNodes.length > SHOWN_LOG_LINES) logEl.removeChild(logEl.firstChild);
      }
      logEl.setAttribute("data-lines", String(logEl.childNodes.length));
      if (atBottom || full) logEl.scrollTop = logEl.scrollHeight;
    }

    follow("/api/jobs/" + encodeURIComponent(id) + "/stream?tail=500", {
      job: (j) => { state.job = j; renderJob(); },
      points: (d) => addPoints(d.points, d.reset),
      event: (e) => {
        if (e.type === "eval") state.evals.push(e);
      },
      logs: (d) => {
        const fresh = d.lines.slice();
        if (d.skipped) fresh.unshift([Date.now(), "-", 0, -1, "orchestrator", "(" + d.skipped + " lines skipped: too many at once)"]);
        state.logs = state.logs.concat(fresh).slice(-MAX_LOG_LINES);
        renderLogs(false, fresh);
      },
    });
    setInterval(() => state.job && renderAttempts(state.job), 5000);
  }

  // ---------------------------------------------------------------- nodes page

  function nodesPage() {
    markNav("nodes");
    document.title = "clipfleet: nodes";
    const summary = h("div", { class: "summary" });
    const body = h("tbody", { id: "nodes" });
    append(main, [
      h("h1", {}, "Nodes"),
      summary,
      h("table", {}, h("thead", {}, h("tr", {}, ["node", "state", "slots in use", "free", "slots", "gpus", "failures", "quarantined until", "labels"].map((t) => h("th", {}, t)))), body),
    ]);
    follow("/api/stream", {
      nodes: (d) => {
        clear(summary);
        const n = d.nodes;
        const sum = (f) => n.reduce((a, x) => a + f(x), 0);
        append(summary, [
          h("div", { class: "panel" }, h("b", {}, n.length), "nodes"),
          h("div", { class: "panel" }, h("b", {}, sum((x) => x.freeSlots) + " / " + sum((x) => x.slots)), "slots free"),
          h("div", { class: "panel" }, h("b", {}, n.filter((x) => x.state === "cordoned").length), "cordoned"),
          h("div", { class: "panel" }, h("b", {}, n.filter((x) => x.state === "quarantined").length), "quarantined"),
        ]);
        clear(body);
        for (const x of n) {
          body.appendChild(h("tr", { "data-node": x.name },
            h("td", {}, x.name, h("div", { class: "mono muted" }, x.launcher + " " + x.host)),
            h("td", {}, badge(x.state, "n-")),
            h("td", {}, progressBar(x.slots - x.freeSlots, x.slots)),
            h("td", { class: "num" }, x.freeSlots),
            h("td", { class: "num" }, x.slots),
            h("td", { class: "num" }, x.gpus),
            h("td", { class: "num" }, x.failures),
            h("td", {}, x.quarantinedUntilMs === null ? "-" : x.quarantinedUntilMs < 0 ? "until released" : clock(x.quarantinedUntilMs)),
            h("td", { class: "mono" }, Object.entries(x.labels || {}).map(([k, v]) => k + "=" + v).join(" ")),
          ));
        }
      },
    });
  }

  // ---------------------------------------------------------------- comparison

  const PALETTE = ["#2563eb", "#dc2626", "#15803d", "#7c3aed", "#b45309", "#0891b2", "#db2777", "#4b5563"];

  async function comparePage() {
    markNav("compare");
    document.title = "clipfleet: compare";
    liveBadge.textContent = "snapshot";
    const ids = (new URLSearchParams(location.search).get("jobs") || "").split(",").filter((x) => /^j-[0-9a-z-]{1,64}$/.test(x)).slice(0, 8);
    append(main, h("h1", {}, "Compare jobs"));
    if (!ids.length) {
      const list = await getJson("/api/jobs");
      const picked = new Set();
      const go = h("button", { class: "primary", onclick: () => { location.href = "/compare?jobs=" + [...picked].join(","); } }, "Compare");
      append(main, [h("p", { class: "muted" }, "Pick the jobs to compare (at most 8)."),
        h("table", {}, h("tbody", {}, list.jobs.map((j) => h("tr", {}, h("td", {}, h("input", { type: "checkbox", onchange: (e) => { if (e.target.checked) picked.add(j.id); else picked.delete(j.id); } })), h("td", {}, j.name), h("td", { class: "mono muted" }, j.id), h("td", {}, badge(j.state)))))),
        h("p", {}, go)]);
      return;
    }
    const jobs = await Promise.all(ids.map(async (id) => ({ job: await getJson("/api/jobs/" + id), points: (await getJson("/api/jobs/" + id + "/history?max=4000")).points })));
    // One curve per job and stage, by step (runs started at different times line up).
    const lines = [];
    for (const { job, points } of jobs) {
      for (const s of job.stages) {
        const pts = points.filter((p) => p[9] === s.name);
        if (pts.length) lines.push({ label: job.name + (job.stages.length > 1 ? "/" + s.name : "") + " (" + job.id.slice(-6) + ")", pts });
      }
    }
    const steps = [...new Set(lines.flatMap((l) => l.pts.map((p) => p[1])))].sort((a, b) => a - b);
    const index = new Map(steps.map((s, i) => [s, i]));
    const chartsEl = h("div", { class: "charts" });
    append(main, [h("h2", {}, "Curves by step"), chartsEl]);
    for (const def of SERIES) {
      const box = h("div", { class: "chart", id: "cmp-" + def.key });
      chartsEl.appendChild(box);
      const data = [steps].concat(lines.map((l) => {
        const col = new Array(steps.length).fill(null);
        for (const p of l.pts) { const v = p[def.col]; if (typeof v === "number" && Number.isFinite(v)) col[index.get(p[1])] = v; }
        return col;
      }));
      const plot = makeChart(box, def.title, lines.map((l, i) => ({ label: l.label, color: PALETTE[i % PALETTE.length] })), () => [], false);
      plot.series.forEach((s, i) => { if (i > 0) plot.setSeries(i, { show: true }); });
      plot.setData(data);
      for (let i = 1; i < plot.series.length; i++) plot.series[i].spanGaps = true;
    }
    const names = [...new Set(jobs.flatMap(({ job }) => job.stages.flatMap((s) => Object.keys(s.metrics))))].sort(naturalOrder);
    const cols = jobs.flatMap(({ job }) => job.stages.map((s) => ({ job, s })));
    append(main, [h("h2", {}, "Final metrics"),
      h("table", { id: "cmp-metrics" },
        h("thead", {}, h("tr", {}, h("th", {}, "metric"), cols.map(({ job, s }) => h("th", { class: "num" }, h("a", { href: "/jobs/" + job.id }, job.name), job.stages.length > 1 ? " / " + s.name : "")))),
        h("tbody", {},
          h("tr", {}, h("td", {}, "state"), cols.map(({ s }) => h("td", { class: "num" }, badge(s.state)))),
          h("tr", {}, h("td", {}, "steps"), cols.map(({ s }) => h("td", { class: "num" }, s.progress.step))),
          h("tr", {}, h("td", {}, "last loss"), cols.map(({ s }) => h("td", { class: "num" }, fmtNum(s.progress.loss)))),
          names.map((n) => h("tr", {}, h("td", { class: "mono" }, n), cols.map(({ s }) => h("td", { class: "num" }, n in s.metrics ? fmtNum(s.metrics[n], 4) : "-")))),
        ))]);
  }

  // ---------------------------------------------------------------- router

  const path = location.pathname;
  const m = /^\/jobs\/([^/]+)$/.exec(path);
  if (m) jobPage(decodeURIComponent(m[1]));
  else if (path === "/nodes") nodesPage();
  else if (path === "/compare") comparePage().catch((e) => append(main, h("p", { class: "reason" }, String(e))));
  else jobsPage();
})();
