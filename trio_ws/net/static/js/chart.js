// Passing over time: a step chart of passing and total features, with a marker
// at each agent status change.
//
// Points are keyed by seq, so the history, the snapshot's replay and live
// events can overlap without a point counted twice.

import { $, svg, clockTime, count, STATUS_LABELS } from "./dom.js";
import { connection, live, touch } from "./state.js";

const CHART_HEIGHT = 150; // px; fixed, so the page never jumps when the chart fills
const CHART_PAD = { left: 34, right: 12, top: 10, bottom: 22 };
const MAX_CHART_DOTS = 300; // beyond this the line alone carries the shape

const chart = { points: new Map(), statuses: new Map(), width: 0 };

export function clearChart() {
  chart.points.clear();
  chart.statuses.clear();
}

export function chartWidthChanged() {
  return Math.round($("chart").getBoundingClientRect().width) !== chart.width;
}

export function liveTime(message) {
  // Events carry a timestamp; a live one from an older server gets the arrival time.
  const isLive = Number.isInteger(message.seq) && message.seq > (connection.helloSeq ?? Infinity);
  return isLive ? Date.now() : null;
}

function eventTime(message, fallback) {
  const time = Date.parse(message.timestamp);
  return Number.isNaN(time) ? fallback : time;
}

export function addPoint(message, fallback = null) {
  const time = eventTime(message, fallback);
  if (!Number.isInteger(message.seq) || time === null) return;
  chart.points.set(message.seq, {
    seq: message.seq,
    time,
    passing: count(message.passing),
    total: count(message.total),
  });
}

export function addStatus(message, fallback = null) {
  const time = eventTime(message, fallback);
  if (!Number.isInteger(message.seq) || time === null) return;
  chart.statuses.set(message.seq, { seq: message.seq, time, status: String(message.status) });
}

export async function loadHistory() {
  const epoch = connection.epoch;
  const path = `/api/projects/${encodeURIComponent(live.projectName)}/progress-history`;
  try {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new Error(body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
    }
    if (!body || !Array.isArray(body.points) || !Array.isArray(body.statuses)) {
      throw new Error(`${path} did not answer points and statuses`);
    }
    if (body.epoch !== epoch || connection.epoch !== epoch) return; // a newer sync asks again
    for (const point of body.points) addPoint(point);
    for (const status of body.statuses) addStatus(status);
    $("chart-note").textContent = "";
  } catch (error) {
    $("chart-note").textContent = `earlier progress unavailable: ${error.message}`;
  }
  touch("chart");
}

export function renderChart() {
  const node = $("chart");
  const width = Math.max(160, Math.round(node.getBoundingClientRect().width));
  chart.width = width;
  const height = CHART_HEIGHT;
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const bySeq = (a, b) => a.seq - b.seq;
  const points = [...chart.points.values()].sort(bySeq);
  const statuses = [...chart.statuses.values()].sort(bySeq);
  node.dataset.points = String(points.length);
  node.dataset.markers = String(statuses.length);
  $("chart-empty").hidden = points.length > 0;
  if (points.length === 0) {
    node.replaceChildren();
    $("chart-range").textContent = "";
    return;
  }
  const times = [...points, ...statuses].map((entry) => entry.time);
  const start = Math.min(...times);
  const end = Math.max(start + 1000, Math.max(...times));
  const top = Math.max(1, ...points.map((point) => Math.max(point.total, point.passing)));
  const { left, right, top: padTop, bottom } = CHART_PAD;
  const x = (time) => left + ((time - start) / (end - start)) * (width - left - right);
  const y = (value) => height - bottom - (value / top) * (height - padTop - bottom);
  const steps = (field) => {
    // A count holds until the next event changes it: a step line, drawn to the end.
    let path = `M${x(points[0].time).toFixed(1)},${y(points[0][field]).toFixed(1)}`;
    for (const point of points.slice(1)) {
      path += `H${x(point.time).toFixed(1)}V${y(point[field]).toFixed(1)}`;
    }
    return `${path}H${x(end).toFixed(1)}`;
  };
  const parts = [
    svg("line", { x1: left, x2: width - right, y1: y(0), y2: y(0) }, "axis"),
    label(left - 6, y(top) + 4, String(top), "end"),
    label(left - 6, y(0) + 4, "0", "end"),
    label(left, height - 6, clockTime(start), "start"),
    label(width - right, height - 6, clockTime(end), "end"),
  ];
  for (const status of statuses) {
    const marker = svg("line", { x1: x(status.time), x2: x(status.time), y1: padTop, y2: y(0) }, "marker");
    marker.dataset.status = status.status;
    const tip = svg("title", {});
    tip.textContent = `${STATUS_LABELS[status.status] || status.status} at ${clockTime(status.time)}`;
    marker.append(tip);
    parts.push(marker);
  }
  parts.push(svg("path", { d: steps("total") }, "line-total"), svg("path", { d: steps("passing") }, "line-passing"));
  if (points.length <= MAX_CHART_DOTS) {
    for (const point of points) {
      const dot = svg("circle", { cx: x(point.time), cy: y(point.passing), r: 2.5 }, "pt");
      const tip = svg("title", {});
      tip.textContent = `${point.passing} of ${point.total} passing at ${clockTime(point.time)}`;
      dot.append(tip);
      parts.push(dot);
    }
  }
  node.replaceChildren(...parts);
  const last = points[points.length - 1];
  node.setAttribute("aria-label", `passing features over time: ${last.passing} of ${last.total} now`);
  $("chart-range").textContent = `${points.length} point${points.length === 1 ? "" : "s"}`;
}

function label(atX, atY, content, anchor) {
  const node = svg("text", { x: atX, y: atY, "text-anchor": anchor }, "tick");
  node.textContent = content;
  return node;
}
