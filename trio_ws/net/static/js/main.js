// trio-ws dashboard: the overview of every project at "/" and one project's live view at
// "/projects/{name}" (PROTOCOL.md section 3). Plain DOM, no framework, no build:
// the browser loads these ES modules as they are.
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

function startProject(name) {
  live.projectName = name;
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
  startNotifications();
  $("log-filter").addEventListener("change", rebuildLog);
  setRenderer(render);
  reset();
  loadFeatures();
  new ResizeObserver(() => {
    if (chartWidthChanged()) touch("chart");
  }).observe($("chart-box"));
  setInterval(tickCards, 1000);
  openConnection();
}

function start() {
  $("version").textContent = meta("trio-ws-version") || "";
  dropTokenFromUrl();
  explainToken();
  const match = /^\/projects\/([^/]+)$/.exec(location.pathname);
  if (!match) {
    startOverview();
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
