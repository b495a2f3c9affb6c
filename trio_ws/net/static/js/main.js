// trio-ws dashboard: the overview of every project at "/", one project's live view at
// "/projects/{name}" (PROTOCOL.md section 3), its recorded runs at ".../runs" and
// one run replayed through the live view's panels at ".../runs/{id}". Plain DOM,
// no framework, no build: the browser loads these ES modules as they are.
//
// Rules the modules keep:
// - Text from the server only ever reaches the page through textContent.
// - Messages update plain state and mark what changed; the DOM is written
//   once per animation frame (`render`), so a fast run costs one layout per
//   frame, and the log tail never holds more than a fixed number of lines.
// - Unknown message types and fields are ignored.

import { $, el, meta } from "./dom.js";
import { canControl, dropTokenFromUrl, explainToken } from "./token.js";
import { startOverview } from "./overview.js";
import { startNotifications } from "./notify.js";
import { startRuns } from "./runs.js";
import { startReplay } from "./replay.js";
import { live, setRenderer, touch } from "./state.js";
import { renderCards, tickCards } from "./agents.js";
import { renderShots } from "./shots.js";
import { agentsOnFeaturesChanged, loadFeatures, renderBoard } from "./board.js";
import { chartWidthChanged, renderChart } from "./chart.js";
import { rebuildLog, renderDevLog, renderFilter, renderHint, renderLog } from "./log.js";
import { reset } from "./messages.js";
import { openConnection, sendControl } from "./connection.js";
import { renderDev, renderOrchestrator, renderProgress, renderStatus } from "./status.js";

function render(parts) {
  // Once per frame, in this order: the board needs the cards' agents, the log its filter.
  if (parts.has("status")) renderStatus();
  if (parts.has("progress")) renderProgress();
  if (parts.has("agents")) renderCards();
  if (parts.has("agents") || parts.has("shots")) renderShots();
  if (parts.has("board") || (parts.has("agents") && agentsOnFeaturesChanged())) renderBoard();
  if (parts.has("chart")) renderChart();
  if (parts.has("filter")) renderFilter();
  if (parts.has("orchestrator")) renderOrchestrator();
  if (parts.has("dev")) renderDev();
  if (parts.has("dev-log")) renderDevLog();
  if (parts.has("log") || parts.has("filter")) renderLog();
  if (parts.has("status") || parts.has("log")) renderHint();
}

function showProject(name) {
  // The panels, as the live view and a replay share them.
  live.projectName = name;
  document.title = `${name} · trio-ws`;
  const crumbs = $("crumbs");
  const home = el("a", null, "Projects");
  home.href = "/";
  const project = el("a", null, name);
  project.href = `/projects/${encodeURIComponent(name)}`;
  crumbs.replaceChildren(home, el("span", "sep", "/"), project);
  $("project-name").textContent = name;
  $("runs-link").href = `/projects/${encodeURIComponent(name)}/runs`;
  $("run-hint").textContent = `trio-ws run ${name} -- COMMAND`;
  $("project-view").hidden = false;
  $("log-filter").addEventListener("change", rebuildLog);
  setRenderer(render);
  reset();
  loadFeatures();
  new ResizeObserver(() => {
    if (chartWidthChanged()) touch("chart");
  }).observe($("chart-box"));
  setInterval(tickCards, 1000);
}

function startProject(name) {
  showProject(name);
  if (canControl) {
    $("controls").hidden = false;
    for (const button of $("controls").querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => sendControl(button));
    }
  }
  startNotifications();
  openConnection();
}

function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

function start() {
  $("version").textContent = meta("trio-ws-version") || "";
  dropTokenFromUrl();
  explainToken();
  const match = /^\/projects\/([^/]+)(?:\/(runs)(?:\/([^/]+))?)?$/.exec(location.pathname);
  if (!match) {
    startOverview();
    return;
  }
  const name = decoded(match[1]);
  if (match[3] !== undefined) {
    showProject(name);
    startReplay(name, decoded(match[3]));
  } else if (match[2] !== undefined) {
    startRuns(name);
  } else {
    startProject(name);
  }
}

start();
