// Live browser screenshots (issue 19 item 3): asked for after each hello, the latest
// one per session kept, shown as a small picture on the card of the same agentIndex.
// Ephemeral: forgotten when the run stops or crashes and at every fresh sync.

import { $ } from "./dom.js";
import { connection, touch } from "./state.js";

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const latest = new Map(); // sessionName -> browser_screenshot message

export function subscribeShots() {
  // A new connection starts unsubscribed: ask again after every hello.
  const socket = connection.socket;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "browser_view_subscribe" }));
  }
}

export function onBrowserScreenshot(message) {
  if (typeof message.sessionName !== "string" || !Number.isInteger(message.agentIndex)) return;
  if (typeof message.imageData !== "string" || !BASE64.test(message.imageData)) return;
  latest.set(message.sessionName, message);
  touch("shots");
}

export function clearShots() {
  latest.clear();
  touch("shots");
}

export function renderShots() {
  // The newest picture of each agent on its card; a card without one shows none.
  const byAgent = new Map();
  for (const message of latest.values()) {
    const held = byAgent.get(message.agentIndex);
    if (!held || String(message.timestamp) > String(held.timestamp)) {
      byAgent.set(message.agentIndex, message);
    }
  }
  for (const card of $("agents").querySelectorAll("article.agent")) {
    const message = byAgent.get(Number(card.dataset.key));
    let img = card.querySelector("img.agent-shot");
    if (!message) {
      if (img) img.remove();
      continue;
    }
    if (!img) {
      img = document.createElement("img");
      img.className = "agent-shot";
      card.querySelector(".agent-top").after(img);
    }
    const src = `data:image/png;base64,${message.imageData}`;
    if (img.getAttribute("src") !== src) img.setAttribute("src", src);
    img.alt = `${String(message.sessionName)}'s browser`;
    img.title = `${String(message.sessionName)} · ${String(message.timestamp ?? "")}`;
  }
}
