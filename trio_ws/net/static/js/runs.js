// A project's recorded runs at "/projects/{name}/runs": GET /api/projects/{name}/runs,
// newest first, a page at a time. Each run links to its replay; the open run also
// to the live view.

import { $, el } from "./dom.js";

const PAGE = 50;

const listing = { name: "", before: null };

export function startRuns(name) {
  listing.name = name;
  document.title = `Runs of ${name} · trio-ws`;
  const project = `/projects/${encodeURIComponent(name)}`;
  const home = el("a", null, "Projects");
  home.href = "/";
  const link = el("a", null, name);
  link.href = project;
  $("crumbs").replaceChildren(home, el("span", "sep", "/"), link, el("span", "sep", "/"), el("span", null, "runs"));
  $("runs-title").textContent = `Runs of ${name}`;
  $("runs-live-link").href = project;
  $("runs-view").hidden = false;
  $("runs-more").addEventListener("click", () => loadRuns());
  loadRuns();
}

async function loadRuns() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (listing.before !== null) query.set("before", listing.before);
  const path = `/api/projects/${encodeURIComponent(listing.name)}/runs?${query}`;
  try {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
      throw new Error(`HTTP ${response.status}: ${detail}`);
    }
    if (!body || !Array.isArray(body.runs)) throw new Error(`${path} did not answer a run list`);
    const rows = body.runs.map(runRow);
    if (listing.before === null) $("runs").replaceChildren(...rows);
    else $("runs").append(...rows);
    listing.before = body.next_before ?? null;
    $("runs-more").hidden = listing.before === null;
    $("runs-table").hidden = $("runs").childElementCount === 0;
    $("runs-empty").hidden = $("runs").childElementCount > 0;
    $("runs-error").hidden = true;
  } catch (error) {
    $("runs-error").textContent = `Cannot list the runs: ${error.message}`;
    $("runs-error").hidden = false;
  }
}

export function duration(milliseconds) {
  if (!Number.isFinite(milliseconds) || milliseconds < 0) return "";
  const seconds = Math.floor(milliseconds / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${String(seconds % 60).padStart(2, "0")}s`;
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
}

export function progressText(progress) {
  if (!progress || typeof progress !== "object") return "";
  return `${progress.passing}/${progress.total} (${progress.percentage}%)`;
}

function runRow(run) {
  const row = el("tr", "run");
  row.dataset.id = String(run.id);
  row.dataset.ended = String(run.ended ?? "live");
  const started = new Date(run.started_at);
  const end = Date.parse(run.ended_at ?? run.last_at);
  const when = el("a", null, Number.isNaN(started.getTime()) ? String(run.id) : started.toLocaleString());
  when.href = `/projects/${encodeURIComponent(listing.name)}/runs/${encodeURIComponent(run.id)}`;
  when.className = "replay-link";
  when.title = `replay run ${run.id}`;
  const ended = el("span", "badge", run.ended ?? "live");
  ended.dataset.status = run.ended === "stopped" ? "stopped" : run.ended ? "crashed" : "running";
  const actions = el("td");
  if (run.ended === null || run.ended === undefined) {
    const liveLink = el("a", "live-link", "live view");
    liveLink.href = `/projects/${encodeURIComponent(listing.name)}`;
    actions.append(liveLink);
  }
  const cell = (content) => {
    const td = el("td");
    if (content instanceof Node) td.append(content);
    else td.textContent = String(content ?? "");
    return td;
  };
  row.append(
    cell(when),
    cell(duration(end - started.getTime())),
    cell(ended),
    cell(run.exit_code ?? ""),
    cell(progressText(run.progress_end)),
    cell(run.log_lines ?? ""),
    cell(run.error_lines ?? ""),
    actions,
  );
  return row;
}
