// Browser notifications of newly raised alerts (the Notification API), while this tab
// is open. Permission is asked only from a click on the button, never on load; the
// choice to be notified is kept in localStorage, so a later visit with permission
// already granted notifies without asking again. A standing alert the snapshot
// repeats (its seq is at most hello's) is shown as a banner, never notified.

import { $ } from "./dom.js";
import { connection, live } from "./state.js";

const OPT_IN = "trio-ws-notify";
const notified = new Set(); // alert ids notified (or seen standing) in this tab
let enabled = false;

function supported() {
  return typeof window.Notification === "function";
}

function optedIn() {
  try {
    return localStorage.getItem(OPT_IN) === "on";
  } catch {
    return false; // storage refused (a private window): ask again next visit
  }
}

function remember(on) {
  try {
    localStorage.setItem(OPT_IN, on ? "on" : "off");
  } catch {
    // nothing to keep it in: this tab still follows the choice
  }
}

export function startNotifications() {
  const button = $("notify");
  button.hidden = false;
  if (!supported()) {
    button.disabled = true;
    button.textContent = "No notifications here";
    button.title = "this browser has no Notification API (or the page is not a secure context)";
    return;
  }
  enabled = Notification.permission === "granted" && optedIn();
  button.addEventListener("click", onClick);
  renderButton();
}

async function onClick() {
  if (enabled) {
    enabled = false;
    remember(false);
    renderButton();
    return;
  }
  let permission = Notification.permission;
  try {
    permission = await Notification.requestPermission();
  } catch {
    // an old browser's callback-only form: keep what it said before
  }
  enabled = permission === "granted";
  if (enabled) remember(true);
  renderButton();
}

function renderButton() {
  const button = $("notify");
  const permission = Notification.permission;
  const state = enabled ? "on" : permission === "denied" ? "denied" : "off";
  button.dataset.state = state;
  button.disabled = state === "denied";
  button.textContent = {
    on: "Notifications on",
    denied: "Notifications blocked",
    off: "Notify me",
  }[state];
  button.title = {
    on: "a notification for each new alert while this tab is open; click to stop",
    denied: "this browser blocks notifications for this site: allow them in its settings",
    off: "be notified of each new alert (a run crashed, needs input, goes quiet…)",
  }[state];
}

export function notifyAlert(message) {
  if (message.state !== "raised") return;
  const id = String(message.id);
  if (notified.has(id)) return;
  notified.add(id);
  const fresh =
    Number.isInteger(message.seq) &&
    Number.isInteger(connection.helloSeq) &&
    message.seq > connection.helloSeq;
  if (!fresh || !enabled || !supported() || Notification.permission !== "granted") return;
  const where = [message.agent, message.feature != null ? `#${message.feature}` : null]
    .filter(Boolean)
    .join(" ");
  const body = where ? `${message.message} (${where})` : String(message.message ?? "");
  const notification = new Notification(`${live.projectName}: ${String(message.kind)}`, {
    body,
    tag: `${live.projectName} ${id}`,
  });
  notification.onclick = () => window.focus();
}
