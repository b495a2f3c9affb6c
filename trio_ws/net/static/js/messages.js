// The live view's messages (PROTOCOL.md 3): each one updates plain state and marks
// what changed. Unknown message types and fields are ignored.

import { $ } from "./dom.js";
import { clearBanner, clearServerBanners, showBanner } from "./banners.js";
import { clearCards, onAgentAlert, onAgentUpdate } from "./agents.js";
import { clearChart, loadHistory } from "./chart.js";
import { clearLogs, onDevLog, onLog } from "./log.js";
import { clearShots, onBrowserScreenshot, subscribeShots } from "./shots.js";
import { notifyAlert } from "./notify.js";
import { connection, emptyView, live, touch } from "./state.js";
import { onAgentStatus, onDevStatus, onOrchestrator, onProgress, setConnection } from "./status.js";

const CONNECTION_TYPES = new Set([
  "hello", "resumed", "resync", "pong", "warning", "error", "browser_screenshot",
]);

const handlers = new Map([
  ["hello", onHello],
  ["resumed", () => { document.body.dataset.sync = "resumed"; }],
  ["resync", onResync],
  ["error", (message) => { connection.lastError = String(message.content); }],
  ["warning", onWarning],
  ["progress", onProgress],
  ["agent_status", onRunStatus],
  ["browser_screenshot", onBrowserScreenshot],
  ["log", onLog],
  ["agent_update", onAgentUpdate],
  ["orchestrator_update", onOrchestrator],
  ["dev_log", onDevLog],
  ["dev_server_status", onDevStatus],
  ["alert", onAlert],
]);

export function handle(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return;
  }
  dispatch(message);
}

export function dispatch(message) {
  // One message object, from the websocket or from a recorded run's /state and /events
  // (replay.js feeds those through here, so a replay shows what the live view showed).
  if (!message || typeof message !== "object" || Array.isArray(message)) return;
  const handler = handlers.get(message.type);
  if (!handler) return;
  if (Number.isInteger(message.seq) && !CONNECTION_TYPES.has(message.type)) {
    // Snapshot messages keep their old seq; the head never moves back.
    connection.lastSeq = Math.max(connection.lastSeq ?? 0, message.seq);
  }
  handler(message);
  connection.previousType = message.type;
}

export function reset() {
  // Forget what the last sync built: a fresh one (or a resync's snapshot) follows.
  clearCards();
  live.view = emptyView();
  clearChart();
  clearLogs();
  clearServerBanners();
  clearShots();
  for (const part of ["status", "progress", "orchestrator", "dev", "agents", "log", "filter", "chart"]) {
    touch(part);
  }
}

function onHello(message) {
  const resuming = connection.askedSince && message.epoch === connection.epoch;
  connection.helloSeq = Number.isInteger(message.seq) ? message.seq : null;
  if (!resuming) {
    // A fresh sync follows (new history, or first connect): rebuild from it.
    reset();
    connection.lastSeq = connection.helloSeq;
    document.body.dataset.syncSeq = String(connection.lastSeq);
    document.body.dataset.sync = "fresh";
  }
  connection.epoch = String(message.epoch);
  connection.attempt = 0;
  connection.lastError = null;
  $("epoch").textContent = `epoch ${connection.epoch}`;
  document.body.dataset.epoch = connection.epoch;
  setConnection("live", "");
  subscribeShots();
  if (!resuming) loadHistory();
}

function onRunStatus(message) {
  onAgentStatus(message);
  if (message.status === "stopped" || message.status === "crashed") clearShots();
}

function onResync(message) {
  // The snapshot that follows replaces everything we show; live events go on
  // after the point the resync names (PROTOCOL 3.1; before revision 2 a server
  // named none, and hello's seq was the point right after hello).
  reset();
  if (Number.isInteger(message.seq)) {
    connection.lastSeq = message.seq;
  } else if (connection.previousType === "hello") {
    connection.lastSeq = connection.helloSeq;
  }
  connection.resyncs += 1;
  document.body.dataset.syncSeq = String(connection.lastSeq);
  document.body.dataset.sync = "resync";
  document.body.dataset.resyncs = String(connection.resyncs);
  document.body.dataset.resyncReason = String(message.reason);
  loadHistory();
}

function onWarning(message) {
  const source = String(message.source ?? "server");
  showBanner(source, message.content ?? "", true);
}

function onAlert(message) {
  // A raised alert stands as a banner until it is resolved (the snapshot repeats the
  // standing ones after every sync, as it does warnings), on its agent's card when it
  // names one, and a new one is a browser notification when the user asked for them.
  onAgentAlert(message);
  notifyAlert(message);
  const key = `alert ${String(message.id)}`;
  if (message.state === "resolved") {
    clearBanner(key);
    return;
  }
  const where = [message.agent, message.feature != null ? `#${message.feature}` : null]
    .filter(Boolean)
    .join(" ");
  const text = where ? `${message.message} (${where})` : String(message.message ?? "");
  showBanner(key, text, true, String(message.kind ?? "alert"));
  document.querySelector(`.banner[data-source="${CSS.escape(key)}"]`).dataset.severity =
    String(message.severity ?? "warning");
}
