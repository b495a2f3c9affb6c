// The log tail (filterable by agent) and the dev server's log. The DOM never holds
// more than MAX_LOG_DOM lines; between frames only new lines are appended.

import { $, el, clockTime, hueClass } from "./dom.js";
import { clearBanner } from "./banners.js";
import { cards, featureText } from "./agents.js";
import { live, touch } from "./state.js";

const MAX_LOG_DOM = 500;
const MAX_LOG_KEPT = 2000;
const MAX_DEV_DOM = 200;

let logs = []; // {line, timestamp, agentIndex}
let pendingLogs = [];
let pendingDev = [];
let logRebuild = false;
let devRebuild = false;

export function clearLogs() {
  logs = [];
  pendingLogs = [];
  pendingDev = [];
  logRebuild = true;
  devRebuild = true;
}

export function rebuildLog() {
  logRebuild = true;
  touch("log");
}

export function onLog(message) {
  const entry = {
    line: String(message.line ?? ""),
    timestamp: message.timestamp,
    agentIndex: Number.isInteger(message.agentIndex) ? message.agentIndex : null,
  };
  logs.push(entry);
  if (logs.length > MAX_LOG_KEPT + MAX_LOG_DOM) logs = logs.slice(-MAX_LOG_KEPT);
  pendingLogs.push(entry);
  if (pendingLogs.length > MAX_LOG_DOM) {
    // More than a screenful since the last frame (or a hidden tab): redraw the tail.
    pendingLogs = [];
    logRebuild = true;
  }
  clearBanner("producer");
  touch("log");
}

export function onDevLog(message) {
  pendingDev.push({ line: String(message.line ?? ""), timestamp: message.timestamp });
  if (pendingDev.length > MAX_DEV_DOM) pendingDev = pendingDev.slice(-MAX_DEV_DOM);
  touch("dev-log");
}

export function renderFilter() {
  const select = $("log-filter");
  const chosen = select.value;
  const options = [["all", "all agents"]];
  const seen = new Set(["all"]);
  const active = [...cards.values()]
    .map((card) => card.message)
    .filter((message) => Number.isInteger(message.agentIndex) && message.agentIndex >= 0)
    .sort((a, b) => a.agentIndex - b.agentIndex);
  for (const message of active) {
    const value = String(message.agentIndex);
    if (seen.has(value)) continue;
    seen.add(value);
    options.push([value, `${message.agentName} · ${featureText(message)}`]);
  }
  if (!seen.has(chosen)) {
    const index = Number(chosen);
    options.push([chosen, `${live.view.names.get(index) ?? `agent ${chosen}`} (finished)`]);
  }
  const current = [...select.options].map((option) => `${option.value}\u0000${option.text}`);
  const wanted = options.map(([value, label]) => `${value}\u0000${label}`);
  if (current.join("\u0001") === wanted.join("\u0001")) return;
  select.replaceChildren(
    ...options.map(([value, label]) => {
      const option = el("option", null, label);
      option.value = value;
      return option;
    }),
  );
  select.value = chosen;
}

function logMatches(entry) {
  const chosen = $("log-filter").value;
  return chosen === "all" || entry.agentIndex === Number(chosen);
}

function logRow(entry) {
  const row = el("div", "line");
  const name =
    entry.agentIndex === null ? "" : live.view.names.get(entry.agentIndex) ?? `#${entry.agentIndex}`;
  row.append(
    el("time", null, clockTime(entry.timestamp)),
    el("span", `tag ${hueClass(entry.agentIndex)}`, name),
    el("span", "text", entry.line),
  );
  return row;
}

function appendRows(box, rows, limit, rebuild) {
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 32;
  const fragment = document.createDocumentFragment();
  fragment.append(...rows.slice(-limit));
  if (rebuild) box.replaceChildren(fragment);
  else box.append(fragment);
  let extra = box.childElementCount - limit;
  while (extra-- > 0) box.firstElementChild.remove();
  if (atBottom || rebuild) box.scrollTop = box.scrollHeight;
}

export function renderLog() {
  const source = logRebuild ? logs : pendingLogs;
  const rows = [];
  for (let i = source.length - 1; i >= 0 && rows.length < MAX_LOG_DOM; i--) {
    if (logMatches(source[i])) rows.push(source[i]);
  }
  rows.reverse();
  appendRows($("log"), rows.map(logRow), MAX_LOG_DOM, logRebuild);
  logRebuild = false;
  pendingLogs = [];
  const shown = $("log").childElementCount;
  $("log-count").textContent = `${shown} line${shown === 1 ? "" : "s"}`;
}

// A dev server that stamps its own lines (Vite: "12:00:01 PM [vite] ...") would show two
// times per line: such a line keeps only its own, in the same column.
const OWN_CLOCK = /^\[?\d{1,2}:\d{2}:\d{2}(?:\.\d+)?(?:\s?[AP]M)?\]?\s/;

export function renderDevLog() {
  const rows = pendingDev.map((entry) => {
    const row = el("div", "line");
    const own = OWN_CLOCK.exec(entry.line);
    const time = own ? own[0].trim() : clockTime(entry.timestamp);
    const text = own ? entry.line.slice(own[0].length) : entry.line;
    row.append(el("time", null, time), el("span", "text", text));
    return row;
  });
  appendRows($("dev-log"), rows, MAX_DEV_DOM, devRebuild);
  devRebuild = false;
  pendingDev = [];
}

export function renderHint() {
  const idle = !live.replay && live.view.agentStatus === "stopped" && logs.length === 0;
  $("producer-hint").hidden = !idle;
}
