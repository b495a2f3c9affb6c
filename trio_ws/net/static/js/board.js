// The features board: pending, in progress, done.
//
// Fetched on load and again (debounced) whenever a progress event changes the
// counts. The old board stays until the new one arrives; an error replaces it
// with the server's detail, never with an empty board.

import { $, el, clockTime, hueClass } from "./dom.js";
import { featureAgents } from "./agents.js";
import { live, touch } from "./state.js";

const BOARD_DEBOUNCE_MS = 400; // progress can change several times a second
const BOARD_RETRY_MS = 5000; // after an error, even if no progress event comes
const BOARD_COLUMNS = ["pending", "in-progress", "done"];

let transform = null; // replay.js: the features at the replayed moment, or why not known

export function setBoardTransform(fn) {
  // fn(features) -> {features} or {error}: what the board shows instead of the features now.
  transform = fn;
  touch("board");
}

const board = {
  features: null, // the last good list
  error: null, // the last failure's text, shown instead of the board
  progressKey: null,
  timer: null,
  due: 0,
  inFlight: false,
  again: false,
  agentKey: "",
  loadedAt: null,
};

export function progressChanged(progress) {
  // Read the board again only when the counts moved.
  const key = ["passing", "in_progress", "total", "needs_human_input"]
    .map((name) => progress[name])
    .join("/");
  if (key !== board.progressKey) {
    board.progressKey = key;
    scheduleBoard(BOARD_DEBOUNCE_MS);
  }
}

function scheduleBoard(delay) {
  // A pending read is kept, not pushed back: a run whose counts change every
  // few hundred ms still gets its board read at least once per delay.
  const due = Date.now() + delay;
  if (board.timer !== null && board.due <= due) return;
  clearTimeout(board.timer);
  board.due = due;
  board.timer = setTimeout(loadFeatures, delay);
}

export async function loadFeatures() {
  board.timer = null;
  if (board.inFlight) {
    board.again = true;
    return;
  }
  board.inFlight = true;
  const path = `/api/projects/${encodeURIComponent(live.projectName)}/features`;
  try {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
      board.error = `Cannot show the features (HTTP ${response.status}): ${detail}`;
    } else if (!body || !Array.isArray(body.features)) {
      board.error = `Cannot show the features: ${path} did not answer a feature list`;
    } else {
      board.features = body.features;
      board.error = null;
      board.loadedAt = Date.now();
    }
  } catch (error) {
    board.error = `Cannot show the features: ${error.message}`;
  }
  board.inFlight = false;
  touch("board");
  if (board.again) {
    board.again = false;
    loadFeatures();
  } else if (board.error !== null && board.timer === null) {
    scheduleBoard(BOARD_RETRY_MS);
  }
}

export function agentsOnFeaturesChanged() {
  const key = [...featureAgents()]
    .map(([id, agents]) => `${id}:${agents.map((agent) => agent.name).join(",")}`)
    .join(";");
  if (key === board.agentKey) return false;
  board.agentKey = key;
  return true;
}

export function renderBoard() {
  const message = $("board-message");
  const columnsNode = $("board");
  if (board.error !== null || board.features === null) {
    message.textContent = board.error ?? "Loading the features…";
    message.dataset.kind = board.error !== null ? "error" : "loading";
    message.hidden = false;
    columnsNode.hidden = true;
    return;
  }
  const shown = transform ? transform(board.features) : { features: board.features };
  if (shown.error) {
    message.textContent = shown.error;
    message.dataset.kind = "unknown";
    message.hidden = false;
    columnsNode.hidden = true;
    return;
  }
  message.hidden = true;
  columnsNode.hidden = false;
  const agents = featureAgents();
  const columns = Object.fromEntries(BOARD_COLUMNS.map((name) => [name, []]));
  for (const feature of shown.features) {
    const column = feature.passes ? "done" : feature.in_progress ? "in-progress" : "pending";
    columns[column].push(feature);
  }
  // Features waiting for a human lead their column; the rest keep priority order.
  const flaggedFirst = (a, b) => Number(Boolean(b.needs_human_input)) - Number(Boolean(a.needs_human_input));
  for (const name of BOARD_COLUMNS) {
    const features = columns[name].sort(flaggedFirst);
    $(`col-${name}`).replaceChildren(...features.map((feature) => featureCard(feature, agents.get(feature.id))));
    $(`n-${name}`).textContent = features.length;
  }
  const needs = shown.features.filter((feature) => feature.needs_human_input).length;
  const summary = `${shown.features.length} features${needs ? ` · ${needs} need input` : ""}`;
  const read = shown.note ?? `read ${clockTime(board.loadedAt)}`;
  $("board-updated").textContent = `${summary} · ${read}`;
}

function featureCard(feature, agents) {
  const item = el("li", "feature");
  item.dataset.id = String(feature.id);
  const title = el("div", "feature-title");
  title.append(el("span", "feature-id", `#${feature.id}`), el("span", "feature-name", feature.name));
  const foot = el("div", "feature-foot");
  foot.append(el("span", "feature-category", feature.category));
  if (feature.needs_human_input) {
    item.classList.add("needs-input");
    foot.append(el("span", "flag", "needs input"));
  }
  for (const agent of agents ?? []) {
    foot.append(el("span", `feature-agent ${hueClass(agent.index)}`, agent.name));
  }
  item.title = `#${feature.id} ${feature.name} · ${feature.category}`;
  item.append(title, foot);
  return item;
}
