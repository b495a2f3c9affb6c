// trio-ws dashboard: the project list at "/" and one project's live view at
// "/projects/{name}" (PROTOCOL.md section 3). Plain DOM, no framework, no build.
//
// Rules this file keeps:
// - Text from the server only ever reaches the page through textContent.
// - Messages update plain state and mark what changed; the DOM is written
//   once per animation frame, so a fast run costs one layout per frame, and
//   the log tail never holds more than MAX_LOG_DOM lines.
// - Unknown message types and fields are ignored.
"use strict";

(() => {
  const MAX_LOG_DOM = 500;
  const MAX_LOG_KEPT = 2000;
  const MAX_DEV_DOM = 200;
  const MAX_EVENTS = 10;
  const LOG_BACKLOG = 100; // log lines the server replays on a fresh sync
  const CARD_LINGER_MS = 3000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const PING_EVERY_MS = 20000;
  const SILENCE_LIMIT_MS = 45000;
  const LIST_REFRESH_MS = 5000;

  // Agent statuses in which each control makes sense (trio_ws/publish.py ALLOWED_FROM).
  const ALLOWED_FROM = {
    pause: ["running"],
    resume: ["paused"],
    graceful_pause: ["running"],
    graceful_resume: ["pausing", "paused_graceful"],
    stop: ["running", "paused", "pausing", "paused_graceful"],
  };
  const STATUS_LABELS = {
    stopped: "stopped",
    running: "running",
    paused: "paused",
    crashed: "crashed",
    pausing: "pausing…",
    paused_graceful: "paused (graceful)",
  };
  const CONNECTION_TYPES = new Set(["hello", "resumed", "resync", "pong", "warning", "error"]);

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function meta(name) {
    const node = document.querySelector(`meta[name="${name}"]`);
    return node ? node.getAttribute("content") : null;
  }

  function count(value) {
    const number = Number(value);
    return Number.isFinite(number) ? number : 0;
  }

  function clockTime(timestamp) {
    const date = new Date(timestamp);
    if (Number.isNaN(date.getTime())) return "";
    return date.toLocaleTimeString([], { hour12: false });
  }

  function ago(timestamp) {
    const then = new Date(timestamp).getTime();
    if (Number.isNaN(then)) return "";
    const seconds = Math.max(0, Math.floor((Date.now() - then) / 1000));
    if (seconds < 60) return `${seconds}s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes}m ${seconds % 60}s ago`;
    return `${Math.floor(minutes / 60)}h ${minutes % 60}m ago`;
  }

  function hueClass(agentIndex) {
    return Number.isInteger(agentIndex) && agentIndex >= 0 ? `hue-${agentIndex % 10}` : "hue-x";
  }

  function wsBase() {
    return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
  }

  // -- banners (warnings) ------------------------------------------------------

  const banners = new Map();

  function showBanner(source, content, fromServer = false) {
    let banner = banners.get(source);
    if (!banner) {
      banner = el("div", "banner");
      banner.dataset.source = source;
      const close = el("button", null, "×");
      close.type = "button";
      close.title = "dismiss";
      close.addEventListener("click", () => clearBanner(source));
      banner.append(el("span", "source", source), el("span", "content"), close);
      banners.set(source, banner);
      $("banners").append(banner);
    }
    banner.querySelector(".content").textContent = String(content);
    banner.dataset.origin = fromServer ? "server" : "page";
  }

  function clearBanner(source) {
    const banner = banners.get(source);
    if (banner) {
      banner.remove();
      banners.delete(source);
    }
  }

  // -- token: the server answered ?token= with an HttpOnly cookie ---------------

  const control = meta("trio-ws-control");
  const canControl = control === "on";

  function dropTokenFromUrl() {
    const url = new URL(location.href);
    if (!url.searchParams.has("token")) return;
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }

  function explainToken() {
    if (control === "rejected") {
      showBanner("token", "The token in the link was not accepted, so the controls stay hidden.");
    } else if (control === "uncookieable") {
      showBanner(
        "token",
        "The server's token holds characters a cookie cannot carry (such as ; , or spaces), " +
          "so this page cannot keep it; controls stay hidden.",
      );
    }
  }

  // -- project list ----------------------------------------------------------

  function startList() {
    document.title = "Projects · trio-ws";
    $("list-view").hidden = false;
    $("publish-url").textContent = `${wsBase()}/ws/projects/NAME/publish`;
    loadProjects();
  }

  async function loadProjects() {
    try {
      const response = await fetch("/api/projects", { cache: "no-store" });
      if (!response.ok) {
        throw new Error(`GET /api/projects answered ${response.status}: ${await response.text()}`);
      }
      const projects = await response.json();
      if (!Array.isArray(projects)) throw new Error("GET /api/projects did not return a list");
      renderProjects(projects);
      $("list-error").hidden = true;
      $("list-updated").textContent = `updated ${clockTime(Date.now())}`;
    } catch (error) {
      $("list-error").textContent = `Cannot list projects: ${error.message}`;
      $("list-error").hidden = false;
    }
    setTimeout(loadProjects, LIST_REFRESH_MS);
  }

  function renderProjects(projects) {
    const list = $("projects");
    const items = projects.map((project) => {
      const item = el("li", project.exists ? "project" : "project missing");
      const link = el("a", null, project.name);
      link.href = `/projects/${encodeURIComponent(project.name)}`;
      const head = el("div");
      head.append(link);
      const meta = el("div", "meta");
      const status = el("span", "badge", STATUS_LABELS[project.agent_status] || project.agent_status);
      status.dataset.status = String(project.agent_status);
      status.title = "agent status";
      const dev = el("span", "badge", `dev ${project.dev_server_status}`);
      dev.dataset.status = String(project.dev_server_status);
      const watching = count(project.subscribers);
      meta.append(status, dev, el("span", "muted", `${watching} watching`));
      const path = el("div", "path", project.exists ? project.path : `${project.path} (missing)`);
      item.append(head, meta, path);
      return item;
    });
    list.replaceChildren(...items);
    $("list-empty").hidden = projects.length > 0;
  }

  // -- live view: state --------------------------------------------------------

  function emptyState() {
    return {
      agentStatus: "unknown",
      progress: { passing: 0, in_progress: 0, total: 0, percentage: 0, needs_human_input: 0 },
      orchestrator: null,
      events: [],
      devStatus: "stopped",
      devUrl: null,
      names: new Map(), // agentIndex -> mascot name, also for finished agents' log lines
    };
  }

  let view = emptyState();
  const cards = new Map(); // key -> {message, node, timer}
  let logs = []; // {line, timestamp, agentIndex}
  let pendingLogs = [];
  let pendingDev = [];
  let logRebuild = false;
  let devRebuild = false;
  const dirty = new Set();
  const dirtyCards = new Set();
  let frameRequested = false;

  function touch(part) {
    dirty.add(part);
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(flush);
    }
  }

  function reset() {
    for (const card of cards.values()) clearTimeout(card.timer);
    cards.clear();
    dirtyCards.clear();
    $("agents").replaceChildren();
    view = emptyState();
    logs = [];
    pendingLogs = [];
    pendingDev = [];
    logRebuild = true;
    devRebuild = true;
    // The server repeats its standing warnings after every snapshot.
    for (const [source, banner] of [...banners]) {
      if (banner.dataset.origin === "server") clearBanner(source);
    }
    for (const part of ["status", "progress", "orchestrator", "dev", "agents", "log", "filter"]) {
      touch(part);
    }
  }

  // -- live view: messages -----------------------------------------------------

  const handlers = new Map([
    ["hello", onHello],
    ["resumed", () => { document.body.dataset.sync = "resumed"; }],
    ["resync", onResync],
    ["error", (message) => { connection.lastError = String(message.content); }],
    ["warning", onWarning],
    ["progress", onProgress],
    ["agent_status", onAgentStatus],
    ["log", onLog],
    ["agent_update", onAgentUpdate],
    ["orchestrator_update", onOrchestrator],
    ["dev_log", onDevLog],
    ["dev_server_status", onDevStatus],
  ]);

  function handle(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
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
  }

  function onWarning(message) {
    const source = String(message.source ?? "server");
    showBanner(source, message.content ?? "", true);
  }

  function onProgress(message) {
    view.progress = {
      passing: count(message.passing),
      in_progress: count(message.in_progress),
      total: count(message.total),
      percentage: count(message.percentage),
      needs_human_input: count(message.needs_human_input),
    };
    clearBanner("progress");
    touch("progress");
  }

  function onAgentStatus(message) {
    view.agentStatus = String(message.status);
    clearBanner("producer");
    if (view.agentStatus === "stopped" || view.agentStatus === "crashed") {
      for (const key of [...cards.keys()]) removeCard(key);
    }
    touch("status");
  }

  function onLog(message) {
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

  function cardKey(message) {
    if (Number.isInteger(message.agentIndex) && message.agentIndex >= 0) {
      return String(message.agentIndex);
    }
    return `synthetic-${message.seq ?? Math.random()}`;
  }

  function onAgentUpdate(message) {
    const key = cardKey(message);
    if (Number.isInteger(message.agentIndex) && message.agentIndex >= 0) {
      view.names.set(message.agentIndex, String(message.agentName));
    }
    let card = cards.get(key);
    if (!card) {
      card = { message, node: null, timer: null };
      cards.set(key, card);
      touch("filter");
    }
    card.message = message;
    clearTimeout(card.timer);
    card.timer = null;
    if (message.state === "success" || message.state === "error") {
      card.timer = setTimeout(() => removeCard(key), CARD_LINGER_MS);
    }
    dirtyCards.add(key);
    touch("agents");
  }

  function removeCard(key) {
    const card = cards.get(key);
    if (!card) return;
    clearTimeout(card.timer);
    if (card.node) card.node.remove();
    cards.delete(key);
    dirtyCards.delete(key);
    touch("agents");
    touch("filter");
  }

  function onOrchestrator(message) {
    view.orchestrator = message;
    view.events.unshift(message);
    if (view.events.length > MAX_EVENTS) view.events.length = MAX_EVENTS;
    touch("orchestrator");
  }

  function onDevLog(message) {
    pendingDev.push({ line: String(message.line ?? ""), timestamp: message.timestamp });
    if (pendingDev.length > MAX_DEV_DOM) pendingDev = pendingDev.slice(-MAX_DEV_DOM);
    touch("dev-log");
  }

  function onDevStatus(message) {
    view.devStatus = String(message.status);
    view.devUrl = typeof message.url === "string" ? message.url : null;
    touch("dev");
  }

  // -- live view: rendering, once per frame ------------------------------------

  function flush() {
    frameRequested = false;
    const parts = new Set(dirty);
    dirty.clear();
    if (parts.has("status")) renderStatus();
    if (parts.has("progress")) renderProgress();
    if (parts.has("agents")) renderCards();
    if (parts.has("filter")) renderFilter();
    if (parts.has("orchestrator")) renderOrchestrator();
    if (parts.has("dev")) renderDev();
    if (parts.has("dev-log")) renderDevLog();
    if (parts.has("log") || parts.has("filter")) renderLog();
    if (parts.has("status") || parts.has("log")) renderHint();
  }

  function renderStatus() {
    const badge = $("agent-status");
    badge.dataset.status = view.agentStatus;
    badge.textContent = STATUS_LABELS[view.agentStatus] || view.agentStatus;
    renderControls();
  }

  function renderControls() {
    const live = connection.state === "live";
    for (const button of $("controls").querySelectorAll("button[data-action]")) {
      const allowed = ALLOWED_FROM[button.dataset.action] || [];
      button.disabled = !live || !allowed.includes(view.agentStatus);
    }
  }

  function renderProgress() {
    const { passing, in_progress: inProgress, total, percentage } = view.progress;
    const needs = view.progress.needs_human_input;
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
    document.title = `${percentage}% · ${projectName} · trio-ws`;
  }

  function renderCards() {
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
    const active = [...cards.values()].filter((card) => !card.timer).length;
    $("agent-count").textContent = cards.size ? `${active} active` : "";
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
    node.append(top, el("p", "agent-thought"), foot);
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
    const since = node.querySelector(".since");
    since.dataset.timestamp = String(message.timestamp ?? "");
    since.textContent = ago(message.timestamp);
  }

  function featureText(message) {
    if (typeof message.featureName === "string" && message.featureName) return message.featureName;
    const ids = Array.isArray(message.featureIds) ? message.featureIds : [message.featureId];
    return ids.map((id) => `#${id}`).join(", ");
  }

  function tickCards() {
    for (const since of $("agents").querySelectorAll(".since")) {
      since.textContent = ago(since.dataset.timestamp);
    }
  }

  function renderFilter() {
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
      options.push([chosen, `${view.names.get(index) ?? `agent ${chosen}`} (finished)`]);
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
    const name = entry.agentIndex === null ? "" : view.names.get(entry.agentIndex) ?? `#${entry.agentIndex}`;
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

  function renderLog() {
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

  function renderOrchestrator() {
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

  function renderDev() {
    const badge = $("dev-status");
    badge.textContent = view.devStatus;
    badge.dataset.status = view.devStatus;
    const link = $("dev-link");
    const url = safeHttpUrl(view.devUrl);
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

  function renderDevLog() {
    const rows = pendingDev.map((entry) => {
      const row = el("div", "line");
      row.append(el("time", null, clockTime(entry.timestamp)), el("span", "text", entry.line));
      return row;
    });
    appendRows($("dev-log"), rows, MAX_DEV_DOM, devRebuild);
    devRebuild = false;
    pendingDev = [];
  }

  function renderHint() {
    const idle = view.agentStatus === "stopped" && logs.length === 0;
    $("producer-hint").hidden = !idle;
  }

  // -- live view: the connection ---------------------------------------------

  const connection = {
    state: "idle",
    socket: null,
    epoch: null,
    lastSeq: null,
    helloSeq: null,
    previousType: null,
    askedSince: false,
    attempt: 0,
    connects: 0,
    resyncs: 0,
    lastError: null,
    lastHeard: 0,
  };
  let projectName = "";

  function setConnection(state, detail) {
    connection.state = state;
    const pill = $("connection");
    pill.hidden = false;
    pill.dataset.state = state;
    const label = detail ? `${state} · ${detail}` : state;
    $("connection-text").textContent = label;
    pill.title = label;
    renderControls();
  }

  function connect() {
    // Explicit: the server's default (0) suits clients that append what they get.
    const query = new URLSearchParams({ backlog: String(LOG_BACKLOG) });
    if (connection.epoch !== null && connection.lastSeq !== null) {
      query.set("since", String(connection.lastSeq));
      query.set("epoch", connection.epoch);
    }
    connection.askedSince = query.has("since");
    const url = `${wsBase()}/ws/projects/${encodeURIComponent(projectName)}?${query}`;
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

  function sendControl(button) {
    const socket = connection.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const action = button.dataset.action;
    if (action === "stop" && !window.confirm(`Stop the run of ${projectName}?`)) return;
    clearBanner("control");
    socket.send(JSON.stringify({ type: "control", action }));
    button.classList.add("sent");
    setTimeout(() => button.classList.remove("sent"), 1200);
  }

  function startProject(name) {
    projectName = name;
    document.title = `${name} · trio-ws`;
    const crumbs = $("crumbs");
    const home = el("a", null, "Projects");
    home.href = "/";
    crumbs.replaceChildren(home, el("span", "sep", "/"), el("span", null, name));
    $("project-name").textContent = name;
    $("run-hint").textContent = `trio-ws run ${name} -- COMMAND`;
    $("project-view").hidden = false;
    if (canControl) {
      $("controls").hidden = false;
      for (const button of $("controls").querySelectorAll("button[data-action]")) {
        button.addEventListener("click", () => sendControl(button));
      }
    }
    $("log-filter").addEventListener("change", () => {
      logRebuild = true;
      touch("log");
    });
    reset();
    setConnection("connecting", "");
    setInterval(tickCards, 1000);
    setInterval(keepAlive, PING_EVERY_MS);
    connect();
  }

  // -- routing ---------------------------------------------------------------

  function start() {
    $("version").textContent = meta("trio-ws-version") || "";
    dropTokenFromUrl();
    explainToken();
    const match = /^\/projects\/([^/]+)$/.exec(location.pathname);
    if (!match) {
      startList();
      return;
    }
    let name;
    try {
      name = decodeURIComponent(match[1]);
    } catch {
      name = match[1];
    }
    startProject(name);
  }

  start();
})();
