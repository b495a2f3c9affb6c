// The run at a glance: the connection pill, the agent's status and its controls,
// the progress bar, the orchestrator and the dev server.

import { $, el, clockTime, count, STATUS_LABELS } from "./dom.js";
import { clearBanner } from "./banners.js";
import { removeAllCards } from "./agents.js";
import { progressChanged } from "./board.js";
import { addPoint, addStatus, liveTime } from "./chart.js";
import { connection, live, touch } from "./state.js";

const MAX_EVENTS = 10;

// Agent statuses in which each control makes sense (trio_ws/net/publish.py ALLOWED_FROM).
const ALLOWED_FROM = {
  pause: ["running"],
  resume: ["paused"],
  graceful_pause: ["running"],
  graceful_resume: ["pausing", "paused_graceful"],
  stop: ["running", "paused", "pausing", "paused_graceful"],
};

// -- messages ----------------------------------------------------------------

export function onProgress(message) {
  const view = live.view;
  view.progress = {
    passing: count(message.passing),
    in_progress: count(message.in_progress),
    total: count(message.total),
    percentage: count(message.percentage),
    needs_human_input: count(message.needs_human_input),
  };
  addPoint(message, liveTime(message));
  progressChanged(view.progress);
  clearBanner("progress");
  touch("progress");
  touch("chart");
}

export function onAgentStatus(message) {
  const view = live.view;
  view.agentStatus = String(message.status);
  addStatus(message, liveTime(message));
  touch("chart");
  clearBanner("producer");
  if (view.agentStatus === "stopped" || view.agentStatus === "crashed") removeAllCards();
  touch("status");
}

export function onOrchestrator(message) {
  const view = live.view;
  view.orchestrator = message;
  view.events.unshift(message);
  if (view.events.length > MAX_EVENTS) view.events.length = MAX_EVENTS;
  touch("orchestrator");
}

export function onDevStatus(message) {
  live.view.devStatus = String(message.status);
  live.view.devUrl = typeof message.url === "string" ? message.url : null;
  touch("dev");
}

// -- rendering ---------------------------------------------------------------

export function setConnection(state, detail) {
  connection.state = state;
  const pill = $("connection");
  pill.hidden = false;
  pill.dataset.state = state;
  const label = detail ? `${state} · ${detail}` : state;
  $("connection-text").textContent = label;
  pill.title = label;
  renderControls();
}

export function renderStatus() {
  const badge = $("agent-status");
  badge.dataset.status = live.view.agentStatus;
  badge.textContent = STATUS_LABELS[live.view.agentStatus] || live.view.agentStatus;
  renderControls();
}

function renderControls() {
  const isLive = connection.state === "live";
  for (const button of $("controls").querySelectorAll("button[data-action]")) {
    const allowed = ALLOWED_FROM[button.dataset.action] || [];
    button.disabled = !isLive || !allowed.includes(live.view.agentStatus);
  }
}

export function renderProgress() {
  const { passing, in_progress: inProgress, total, percentage } = live.view.progress;
  const needs = live.view.progress.needs_human_input;
  $("passing").textContent = passing;
  $("in-progress").textContent = inProgress;
  $("needs-input").textContent = needs;
  $("needs-input").classList.toggle("attention", needs > 0);
  $("total").textContent = total;
  $("percentage").textContent = `${percentage}%`;
  const share = (part) => (total > 0 ? `${Math.min(100, (part / total) * 100)}%` : "0");
  $("bar-passing").style.width = share(passing);
  $("bar-progress").style.width = share(Math.min(inProgress, Math.max(0, total - passing)));
  $("bar").setAttribute("aria-label", `${passing} of ${total} passing, ${inProgress} in progress`);
  document.title = `${percentage}% · ${live.projectName} · trio-ws`;
}

export function renderOrchestrator() {
  const view = live.view;
  const current = view.orchestrator;
  const badge = $("orch-state");
  const state = current ? String(current.state) : "idle";
  badge.textContent = state;
  badge.dataset.state = state;
  $("orch-coding").textContent = current ? count(current.codingAgents) : 0;
  $("orch-testing").textContent = current ? count(current.testingAgents) : 0;
  $("orch-max").textContent = current ? count(current.maxConcurrency) : "–";
  $("orch-ready").textContent = current ? count(current.readyCount) : 0;
  $("orch-blocked").textContent = current ? count(current.blockedCount) : 0;
  $("orch-events").replaceChildren(
    ...view.events.map((event) => {
      const item = el("li");
      const body = el("div", null);
      body.append(el("span", "kind", event.eventType), document.createTextNode(String(event.message ?? "")));
      item.append(el("time", null, clockTime(event.timestamp)), body);
      return item;
    }),
  );
  $("orch-empty").hidden = view.events.length > 0;
}

export function renderDev() {
  const badge = $("dev-status");
  badge.textContent = live.view.devStatus;
  badge.dataset.status = live.view.devStatus;
  const link = $("dev-link");
  const url = safeHttpUrl(live.view.devUrl);
  link.hidden = url === null;
  $("dev-nolink").hidden = url !== null;
  if (url !== null) {
    link.href = url;
    link.textContent = url;
  }
}

function safeHttpUrl(text) {
  if (typeof text !== "string") return null;
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}
