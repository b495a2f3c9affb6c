// The agent cards: one per agent from its latest agent_update; a finished one
// lingers a few seconds, then leaves. Live, seconds of the wall clock (a timer); in a
// replay, seconds of the replayed run (dom.js `clock`), so a paused replay keeps the
// card and 100x takes it away at 100x: the replay calls `expireCards` as its clock moves.

import { $, el, ago, clock, hueClass } from "./dom.js";
import { live, touch } from "./state.js";

const CARD_LINGER_MS = 3000;

export const cards = new Map(); // key -> {message, node, timer, leaveAt}
const dirtyCards = new Set();
const agentAlerts = new Map(); // alert id -> the standing alert about one agent (by name)
const SEVERITY_ORDER = { error: 0, warning: 1, info: 2 };

export function clearCards() {
  for (const card of cards.values()) clearTimeout(card.timer);
  cards.clear();
  dirtyCards.clear();
  agentAlerts.clear(); // the snapshot repeats the standing ones
  $("agents").replaceChildren();
}

export function onAgentAlert(message) {
  // An alert naming an agent (a silent one, say) shows on that agent's card too.
  if (typeof message.agent !== "string" || !message.agent) return;
  const id = String(message.id);
  if (message.state === "resolved") {
    agentAlerts.delete(id);
  } else {
    agentAlerts.set(id, message);
  }
  for (const [key, card] of cards) {
    if (String(card.message.agentName) === message.agent) dirtyCards.add(key);
  }
  touch("agents");
}

function alertFor(name) {
  // The most severe standing alert about the agent called ``name``, the newest of those.
  let found = null;
  for (const alert of agentAlerts.values()) {
    if (alert.agent !== name) continue;
    const rank = SEVERITY_ORDER[alert.severity] ?? 1;
    if (found === null || rank <= (SEVERITY_ORDER[found.severity] ?? 1)) found = alert;
  }
  return found;
}

function cardKey(message) {
  if (Number.isInteger(message.agentIndex) && message.agentIndex >= 0) {
    return String(message.agentIndex);
  }
  return `synthetic-${message.seq ?? Math.random()}`;
}

export function onAgentUpdate(message) {
  const key = cardKey(message);
  if (Number.isInteger(message.agentIndex) && message.agentIndex >= 0) {
    live.view.names.set(message.agentIndex, String(message.agentName));
  }
  let card = cards.get(key);
  if (!card) {
    card = { message, node: null, timer: null, leaveAt: null };
    cards.set(key, card);
    touch("filter");
  }
  card.message = message;
  clearTimeout(card.timer);
  card.timer = null;
  card.leaveAt = null;
  if (message.state === "success" || message.state === "error") {
    card.leaveAt = finishedAt(message) + CARD_LINGER_MS;
    if (!live.replay) card.timer = setTimeout(() => removeCard(key), CARD_LINGER_MS);
  }
  dirtyCards.add(key);
  touch("agents");
}

function finishedAt(message) {
  // When the agent finished on the clock its card leaves by: in a replay, the moment the
  // run recorded (a seek may apply it after the replay's clock moved on); live, now.
  if (live.replay) {
    const time = Date.parse(message.timestamp);
    if (!Number.isNaN(time)) return time;
  }
  return clock.now();
}

export function expireCards() {
  // The finished agents' cards whose moment to leave has come on the replay's clock.
  const now = clock.now();
  for (const [key, card] of [...cards]) {
    if (card.leaveAt !== null && card.leaveAt <= now) removeCard(key);
  }
}

export function removeCard(key) {
  const card = cards.get(key);
  if (!card) return;
  clearTimeout(card.timer);
  if (card.node) card.node.remove();
  cards.delete(key);
  dirtyCards.delete(key);
  touch("agents");
  touch("filter");
}

export function removeAllCards() {
  for (const key of [...cards.keys()]) removeCard(key);
}

export function renderCards() {
  const container = $("agents");
  for (const key of dirtyCards) {
    const card = cards.get(key);
    if (!card) continue;
    if (!card.node) {
      card.node = buildCard();
      insertCard(container, card.node, key);
    }
    fillCard(card.node, card.message);
  }
  dirtyCards.clear();
  $("agents-empty").hidden = cards.size > 0;
  // A finished agent's card stays a moment (its timer): count it apart, so "4 active"
  // never sits over five cards.
  const active = [...cards.values()].filter((card) => card.leaveAt === null).length;
  const finished = cards.size - active;
  const counts = finished ? `${active} active · ${finished} just finished` : `${active} active`;
  $("agent-count").textContent = cards.size ? counts : "";
}

function insertCard(container, node, key) {
  // Real agents in index order; synthetic completions (no index) at the end.
  node.dataset.key = key;
  const index = Number(key);
  if (!Number.isNaN(index)) {
    for (const other of container.children) {
      const otherIndex = Number(other.dataset.key);
      if (Number.isNaN(otherIndex) || otherIndex > index) {
        container.insertBefore(node, other);
        return;
      }
    }
  }
  container.append(node);
}

function buildCard() {
  const node = el("article", "agent");
  const top = el("div", "agent-top");
  const avatar = el("div", "avatar");
  const id = el("div", "agent-id");
  id.append(el("span", "agent-name"), el("span", "agent-features"));
  top.append(avatar, id, el("span", "agent-type"));
  const foot = el("div", "agent-foot");
  foot.append(el("span", "state"), el("span", "since"));
  const alert = el("p", "agent-alert");
  alert.hidden = true;
  node.append(top, alert, el("p", "agent-thought"), foot);
  return node;
}

function fillCard(node, message) {
  const name = String(message.agentName ?? "Unknown");
  const state = String(message.state ?? "");
  const type = message.agentType === "testing" ? "testing" : "coding";
  node.dataset.state = state;
  node.dataset.name = name;
  node.classList.toggle("leaving", state === "success" || state === "error");
  const avatar = node.querySelector(".avatar");
  avatar.className = `avatar ${hueClass(message.agentIndex)}`;
  avatar.textContent = name.slice(0, 1).toUpperCase();
  node.querySelector(".agent-name").textContent = name;
  node.querySelector(".agent-features").textContent = featureText(message);
  const typeTag = node.querySelector(".agent-type");
  typeTag.textContent = type;
  typeTag.dataset.type = type;
  const stateTag = node.querySelector(".state");
  stateTag.textContent = state;
  stateTag.dataset.state = state;
  const thought = node.querySelector(".agent-thought");
  const hasThought = typeof message.thought === "string" && message.thought !== "";
  thought.textContent = hasThought ? message.thought : "no thought yet";
  thought.classList.toggle("none", !hasThought);
  const alert = alertFor(name);
  const alertLine = node.querySelector(".agent-alert");
  alertLine.hidden = alert === null;
  alertLine.textContent = alert === null ? "" : String(alert.message ?? "");
  alertLine.dataset.severity = alert === null ? "" : String(alert.severity ?? "warning");
  alertLine.dataset.kind = alert === null ? "" : String(alert.kind ?? "");
  node.classList.toggle("alerting", alert !== null);
  const since = node.querySelector(".since");
  since.dataset.timestamp = String(message.timestamp ?? "");
  since.textContent = ago(message.timestamp);
}

export function featureText(message) {
  if (typeof message.featureName === "string" && message.featureName) return message.featureName;
  const ids = Array.isArray(message.featureIds) ? message.featureIds : [message.featureId];
  return ids.map((id) => `#${id}`).join(", ");
}

export function tickCards() {
  for (const since of $("agents").querySelectorAll(".since")) {
    since.textContent = ago(since.dataset.timestamp);
  }
}

export function featureAgents() {
  // Feature id -> the active agents working on it, from each one's latest agent_update.
  const byFeature = new Map();
  for (const card of cards.values()) {
    const message = card.message;
    if (message.state === "success" || message.state === "error") continue;
    if (!Number.isInteger(message.agentIndex) || message.agentIndex < 0) continue;
    const ids = Array.isArray(message.featureIds) ? message.featureIds : [message.featureId];
    for (const id of ids) {
      if (!Number.isInteger(id)) continue;
      if (!byFeature.has(id)) byFeature.set(id, []);
      byFeature.get(id).push({ name: String(message.agentName ?? "agent"), index: message.agentIndex });
    }
  }
  return byFeature;
}
