// agent-fabric operators' console. Plain script, no build step, no third-party code.
// Every view calls the JSON API with the operator's token, so what a view shows is exactly
// what that token may see (roles and tenant scoping are the API's). Data is written with
// textContent only: nothing the API returns is ever parsed as HTML.
"use strict";

const TOKEN_KEY = "agent-fabric-console-token";
const POD_KEY = "agent-fabric-console-pod";
const STATUSES = ["", "queued", "waiting", "awaiting_approval", "running", "completed", "failed", "cancelled",
  "rejected", "timed_out"];
let stopStream = null; // aborts the live event stream of the task view when leaving it
let generation = 0; // the route being shown: a slower view of an earlier route must not paint over it

// ---- small DOM helpers --------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const badge = (s) => h("span", { class: `status ${s}` }, s ?? "");
const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
function table(columns, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing here.");
  return h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c[0])))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", {}, c[1](r)))))));
}
// Widths are set through the CSSOM: the page's CSP refuses inline style attributes.
function meter(ratio, projected) {
  const bar = h("span", { class: ratio >= 1 ? "over" : "" });
  bar.style.width = `${Math.min(Math.max(ratio || 0, 0), 1) * 100}%`;
  const m = h("span", { class: "meter", title: `${(100 * (ratio || 0)).toFixed(1)} % used` }, bar);
  if (projected) {
    const tick = h("i", { title: "projected at the period end" });
    tick.style.left = `${Math.min(projected, 1) * 100}%`;
    m.append(tick);
  }
  return m;
}
const amounts = (o) => Object.entries(o || {}).filter(([, v]) => v !== null)
  .map(([k, v]) => `${k.replace("_", " ")} ${Number.isInteger(v) ? v : Number(v).toFixed(2)}`).join(", ");
const limited = (b) => Object.values(b.effective_limits || {}).some((v) => v !== null);
function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}
const main = () => document.getElementById("main");
function render(...nodes) { main().replaceChildren(...nodes); }

// ---- the API, with the operator's token ---------------------------------------------------
const token = () => sessionStorage.getItem(TOKEN_KEY);
function pod() { return document.getElementById("pod").value.trim(); }
function claims() {
  try {
    const part = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch { return {}; }
}
class ApiError extends Error {}
async function api(path, { method = "GET", body, params } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v) url.searchParams.set(k, v);
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.text();
  if (r.status === 401) { signOut(); throw new ApiError("Signed out: the token was refused or has expired."); }
  if (!r.ok) throw new ApiError(`${r.status} ${data.title || ""}: ${data.detail || JSON.stringify(data)}`);
  return data;
}

// ---- views ---------------------------------------------------------------------------------
const views = {
  async fleet(ctx) {
    const p = { tenant_id: pod() };
    const [health, fleet, sessions] = await Promise.all([
      api("/api/v2/agent/health", { params: p }), api("/api/v2/agent/fleet", { params: p }),
      api("/api/v2/agent/sessions", { params: { ...p, limit: 500 } })]);
    const open = sessions.items.filter((s) => s.status !== "terminated").length;
    ctx.render(h("h1", {}, `POD status: ${fleet.pod_id}`),
      h("div", { class: "cards" },
        h("div", { class: "card" }, "Agent Zero", h("b", {}, badge(health.status))),
        h("div", { class: "card" }, "Fleet agents", h("b", {}, `${fleet.agents.length} / ${fleet.max_agents}`)),
        h("div", { class: "card" }, "Orchestrator", h("b", {}, fleet.started ? badge(fleet.orchestrator.status) : "not started")),
        h("div", { class: "card" }, "Open sessions", h("b", {}, open))),
      h("h2", {}, "Agent Zero instances"),
      table([["URL", (i) => i.url], ["Status", (i) => badge(i.status)], ["Version", (i) => fmt(i.version)],
        ["Set", (i) => i.mode_set], ["Last error", (i) => fmt(i.error)], ["Checked", (i) => fmt(i.checked_at)]],
      health.instances, health.detail),
      h("h2", {}, "Fleet agents"),
      table([["Agent", (a) => a.id], ["Role", (a) => fmt(a.role)], ["Profile", (a) => fmt(a.profile)],
        ["Status", (a) => badge(a.status)]], fleet.agents, "No fleet agents: the fleet is not started."));
  },

  async agents(ctx) {
    const list = await api("/api/v1/agents", { params: { tenant_id: pod(), limit: 500 } });
    const link = (a) => h("a", { href: `#/agent/${encodeURIComponent(a.agent_id)}` }, a.agent_id);
    ctx.render(h("h1", {}, "Agents the fabric runs"),
      table([["Agent", link], ["Name", (a) => a.name], ["Version", (a) => a.version], ["Type", (a) => a.agent_type],
        ["Runtime", (a) => fmt(a.runtime)], ["Status", (a) => badge(a.status)], ["Reason", (a) => fmt(a.status_reason)],
        ["Since", (a) => fmt(a.status_changed_at)]], list.items, "No registered agents in this POD."));
  },

  async agent(ctx, _query, id) {
    const path = `/api/v1/agents/${encodeURIComponent(id)}`;
    const [a, health, runs] = await Promise.all([api(path), api(`${path}/health`), api(`${path}/runs`, { params: { limit: 20 } })]);
    const act = (action) => async () => guarded(async () => { await api(`${path}/${action}`, { method: "POST" }); route(); });
    const actions = a.runtime === "process" ? h("p", {},
      h("button", { type: "button", onclick: act("start") }, "Start"), " ",
      h("button", { type: "button", onclick: act("restart") }, "Restart"), " ",
      h("button", { type: "button", class: "danger", onclick: act("stop") }, "Stop")) : null;
    const processes = (health.replicas || []).flatMap((r) => r.processes.map((p) => ({ ...p, replica: r.replica, here: r.this_replica })));
    const heard = (p) => fmt(p.last_heartbeat_at || p.last_heartbeat?.timestamp);
    ctx.render(h("h1", {}, `Agent ${a.name} `, h("span", { id: "agent-status" }, badge(a.status))),
      h("p", { class: "muted" }, `${a.agent_id} · ${a.agent_type} ${a.version} · ${fmt(a.status_reason)}`), actions,
      h("h2", {}, "Processes on every replica"),
      table([["Replica", (p) => (p.here ? `${p.replica} (this one)` : p.replica)], ["Process", (p) => p.name],
        ["PID", (p) => fmt(p.pid)], ["State", (p) => badge(p.stale ? "stale" : p.state)], ["Job", (p) => fmt(p.job_id)],
        ["Tasks done", (p) => fmt(p.tasks_done)], ["Last heartbeat", heard],
        ["Seconds since", (p) => fmt(p.seconds_since_heartbeat)]], processes, "No process of this agent is running."),
      h("h2", {}, "Recent process runs"),
      table([["Process", (r) => r.process], ["Replica", (r) => r.owner], ["Started", (r) => fmt(r.started_at)],
        ["Ended", (r) => fmt(r.ended_at)], ["Outcome", (r) => fmt(r.outcome)], ["Reason", (r) => fmt(r.reason)],
        ["Tasks", (r) => fmt(r.tasks_done)]], runs.items, "No runs yet."));
  },

  async queues(ctx) {
    const q = await api("/api/v1/queues", { params: { tenant_id: pod() } });
    const byPrio = {};
    for (const i of q.items) byPrio[i.priority] = (byPrio[i.priority] || 0) + i.count;
    ctx.render(h("h1", {}, "Queues"),
      h("div", { class: "cards" }, ["critical", "high", "normal", "low"].map((p) =>
        h("div", { class: "card" }, `${p} (unfinished)`, h("b", {}, byPrio[p] || 0)))),
      h("h2", {}, "By tenant, priority and status"),
      table([["Tenant", (i) => i.tenant_id], ["Priority", (i) => i.priority], ["Status", (i) => badge(i.status)],
        ["Tasks", (i) => i.count]], q.items, "No unfinished tasks."),
      q.consumers ? h("h2", {}, "JetStream consumers (all tenants)") : null,
      q.consumers ? table([["Class", (c) => c.priority], ["Consumer", (c) => c.consumer],
        ["Pending", (c) => c.pending], ["Ack pending", (c) => c.ack_pending]], q.consumers) : null);
  },

  async tasks(ctx, query) {
    const f = { status: query.get("status") || "", tenant_id: query.get("tenant_id") || pod(),
      agent: query.get("agent") || "", type: query.get("type") || "", since: query.get("since") || "",
      until: query.get("until") || "" };
    const search = h("form", { class: "bar", id: "task-search" },
      h("label", {}, "Status", h("select", { name: "status" },
        STATUSES.map((s) => h("option", { value: s, selected: s === f.status }, s || "any")))),
      h("label", {}, "Tenant", h("input", { name: "tenant_id", value: f.tenant_id, size: 12 })),
      h("label", {}, "Agent", h("input", { name: "agent", value: f.agent, size: 14 })),
      h("label", {}, "Type", h("input", { name: "type", value: f.type, size: 12 })),
      h("label", {}, "Since", h("input", { name: "since", type: "datetime-local", value: f.since })),
      h("label", {}, "Until", h("input", { name: "until", type: "datetime-local", value: f.until })),
      h("button", { type: "submit" }, "Search"));
    search.addEventListener("submit", (e) => {
      e.preventDefault();
      const params = new URLSearchParams();
      for (const [k, v] of new FormData(search)) if (v) params.set(k, v);
      location.hash = `#/tasks?${params}`;
    });
    const iso = (v) => (v ? new Date(v).toISOString() : "");
    const list = await api("/api/v1/tasks", { params: { ...f, since: iso(f.since), until: iso(f.until), limit: 100 } });
    ctx.render(h("h1", {}, "Tasks"), search,
      table([["Job", (t) => h("a", { href: `#/task/${encodeURIComponent(t.tenant_id)}/${encodeURIComponent(t.job_id)}` }, t.job_id)],
        ["Tenant", (t) => t.tenant_id], ["Agent", (t) => fmt(t.agent)],
        ["Type", (t) => fmt(t.task?.type)], ["Priority", (t) => fmt(t.priority)],
        ["Status", (t) => badge(t.status)], ["Created", (t) => fmt(t.created_at)]], list.items, "No task matches."),
      ...submitForm());
  },

  async task(ctx, _query, tenant, job) {
    const t = await api(`/api/v1/tasks/${encodeURIComponent(job)}`, { params: { tenant_id: tenant } });
    const status = h("span", { id: "task-status" }, badge(t.status));
    const events = h("ol", { id: "events" });
    const actions = h("p", {}, ["queued", "waiting", "awaiting_approval", "running"].includes(t.status)
      ? h("button", { class: "danger", type: "button", onclick: async () => {
        await guarded(() => api(`/api/v1/tasks/${encodeURIComponent(job)}/cancel`, { method: "POST", params: { tenant_id: tenant }, body: { reason: "cancelled from the console" } }));
      } }, "Cancel task") : null);
    ctx.render(h("h1", {}, `Task ${t.job_id} `, status), actions,
      table([["Field", (r) => r[0]], ["Value", (r) => h("pre", {}, r[1])]], [
        ["tenant", t.tenant_id], ["agent", fmt(t.agent)], ["priority", fmt(t.priority)], ["task", fmt(t.task)],
        ["attempts", fmt(t.attempts)], ["usage", fmt(t.usage)], ["result", fmt(t.result)], ["error", fmt(t.error)],
        ["created / started / finished", `${fmt(t.created_at)}  ${fmt(t.started_at)}  ${fmt(t.finished_at)}`]]),
      h("h2", {}, "Live events"), events);
    // Once the task ends, load it again (result, usage, times); a finished task is not reloaded twice.
    const finished = !["queued", "waiting", "awaiting_approval", "running"].includes(t.status);
    if (ctx.current()) followEvents(job, tenant, events, status, () => { if (!finished && ctx.current()) route(); });
  },

  async approvals(ctx) {
    const list = await api("/api/v1/approvals", { params: { status: "pending", tenant_id: pod(), limit: 200 } });
    const decide = (a, approve) => async () => {
      const reason = approve ? undefined : prompt("Why is it rejected?") || "rejected from the console";
      await guarded(async () => {
        await api(`/api/v1/approvals/${a.id}/${approve ? "approve" : "reject"}`, { method: "POST", body: { reason } });
        route();
      });
    };
    ctx.render(h("h1", {}, "Approvals waiting"),
      table([["Task", (a) => fmt(a.job_id)], ["Tenant", (a) => a.tenant_id], ["Action", (a) => fmt(a.action)],
        ["Approvers", (a) => (a.approvers?.length ? a.approvers.join(", ") : "anyone allowed, except the requester")], ["Expires", (a) => fmt(a.expires_at)],
        ["", (a) => [h("button", { type: "button", onclick: decide(a, true) }, "Approve"), " ",
          h("button", { type: "button", class: "danger", onclick: decide(a, false) }, "Reject")]]],
      list.items, "No approval is waiting."));
  },

  async sessions(ctx) {
    const list = await api("/api/v2/agent/sessions", { params: { tenant_id: pod(), limit: 200 } });
    const end = (s) => async () => guarded(async () => {
      await api(`/api/v2/agent/sessions/${encodeURIComponent(s.id)}/terminate`, { method: "POST", params: { tenant_id: pod() } });
      route();
    });
    ctx.render(h("h1", {}, "Agent Zero sessions"),
      table([["Session", (s) => s.id], ["User", (s) => fmt(s.user_id)], ["Profile", (s) => fmt(s.agent_profile)],
        ["Status", (s) => badge(s.status)], ["Messages", (s) => s.message_count], ["Cost (USD)", (s) => fmt(s.estimated_cost_usd)],
        ["Last activity", (s) => fmt(s.last_activity_at)],
        ["", (s) => (s.status === "terminated" ? "" : h("button", { type: "button", class: "danger", onclick: end(s) }, "End"))]],
      list.items, "No sessions."));
  },

  async budgets(ctx) {
    const list = await api("/api/v1/budgets", { params: { tenant_id: pod() } });
    ctx.render(h("h1", {}, "Budgets"),
      h("p", { class: "muted" }, "Bar: share of the limit used this period; tick: projected at the period end."),
      table([["Tenant", (b) => b.tenant_id], ["Entity", (b) => b.entity], ["Period", (b) => `${b.period} to ${fmt(b.period_end)}`],
        ["Share used", (b) => (limited(b) ? [meter(b.usage_ratio, b.projected_ratio), ` ${(100 * b.usage_ratio).toFixed(1)} %`] : "no limit")],
        ["Left (burn-down)", (b) => (limited(b) ? amounts(b.remaining) : "")],
        ["Used", (b) => amounts(b.used)], ["Limits", (b) => amounts(b.effective_limits) || "none"], ["Mode", (b) => b.mode]],
      list.items, "No budgets set."));
  },

  async audit(ctx, query) {
    const action = query.get("action") || "";
    const form = h("form", { class: "bar" }, h("label", {}, "Action (exact or prefix.)", h("input", { name: "action", value: action })),
      h("button", { type: "submit" }, "Filter"));
    form.addEventListener("submit", (e) => { e.preventDefault(); location.hash = `#/audit?action=${encodeURIComponent(new FormData(form).get("action"))}`; });
    const page = await api("/api/v1/audit", { params: { tenant_id: pod(), action, limit: 200 } });
    ctx.render(h("h1", {}, "Audit trail"), form,
      table([["Time", (e) => fmt(e.timestamp)], ["Tenant", (e) => fmt(e.tenant_id)], ["Actor", (e) => fmt(e.actor)],
        ["Action", (e) => e.action], ["Mode", (e) => fmt(e.mode)], ["Request", (e) => fmt(e.request).slice(0, 160)],
        ["Response", (e) => fmt(e.response).slice(0, 160)]],
      page.items, "No audit entries."));
  },
};

function submitForm() {
  const form = h("form", { class: "bar", id: "submit-task" },
    h("label", {}, "Job id", h("input", { name: "job_id", value: `console-${Date.now().toString(36)}`, required: true })),
    h("label", {}, "Runtime", h("select", { name: "runtime" }, ["builtin", "agent-zero", "process", "a2a"].map((r) => h("option", {}, r)))),
    h("label", {}, "Type", h("input", { name: "type", value: "echo", size: 12 })),
    h("label", {}, "Input (JSON)", h("input", { name: "input", value: "{}", size: 24 })),
    h("label", {}, "Priority", h("select", { name: "priority" }, ["normal", "critical", "high", "low"].map((p) => h("option", {}, p)))),
    h("button", { type: "submit" }, "Submit task"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const d = Object.fromEntries(new FormData(form));
    guarded(async () => {
      const body = { job_id: d.job_id, agent_definition: { runtime: d.runtime }, task: { type: d.type, input: JSON.parse(d.input || "{}") },
        priority: d.priority };
      if (pod()) body.tenant_id = pod();
      const accepted = await api("/api/v1/tasks", { method: "POST", body });
      location.hash = `#/task/${encodeURIComponent(body.tenant_id || claims().tenant_id || "default")}/${encodeURIComponent(accepted.job_id)}`;
    });
  });
  return [h("h2", {}, "Submit a task"), form];
}

// The SSE endpoint needs the Authorization header, which EventSource cannot send: read the
// stream with fetch instead, and parse its `event:` / `data:` lines.
async function followEvents(job, tenant, list, statusEl, onEnd) {
  const controller = new AbortController();
  stopStream = () => controller.abort();
  const url = new URL(`/api/v1/tasks/${encodeURIComponent(job)}/events`, location.origin);
  url.searchParams.set("tenant_id", tenant);
  try {
    const r = await fetch(url, { headers: { Authorization: `Bearer ${token()}` }, signal: controller.signal });
    if (!r.ok) throw new ApiError(`${r.status}: the event stream was refused`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const kind = (block.match(/^event: ?(.*)$/m) || [])[1] || "message";
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        let ev;
        try { ev = JSON.parse(data); } catch { ev = { data }; }
        list.append(h("li", { "data-kind": kind }, h("b", {}, kind), " ", ev.status ? badge(ev.status) : "", " ",
          h("span", { class: "muted" }, fmt(ev.time)), " ", fmt(ev.data)));
        if (ev.status) statusEl.replaceChildren(badge(ev.status));
        if (kind === "end") onEnd();
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
  }
}

// ---- routing and sign-in ------------------------------------------------------------------
async function guarded(fn) {
  try { showError(""); await fn(); } catch (e) { showError(e.message); }
}
async function route() {
  if (stopStream) { stopStream(); stopStream = null; }
  if (!token()) return;
  const [path, qs] = (location.hash.slice(2) || "fleet").split("?");
  const [name, ...args] = path.split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${name}`);
  const view = views[name] || views.fleet;
  const mine = ++generation;
  const ctx = { current: () => mine === generation, render: (...nodes) => { if (mine === generation) render(...nodes); } };
  render(h("p", { class: "muted" }, "Loading..."));
  try {
    showError("");
    await view(ctx, new URLSearchParams(qs || ""), ...args);
  } catch (e) {
    if (ctx.current()) { showError(e.message); render(h("p", { class: "muted" }, "Nothing to show.")); }
  }
}
function signedIn() {
  const c = claims();
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("pod-box").hidden = false;
  const podInput = document.getElementById("pod");
  // A tenant-bound token's POD is fixed; an admin picks one (kept for the tab).
  podInput.value = c.tenant_id || sessionStorage.getItem(POD_KEY) || "default";
  document.getElementById("who").textContent = `${c.sub || "?"} (${c.role || "?"}${c.tenant_id ? `, POD ${c.tenant_id}` : ""})`;
  route();
}
function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "";
  location.reload();
}
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in").addEventListener("submit", (e) => {
    e.preventDefault();
    const credential = document.getElementById("credential").value.trim();
    guarded(async () => {
      let jwt = credential;
      if (credential.split(".").length !== 3) {
        const r = await fetch("/api/v1/auth/token", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ api_key: credential }) });
        const body = await r.json();
        if (!r.ok) throw new ApiError(`Sign-in refused: ${body.detail || r.status}`);
        jwt = body.access_token;
      }
      sessionStorage.setItem(TOKEN_KEY, jwt);
      signedIn();
    });
  });
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("pod").addEventListener("change", () => { sessionStorage.setItem(POD_KEY, pod()); route(); });
  window.addEventListener("hashchange", route);
  if (token()) signedIn();
});
