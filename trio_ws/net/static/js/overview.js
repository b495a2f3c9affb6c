// The overview at "/": every project at a glance, live over /ws/overview. The server
// sends the full list first, then the summaries that changed (at most two a second
// per project, the latest only); each carries its rank, so the order (what needs
// you first, then by name) is the server's one rule. Rows are keyed by name, built
// once and refilled only when their summary changed, and the DOM is written once
// per animation frame: a list of hundreds stays cheap.

import { $, el, ago, count, wsBase, STATUS_LABELS } from "./dom.js";
import { clearBanner, showBanner } from "./banners.js";

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const PING_EVERY_MS = 20000;
const TICK_MS = 5000;
const LISTED_AGENTS = 4;
const ATTENTION_LABELS = {
  error: "error",
  needs_input: "needs input",
  crashed: "crashed",
  warning: "warning",
  running: "running",
  idle: "idle",
};

const projects = new Map(); // name -> {summary, text, node}
const dirty = new Set();
let orderChanged = false;
let frameRequested = false;
let attempt = 0;
let socket = null;

export function startOverview() {
  document.title = "Projects · trio-ws";
  $("list-view").hidden = false;
  $("publish-url").textContent = `${wsBase()}/ws/projects/NAME/publish`;
  setState("connecting", "");
  connect();
  setInterval(() => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send('{"type":"ping"}');
  }, PING_EVERY_MS);
  setInterval(tickAges, TICK_MS);
}

function connect() {
  const current = new WebSocket(`${wsBase()}/ws/overview`);
  socket = current;
  let refusal = null;
  current.onmessage = (event) => {
    if (current !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (message.type === "overview") {
      attempt = 0;
      setState("live", "");
      replaceAll(message.projects);
      if (message.registry_error) {
        showBanner("registry", `Cannot read the registry: ${message.registry_error}`);
      } else {
        clearBanner("registry");
      }
    } else if (message.type === "overview_update") {
      update(message.projects, message.removed);
    } else if (message.type === "error") {
      refusal = String(message.content);
    }
  };
  current.onclose = (event) => {
    if (current !== socket) return;
    socket = null;
    if (event.code >= 4000 && event.code <= 4999) {
      const why = refusal || event.reason || `closed with code ${event.code}`;
      setState("closed", why);
      showBanner(
        "connection",
        `${why}. Open this page with ?token=<token> (trio-ws open prints the link).`,
      );
      return;
    }
    attempt += 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
    setState("reconnecting", `in ${Math.round(delay / 100) / 10} s`);
    setTimeout(connect, delay * (0.5 + Math.random() / 2));
  };
}

function setState(state, detail) {
  const pill = $("connection");
  pill.hidden = false;
  pill.dataset.state = state;
  const label = detail ? `${state} · ${detail}` : state;
  $("connection-text").textContent = label;
  pill.title = label;
}

function replaceAll(list) {
  const seen = new Set();
  for (const summary of Array.isArray(list) ? list : []) {
    if (summary && typeof summary.name === "string") {
      seen.add(summary.name);
      put(summary);
    }
  }
  for (const name of [...projects.keys()]) if (!seen.has(name)) remove(name);
  orderChanged = true;
  schedule();
}

function update(list, removed) {
  for (const summary of Array.isArray(list) ? list : []) {
    if (summary && typeof summary.name === "string") put(summary);
  }
  for (const name of Array.isArray(removed) ? removed : []) remove(String(name));
  schedule();
}

function put(summary) {
  const text = JSON.stringify(summary);
  const known = projects.get(summary.name);
  if (known && known.text === text) return;
  if (!known || known.summary.rank !== summary.rank) orderChanged = true;
  projects.set(summary.name, { summary, text, node: known ? known.node : null });
  dirty.add(summary.name);
}

function remove(name) {
  const known = projects.get(name);
  if (!known) return;
  if (known.node) known.node.remove();
  projects.delete(name);
  dirty.delete(name);
}

function schedule() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(render);
}

function render() {
  frameRequested = false;
  const list = $("projects");
  for (const name of dirty) {
    const project = projects.get(name);
    if (!project) continue;
    if (!project.node) {
      project.node = buildRow();
      orderChanged = true;
    }
    fillRow(project.node, project.summary);
  }
  dirty.clear();
  if (orderChanged) {
    orderChanged = false;
    const ordered = [...projects.values()].sort(byAttention);
    // Move only what is out of place: a stable list costs no layout.
    let at = list.firstElementChild;
    for (const project of ordered) {
      if (project.node === at) {
        at = at.nextElementSibling;
      } else {
        list.insertBefore(project.node, at);
      }
    }
  }
  $("list-empty").hidden = projects.size > 0;
  const needing = [...projects.values()].filter((p) => Number(p.summary.rank) <= 2).length;
  $("list-updated").textContent = needing ? `${needing} need you` : `${projects.size} projects`;
  document.body.dataset.overviewRendered = String(Date.now());
}

function byAttention(a, b) {
  const rank = count(a.summary.rank) - count(b.summary.rank);
  if (rank) return rank;
  return a.summary.name < b.summary.name ? -1 : a.summary.name > b.summary.name ? 1 : 0;
}

function buildRow() {
  const item = el("li", "project");
  const head = el("div", "project-head");
  const link = el("a");
  head.append(link, el("span", "badge attention"), el("span", "badge status"));
  const meta = el("div", "meta");
  meta.append(el("span", "progress-text"), el("span", "muted agents-text"), el("span", "muted ago"));
  const bar = el("div", "mini-bar");
  bar.append(el("div", "mini-passing"));
  item.append(head, meta, bar, el("ul", "project-alerts"), el("div", "path"));
  return item;
}

function fillRow(item, summary) {
  item.dataset.name = summary.name;
  item.dataset.attention = String(summary.attention);
  item.dataset.loaded = String(Boolean(summary.loaded));
  item.classList.toggle("missing", !summary.exists);
  const link = item.querySelector("a");
  link.textContent = summary.name;
  link.href = `/projects/${encodeURIComponent(summary.name)}`;
  const attention = item.querySelector(".attention");
  attention.textContent = ATTENTION_LABELS[summary.attention] || String(summary.attention);
  attention.dataset.attention = String(summary.attention);
  attention.hidden = summary.attention === "idle" || summary.attention === "running";
  const status = item.querySelector(".status");
  const statusText = summary.agent_status
    ? STATUS_LABELS[summary.agent_status] || summary.agent_status
    : summary.loaded
      ? "no run yet"
      : "not open here";
  status.textContent = statusText;
  status.dataset.status = String(summary.agent_status ?? "unknown");
  status.title = summary.loaded
    ? "agent status"
    : "as its journal last left it: nothing has fed or watched this project since the server started (or it was closed idle)";
  const progress = summary.progress;
  const percentage = progress ? count(progress.percentage) : 0;
  item.querySelector(".progress-text").textContent = progress
    ? `${count(progress.passing)}/${count(progress.total)} passing · ${percentage}%`
    : "no progress yet";
  item.querySelector(".mini-passing").style.width = `${Math.min(100, Math.max(0, percentage))}%`;
  const agents = Array.isArray(summary.agents) ? summary.agents : [];
  const names = agents.slice(0, LISTED_AGENTS).map((agent) => {
    const feature = agent.feature != null ? ` #${agent.feature}` : "";
    return `${agent.name}${feature}`;
  });
  if (agents.length > LISTED_AGENTS) names.push(`+${agents.length - LISTED_AGENTS}`);
  item.querySelector(".agents-text").textContent = agents.length
    ? `${agents.length} active: ${names.join(", ")}`
    : "no active agent";
  const ago_ = item.querySelector(".ago");
  ago_.dataset.timestamp = String(summary.last_activity ?? "");
  ago_.textContent = summary.last_activity ? `active ${ago(summary.last_activity)}` : "";
  const alerts = Array.isArray(summary.alerts) ? summary.alerts : [];
  item.querySelector(".project-alerts").replaceChildren(
    ...alerts.map((alert) => {
      const line = el("li", "project-alert", alert.message);
      line.dataset.severity = String(alert.severity);
      line.dataset.kind = String(alert.kind);
      return line;
    }),
  );
  const path = summary.path ?? "(no directory on this machine)";
  item.querySelector(".path").textContent = summary.exists ? path : `${path} (missing)`;
}

function tickAges() {
  for (const node of $("projects").querySelectorAll(".ago")) {
    if (node.dataset.timestamp) node.textContent = `active ${ago(node.dataset.timestamp)}`;
  }
}
