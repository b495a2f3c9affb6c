// The project list at "/": GET /api/projects, refreshed every few seconds.

import { $, el, clockTime, count, wsBase, STATUS_LABELS } from "./dom.js";

const LIST_REFRESH_MS = 5000;

export function startList() {
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
