// The live view's websocket: connect with since/epoch to resume, reconnect with
// jittered backoff, ping through silence, and send control messages.

import { wsBase } from "./dom.js";
import { clearBanner, showBanner } from "./banners.js";
import { handle } from "./messages.js";
import { connection, live } from "./state.js";
import { setConnection } from "./status.js";

const LOG_BACKLOG = 100; // log lines the server replays on a fresh sync
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const PING_EVERY_MS = 20000;
const SILENCE_LIMIT_MS = 45000;

export function openConnection() {
  setConnection("connecting", "");
  setInterval(keepAlive, PING_EVERY_MS);
  connect();
}

function connect() {
  // Explicit: the server's default (0) suits clients that append what they get.
  const query = new URLSearchParams({ backlog: String(LOG_BACKLOG) });
  if (connection.epoch !== null && connection.lastSeq !== null) {
    query.set("since", String(connection.lastSeq));
    query.set("epoch", connection.epoch);
  }
  connection.askedSince = query.has("since");
  const url = `${wsBase()}/ws/projects/${encodeURIComponent(live.projectName)}?${query}`;
  connection.connects += 1;
  document.body.dataset.connects = String(connection.connects);
  let socket;
  try {
    socket = new WebSocket(url);
  } catch (error) {
    closed(1006, String(error.message || error));
    return;
  }
  connection.socket = socket;
  connection.lastHeard = Date.now();
  socket.onmessage = (event) => {
    if (socket !== connection.socket) return;
    connection.lastHeard = Date.now();
    handle(event.data);
  };
  socket.onclose = (event) => {
    if (socket !== connection.socket) return;
    connection.socket = null;
    closed(event.code, event.reason);
  };
}

function closed(code, reason) {
  if (code >= 4000 && code <= 4999) {
    // The server said why and asked us not to come back.
    const why = connection.lastError || reason || `closed with code ${code}`;
    setConnection("closed", why);
    showBanner("connection", `${why}. This page will not reconnect; reload it to try again.`);
    return;
  }
  const why = code === 1001 ? "server going away" : reason || `connection lost (${code})`;
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** connection.attempt);
  const delay = cap / 2 + Math.random() * (cap / 2);
  connection.attempt += 1;
  setConnection("reconnecting", `${why}; retry ${connection.attempt} in ${(delay / 1000).toFixed(1)} s`);
  setTimeout(connect, delay);
}

function keepAlive() {
  const socket = connection.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (Date.now() - connection.lastHeard > SILENCE_LIMIT_MS) {
    connection.socket = null;
    socket.close();
    closed(1006, "no answer from the server");
    return;
  }
  socket.send(JSON.stringify({ type: "ping" }));
}

export function sendControl(button) {
  const socket = connection.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  const action = button.dataset.action;
  if (action === "stop" && !window.confirm(`Stop the run of ${live.projectName}?`)) return;
  clearBanner("control");
  socket.send(JSON.stringify({ type: "control", action }));
  button.classList.add("sent");
  setTimeout(() => button.classList.remove("sent"), 1200);
}
