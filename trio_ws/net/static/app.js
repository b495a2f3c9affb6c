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
  const BOARD_DEBOUNCE_MS = 400; // progress can change several times a second
  const BOARD_RETRY_MS = 5000; // after an error, even if no progress event comes
  const CHART_HEIGHT = 150; // px; fixed, so the page never jumps when the chart fills
  const CHART_PAD = { left: 34, right: 12, top: 10, bottom: 22 };
  const MAX_CHART_DOTS = 300; // beyond this the line alone carries the shape
  const BOARD_COLUMNS = ["pending", "in-progress", "done"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  // Agent statuses in which each control makes sense (trio_ws/net/publish.py ALLOWED_FROM).
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

  function svg(tag, attributes, className) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    if (className) node.setAttribute("class", className);
    return node;
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
    chart.points.clear();
    chart.statuses.clear();
    logs = [];
    pendingLogs = [];
    pendingDev = [];
    logRebuild = true;
    devRebuild = true;
    // The server repeats its standing warnings after every snapshot.
    for (const [source, banner] of [...banners]) {
      if (banner.dataset.origin === "server") clearBanner(source);
    }
    for (const part of ["status", "progress", "orchestrator", "dev", "agents", "log", "filter", "chart"]) {
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
    if (!resuming) loadHistory();
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

  function onProgress(message) {
    view.progress = {
      passing: count(message.passing),
      in_progress: count(message.in_progress),
      total: count(message.total),
      percentage: count(message.percentage),
      needs_human_input: count(message.needs_human_input),
    };
    addPoint(message, liveTime(message));
    const key = ["passing", "in_progress", "total", "needs_human_input"]
      .map((name) => view.progress[name])
      .join("/");
    if (key !== board.progressKey) {
      board.progressKey = key;
      scheduleBoard(BOARD_DEBOUNCE_MS);
    }
    clearBanner("progress");
    touch("progress");
    touch("chart");
  }

  function onAgentStatus(message) {
    view.agentStatus = String(message.status);
    addStatus(message, liveTime(message));
    touch("chart");
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
    if (parts.has("board") || (parts.has("agents") && agentsOnFeaturesChanged())) renderBoard();
    if (parts.has("chart")) renderChart();
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

  // -- live view: the features board -------------------------------------------
  //
  // Fetched on load and again (debounced) whenever a progress event changes the
  // counts. The old board stays until the new one arrives; an error replaces it
  // with the server's detail, never with an empty board.

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

  function scheduleBoard(delay) {
    // A pending read is kept, not pushed back: a run whose counts change every
    // few hundred ms still gets its board read at least once per delay.
    const due = Date.now() + delay;
    if (board.timer !== null && board.due <= due) return;
    clearTimeout(board.timer);
    board.due = due;
    board.timer = setTimeout(loadFeatures, delay);
  }

  async function loadFeatures() {
    board.timer = null;
    if (board.inFlight) {
      board.again = true;
      return;
    }
    board.inFlight = true;
    const path = `/api/projects/${encodeURIComponent(projectName)}/features`;
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

  function featureAgents() {
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

  function agentsOnFeaturesChanged() {
    const key = [...featureAgents()]
      .map(([id, agents]) => `${id}:${agents.map((agent) => agent.name).join(",")}`)
      .join(";");
    if (key === board.agentKey) return false;
    board.agentKey = key;
    return true;
  }

  function renderBoard() {
    const message = $("board-message");
    const columnsNode = $("board");
    if (board.error !== null || board.features === null) {
      message.textContent = board.error ?? "Loading the features…";
      message.dataset.kind = board.error !== null ? "error" : "loading";
      message.hidden = false;
      columnsNode.hidden = true;
      return;
    }
    message.hidden = true;
    columnsNode.hidden = false;
    const agents = featureAgents();
    const columns = Object.fromEntries(BOARD_COLUMNS.map((name) => [name, []]));
    for (const feature of board.features) {
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
    const needs = board.features.filter((feature) => feature.needs_human_input).length;
    const summary = `${board.features.length} features${needs ? ` · ${needs} need input` : ""}`;
    $("board-updated").textContent = `${summary} · read ${clockTime(board.loadedAt)}`;
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

  // -- live view: passing over time ---------------------------------------------
  //
  // Points are keyed by seq, so the history, the snapshot's replay and live
  // events can overlap without a point counted twice.

  const chart = { points: new Map(), statuses: new Map(), width: 0 };

  function liveTime(message) {
    // Events carry a timestamp; a live one from an older server gets the arrival time.
    const live = Number.isInteger(message.seq) && message.seq > (connection.helloSeq ?? Infinity);
    return live ? Date.now() : null;
  }

  function eventTime(message, fallback) {
    const time = Date.parse(message.timestamp);
    return Number.isNaN(time) ? fallback : time;
  }

  function addPoint(message, fallback = null) {
    const time = eventTime(message, fallback);
    if (!Number.isInteger(message.seq) || time === null) return;
    chart.points.set(message.seq, {
      seq: message.seq,
      time,
      passing: count(message.passing),
      total: count(message.total),
    });
  }

  function addStatus(message, fallback = null) {
    const time = eventTime(message, fallback);
    if (!Number.isInteger(message.seq) || time === null) return;
    chart.statuses.set(message.seq, { seq: message.seq, time, status: String(message.status) });
  }

  async function loadHistory() {
    const epoch = connection.epoch;
    const path = `/api/projects/${encodeURIComponent(projectName)}/progress-history`;
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

  function renderChart() {
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
    loadFeatures();
    new ResizeObserver(() => {
      if (Math.round($("chart").getBoundingClientRect().width) !== chart.width) touch("chart");
    }).observe($("chart-box"));
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
