// The ops dashboard: polls /ops/overview every 2 s with the pasted API token, and shows a case's
// timeline on the lifecycle diagram. No framework, nothing fetched from elsewhere. Every value
// from the server reaches the page as text (textContent, setAttribute), never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "avrr.ops.token";
  const REFRESH_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";

  let token = sessionStorage.getItem(TOKEN_KEY);
  let generation = 0; // bumped on log-out: answers of an older session are dropped
  let timer = null;
  let inFlight = false;
  let openCase = null;
  const replaying = new Set();
  const lifecycles = new Map(); // version -> the /lifecycle document

  // -- small helpers ---------------------------------------------------------------------------

  const byId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
  const show = (node, visible) => { node.hidden = !visible; };

  // An element with attributes (class, data-*, ...) and children (nodes, or strings as text).
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
    }
    return node;
  }

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== null) node.textContent = text;
    return node;
  }

  const pad = (n) => String(n).padStart(2, "0");
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, seconds);
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 90 * 60) return `${Math.round(s / 60)} min`;
    if (s < 36 * 3600) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }

  const since = (iso, nowIso) => (new Date(nowIso) - new Date(iso)) / 1000;

  function caseLink(caseId) {
    const button = el("button", { type: "button", class: "case", "data-testid": "case-link", "data-case": caseId }, caseId);
    button.addEventListener("click", () => openTimeline(caseId));
    return button;
  }

  function fill(table, rows, emptyNote = null) {
    table.tBodies[0].replaceChildren(...rows);
    if (emptyNote) show(emptyNote, rows.length === 0);
    show(table, rows.length > 0 || !emptyNote);
  }

  // -- the server ------------------------------------------------------------------------------

  class Refused extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, method = "GET") {
    const response = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (response.ok) return body;
    const detail = (body && (body.detail || body.title)) || response.statusText;
    if (response.status === 401 || response.status === 403) throw new Refused(response.status, detail);
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }

  async function lifecycle(version) {
    if (!lifecycles.has(version)) {
      const query = version ? `?version=${encodeURIComponent(version)}` : "";
      lifecycles.set(version, await api(`../lifecycle${query}`));
    }
    return lifecycles.get(version);
  }

  // -- log in and out --------------------------------------------------------------------------

  function showLogin(message) {
    generation += 1;
    clearTimeout(timer);
    inFlight = false;
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    closeTimeline();
    show(byId("dashboard"), false);
    show(byId("logout-button"), false);
    show(byId("refresh-error"), false);
    byId("updated-at").textContent = "";
    show(byId("login"), true);
    const error = byId("login-error");
    error.textContent = message || "";
    show(error, Boolean(message));
  }

  function refused(error) {
    const message = error.status === 401
      ? `The token was refused (401 Unauthorized): ${error.message}. Paste a valid ops token.`
      : `This token may not use the ops dashboard (403 Forbidden): ${error.message}. It needs the ops role.`;
    showLogin(message);
  }

  function start() {
    show(byId("login"), false);
    show(byId("login-error"), false);
    show(byId("dashboard"), true);
    show(byId("logout-button"), true);
    refreshNow();
  }

  // -- the refresh loop ------------------------------------------------------------------------

  function refreshNow() {
    clearTimeout(timer);
    if (!inFlight) tick();
  }

  async function tick() {
    const session = generation;
    inFlight = true;
    try {
      const overview = await api("overview");
      if (session !== generation) return;
      render(overview);
      if (openCase) await renderTimeline(openCase);
      if (session !== generation) return;
      byId("updated-at").textContent = `updated ${clock(new Date())}`;
      show(byId("refresh-error"), false);
    } catch (error) {
      if (session !== generation) return;
      if (error instanceof Refused) {
        refused(error);
        return;
      }
      const banner = byId("refresh-error");
      banner.textContent = `refresh failed: ${error.message}`;
      show(banner, true);
    } finally {
      if (session === generation) {
        inFlight = false;
        timer = setTimeout(tick, REFRESH_MS);
      }
    }
  }

  // -- the overview ----------------------------------------------------------------------------

  function render(overview) {
    const { status } = overview;
    renderSummary(status);
    renderWorkers(overview.workers);
    renderDeadLetters(overview.dead_letters, status.at);
    fill(
      byId("overdue-table"),
      overview.overdue_timers.map((t) => el("tr", { "data-testid": "overdue-row" },
        el("td", {}, caseLink(t.case_id)), el("td", {}, t.name), el("td", {}, t.state),
        el("td", {}, t.fires_trigger), el("td", {}, duration(t.overdue_s)))),
      byId("overdue-empty"),
    );
    fill(
      byId("stuck-table"),
      overview.stuck_cases.map((c) => el("tr", { "data-testid": "stuck-row" },
        el("td", {}, caseLink(c.case_id)), el("td", {}, c.state), el("td", {}, c.owner_office),
        el("td", {}, duration(c.idle_s)), el("td", {}, duration(c.allowed_s)))),
      byId("stuck-empty"),
    );
    renderCounts(status.cases_by_state);
    fill(byId("jobs-table"), overview.recent_jobs.map(jobRow));
  }

  function tile(id, text, bad) {
    const node = byId(id);
    node.textContent = text;
    node.parentElement.classList.toggle("bad", Boolean(bad));
  }

  function renderSummary(s) {
    tile("outbox-backlog", String(s.outbox_backlog), s.outbox_backlog > 0 && s.outbox_oldest_age_s > 60);
    tile("outbox-oldest", duration(s.outbox_oldest_age_s), s.outbox_oldest_age_s > 60);
    tile("jobs-running", String(s.jobs_running), false);
    tile("dead-letters-open", String(s.dead_letters_open), s.dead_letters_open > 0);
    tile("timers", `${s.timers_due} / ${s.timers_overdue}`, s.timers_overdue > 0);
    tile("stuck-count", String(s.stuck_cases), s.stuck_cases > 0);
  }

  function renderWorkers(seen) {
    byId("workers-asked-at").textContent = seen.asked_at ? `asked ${clock(new Date(seen.asked_at))}` : "asking…";
    const error = byId("workers-error");
    error.textContent = seen.error || "";
    show(error, Boolean(seen.error));
    show(byId("no-workers"), Boolean(seen.asked_at) && !seen.error && seen.workers.length === 0);
    fill(byId("workers-table"), seen.workers.map((w) => {
      const processed = Object.entries(w.processed).map(([task, n]) => `${task}: ${n}`).join(", ");
      const current = el("td", {});
      for (const job of w.active) {
        const item = el("div", { "data-testid": "active-job" }, job.effect || job.event_type || job.task);
        if (job.case_id) item.append(" · ", caseLink(job.case_id));
        if (job.started_at) item.append(` · since ${clock(new Date(job.started_at))}`);
        current.append(item);
      }
      if (w.active.length === 0) current.append(el("span", { class: "muted" }, "idle"));
      return el("tr", { "data-testid": "worker-row", "data-worker": w.name },
        el("td", { class: "mono", "data-testid": "worker-name" }, w.name), el("td", {}, w.queues.join(", ")),
        el("td", {}, w.pool), el("td", {}, String(w.concurrency)), el("td", { class: "muted" }, processed), current);
    }));
  }

  function renderDeadLetters(letters, now) {
    fill(byId("dead-letters-table"), letters.map((d) => {
      const button = el("button", { type: "button", class: "replay", "data-testid": "replay-button", "data-id": d.id }, "Replay");
      if (replaying.has(d.id)) {
        button.disabled = true;
        button.textContent = "replaying…";
      }
      button.addEventListener("click", () => replay(d, button));
      return el("tr", { "data-testid": "dead-letter-row", "data-id": d.id, "data-case": d.case_id, "data-effect": d.effect },
        el("td", {}, String(d.id)), el("td", {}, caseLink(d.case_id)), el("td", { class: "mono" }, d.effect),
        el("td", {}, String(d.attempts)), el("td", { class: "error" }, d.error),
        el("td", {}, duration(since(d.dead_at, now))), el("td", {}, button));
    }), byId("dead-letters-empty"));
  }

  async function replay(letter, button) {
    const note = byId("replay-note");
    replaying.add(letter.id);
    button.disabled = true;
    button.textContent = "replaying…";
    try {
      const job = await api(`dead-letters/${encodeURIComponent(letter.id)}/replay`, "POST");
      note.className = "note";
      note.textContent = `replayed dead letter ${job.dead_letter_id}: ${job.effect} of case ${job.case_id} is queued again`;
    } catch (error) {
      if (error instanceof Refused) {
        refused(error);
        return;
      }
      note.className = "alert";
      note.textContent = `replay of dead letter ${letter.id} failed: ${error.message}`;
    } finally {
      replaying.delete(letter.id);
    }
    show(note, true);
    refreshNow();
  }

  function renderCounts(counts) {
    const table = byId("cases-table");
    const offices = [...new Set(counts.map((c) => c.office))].sort();
    const known = lifecycles.get(null);
    const present = new Set(counts.map((c) => c.state));
    const states = known ? known.states.map((s) => s.name).filter((s) => present.has(s)) : [...present].sort();
    const cell = new Map(counts.map((c) => [`${c.state}\u0000${c.office}`, c.count]));
    table.tHead.rows[0].replaceChildren(
      el("th", {}, "state"), ...offices.map((o) => el("th", { class: "n" }, o)), el("th", { class: "n" }, "total"));
    const rows = states.map((state) => {
      const values = offices.map((o) => cell.get(`${state}\u0000${o}`) || 0);
      return el("tr", { "data-testid": "count-row", "data-state": state }, el("td", {}, state),
        ...values.map((n, i) => el("td", { class: n ? "n" : "n zero", "data-office": offices[i] }, String(n))),
        el("td", { class: "n" }, String(values.reduce((a, b) => a + b, 0))));
    });
    const totals = offices.map((o) => counts.filter((c) => c.office === o).reduce((a, c) => a + c.count, 0));
    rows.push(el("tr", {}, el("th", {}, "total"), ...totals.map((n) => el("th", { class: "n" }, String(n))),
      el("th", { class: "n" }, String(totals.reduce((a, b) => a + b, 0)))));
    table.tBodies[0].replaceChildren(...rows);
  }

  function jobRow(j) {
    return el("tr", { "data-testid": "job-row", "data-event": j.event_id, "data-effect": j.effect, "data-status": j.status },
      el("td", { class: `status-${j.status}`, "data-testid": "job-status" }, j.status), el("td", { class: "mono" }, j.effect),
      el("td", {}, caseLink(j.case_id)), el("td", {}, String(j.attempts)), el("td", {}, when(j.started_at)),
      el("td", {}, when(j.finished_at)), el("td", { class: "error" }, j.last_error || ""));
  }

  // -- a case's timeline -----------------------------------------------------------------------

  async function openTimeline(caseId) {
    openCase = caseId;
    byId("timeline-case").textContent = caseId;
    show(byId("timeline"), true);
    try {
      await renderTimeline(caseId);
    } catch (error) {
      if (error instanceof Refused) refused(error);
    }
  }

  function closeTimeline() {
    openCase = null;
    show(byId("timeline"), false);
  }

  async function renderTimeline(caseId) {
    const error = byId("timeline-error");
    let t;
    try {
      t = await api(`cases/${encodeURIComponent(caseId)}/timeline`);
    } catch (failure) {
      if (failure instanceof Refused) throw failure;
      if (openCase !== caseId) return;
      error.textContent = `timeline of ${caseId}: ${failure.message}`;
      show(error, true);
      return;
    }
    const doc = await lifecycle(t.lifecycle_version);
    if (openCase !== caseId) return; // another case was opened meanwhile
    show(error, false);
    const facts = [["state", t.state], ["version", t.version], ["lifecycle", t.lifecycle_version],
      ["origin office", t.origin_office], ["destination office", t.destination_office],
      ["owner office", t.owner_office], ["last change", when(t.updated_at)]];
    byId("timeline-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k),
      el("dd", { "data-testid": `fact-${k.replaceAll(" ", "-")}` }, String(v))]));
    const next = doc.transitions.filter((tr) => tr.sources.includes(t.state));
    byId("timeline-next").textContent = next.length
      ? `next: ${next.map((tr) => `${tr.trigger} → ${tr.dest === "=" ? t.state : tr.dest}`).join(", ")}`
      : "final state: no further transitions";
    byId("lifecycle-diagram").replaceChildren(diagram(doc, t));
    fill(byId("timeline-history"), t.history.map((s) => el("tr", { "data-testid": "history-row" },
      el("td", {}, String(s.version)), el("td", {}, s.trigger), el("td", {}, s.from_state || "–"),
      el("td", {}, s.to_state), el("td", { class: "mono" }, s.actor_id), el("td", {}, when(s.occurred_at)))));
    fill(byId("timeline-events"), t.events.map((e) => el("tr", { "data-testid": "event-row", "data-event": e.event_id },
      el("td", {}, e.event_type), el("td", {}, String(e.case_version)), el("td", {}, when(e.occurred_at)),
      el("td", { class: e.sent_at ? "status-done" : "status-pending" }, e.sent_at ? `sent ${when(e.sent_at)}` : "waiting"))));
    fill(byId("timeline-jobs"), t.jobs.map((j) => el("tr", { "data-testid": "timeline-job", "data-effect": j.effect, "data-status": j.status },
      el("td", { class: `status-${j.status}` }, j.status), el("td", { class: "mono" }, j.effect), el("td", {}, j.event_type),
      el("td", {}, String(j.attempts)), el("td", {}, when(j.started_at)), el("td", {}, when(j.finished_at)),
      el("td", { class: "error" }, j.last_error || ""))));
    fill(byId("timeline-timers"), t.timers.map((m) => el("tr", { "data-testid": "timer-row" },
      el("td", {}, m.name), el("td", {}, m.state), el("td", {}, m.fires_trigger), el("td", {}, m.status),
      el("td", {}, when(m.due_at)), el("td", {}, when(m.fired_at)))));
    fill(byId("timeline-tasks"), t.tasks.map((k) => el("tr", { "data-testid": "task-row", "data-kind": k.kind, "data-status": k.status },
      el("td", {}, k.kind), el("td", {}, k.office), el("td", { class: `status-${k.status}` }, k.status),
      el("td", {}, k.due_on || "–"), el("td", {}, when(k.created_at)), el("td", {}, when(k.completed_at)),
      el("td", { class: "mono" }, k.completed_by || ""))));
  }

  // The lifecycle as an SVG: a column per phase, a box per state; every transition a faint line,
  // the case's own path in blue, the transitions it may take next dashed, its state filled.
  function diagram(doc, t) {
    const W = 176, H = 24, COL = 206, ROW = 32, TOP = 26, LEFT = 8;
    const phases = [...new Set(doc.states.map((s) => s.phase))];
    const place = new Map();
    const perPhase = new Map(phases.map((p) => [p, 0]));
    for (const s of doc.states) {
      const col = phases.indexOf(s.phase);
      const row = perPhase.get(s.phase);
      perPhase.set(s.phase, row + 1);
      place.set(s.name, { col, x: LEFT + col * COL, y: TOP + row * ROW });
    }
    const rows = Math.max(...perPhase.values());
    const root = svg("svg", { viewBox: `0 0 ${LEFT * 2 + phases.length * COL} ${TOP + rows * ROW + 8}`,
      role: "img", "aria-label": `lifecycle ${doc.version}; the case is in ${t.state}`, "data-testid": "lifecycle-svg" });
    const defs = svg("defs");
    for (const [id, colour] of [["arrow", "#d9dee6"], ["arrow-taken", "#0b5cad"], ["arrow-next", "#9a6700"]]) {
      const marker = svg("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" });
      marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }));
      defs.append(marker);
    }
    root.append(defs);
    phases.forEach((p, i) => root.append(svg("text", { class: "phase", x: LEFT + i * COL, y: 14 }, p)));

    const visited = new Set(t.history.map((s) => s.to_state));
    const taken = new Set(t.history.filter((s) => s.from_state && s.from_state !== s.to_state)
      .map((s) => `${s.from_state}>${s.to_state}`));
    const edges = new Map();
    for (const tr of doc.transitions) {
      for (const source of tr.sources) {
        const dest = tr.dest === "=" ? source : tr.dest;
        if (source === dest || !place.has(source) || !place.has(dest)) continue;
        const key = `${source}>${dest}`;
        const kind = taken.has(key) ? "taken" : source === t.state ? "next" : "";
        if (!edges.has(key) || kind) edges.set(key, { source, dest, kind });
      }
    }
    const order = { "": 0, next: 1, taken: 2 };
    for (const e of [...edges.values()].sort((a, b) => order[a.kind] - order[b.kind])) {
      root.append(svg("path", { class: `edge ${e.kind}`.trim(), d: curve(place.get(e.source), place.get(e.dest), W, H),
        "marker-end": `url(#${e.kind ? `arrow-${e.kind}` : "arrow"})` }));
    }
    for (const s of doc.states) {
      const { x, y } = place.get(s.name);
      const classes = ["state", s.final ? "final" : "", visited.has(s.name) ? "visited" : "", s.name === t.state ? "current" : ""];
      const group = svg("g", { class: classes.filter(Boolean).join(" "), "data-state": s.name, "data-testid": "diagram-state" });
      group.append(svg("rect", { x, y, width: W, height: H, rx: 5 }), svg("text", { x: x + 8, y: y + 16 }, s.name));
      if (s.name === t.state) group.setAttribute("aria-current", "step");
      root.append(group);
    }
    return root;
  }

  function curve(a, b, W, H) {
    const ay = a.y + H / 2, by = b.y + H / 2;
    if (a.col === b.col) { // same phase: bow out to the right
      const x = a.x + W, bend = 18 + Math.min(40, Math.abs(by - ay) / 4);
      return `M${x},${ay} C${x + bend},${ay} ${x + bend},${by} ${x + 1},${by}`;
    }
    const forward = b.col > a.col;
    const x1 = forward ? a.x + W : a.x, x2 = forward ? b.x - 1 : b.x + W + 1;
    const mid = (x1 + x2) / 2;
    return `M${x1},${ay} C${mid},${ay} ${mid},${by} ${x2},${by}`;
  }

  // -- wiring ----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    byId("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = byId("token-input").value.trim();
      if (!value) return;
      token = value;
      sessionStorage.setItem(TOKEN_KEY, token);
      byId("token-input").value = "";
      generation += 1;
      try {
        await lifecycle(null); // the default lifecycle: the order of states in the counts
      } catch (error) {
        if (error instanceof Refused) {
          refused(error);
          return;
        }
      }
      start();
    });
    byId("logout-button").addEventListener("click", () => showLogin(""));
    byId("timeline-close").addEventListener("click", closeTimeline);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeTimeline();
    });
    if (token) {
      lifecycle(null).catch(() => null).finally(start);
    } else {
      showLogin("");
    }
  });
})();
