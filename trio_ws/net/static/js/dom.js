// Small DOM and formatting helpers shared by every panel.
// Text from the server only ever reaches the page through textContent.

const SVG_NS = "http://www.w3.org/2000/svg";

export const STATUS_LABELS = {
  stopped: "stopped",
  running: "running",
  paused: "paused",
  crashed: "crashed",
  pausing: "pausing…",
  paused_graceful: "paused (graceful)",
};

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function svg(tag, attributes, className) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (className) node.setAttribute("class", className);
  return node;
}

export function meta(name) {
  const node = document.querySelector(`meta[name="${name}"]`);
  return node ? node.getAttribute("content") : null;
}

export function count(value) {
  const number = Number(value);
  return Number.isFinite(number) ? number : 0;
}

export function clockTime(timestamp) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour12: false });
}

// "Now" for the ages the panels show: the wall clock live, the replayed moment in a replay.
export const clock = { now: () => Date.now() };

export function ago(timestamp) {
  const then = new Date(timestamp).getTime();
  if (Number.isNaN(then)) return "";
  const seconds = Math.max(0, Math.floor((clock.now() - then) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s ago`;
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m ago`;
}

export function hueClass(agentIndex) {
  return Number.isInteger(agentIndex) && agentIndex >= 0 ? `hue-${agentIndex % 10}` : "hue-x";
}

export function wsBase() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
}
