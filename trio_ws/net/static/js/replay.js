// A recorded run replayed through the live view's panels at "/projects/{name}/runs/{id}".
//
// The same message handlers as the websocket (messages.js `dispatch`) are fed the
// run's /state snapshot at a moment, then its /events pages in seq order, each when
// its timestamp comes due at the chosen speed. Seeking asks /state again, so a moment
// of a long run costs one snapshot, never the events before it. Memory stays bounded:
// at most a couple of pages of events wait in the buffer; the panels cap what they keep.

import { $, el, clock, clockTime } from "./dom.js";
import { dispatch, reset } from "./messages.js";
import { addPoint, addStatus } from "./chart.js";
import { expireCards, featureAgents } from "./agents.js";
import { setBoardTransform } from "./board.js";
import { live, touch } from "./state.js";

const PAGE = 1000; // events per /events read while playing (the most the API gives)
const LOW_WATER = 1500; // read the next page when fewer wait
const TICK_MS = 50;
const MAX_PER_TICK = 2000; // events applied per tick at most: the page stays responsive
const SCAN_PAGES = 20; // pages of 1000 read when looking for the next error
const HIT_PAGES = 5; // pages of 1000 hits marked on the timeline at most
const CHART_PAGES = 20; // pages of 1000 progress / status events for the chart
const BOARD_PAGES = 10; // pages of 1000 agent updates read for the board's completions
const MARK_BUCKETS = 400; // the timeline's resolution for marks
const FOLLOW_MS = 1000; // how often a replay caught up with a run still going asks for more

const player = {
  name: "",
  runId: "",
  summary: null,
  start: 0, // ms, the run's first moment
  end: 0, // ms, its last
  clock: 0, // ms, the replayed moment
  cursor: null, // seq of the last event applied
  playing: false,
  speed: 1,
  buffer: [],
  next: 0, // index of the next buffered event
  nextAfter: null, // cursor of the next page; null: no more
  fetching: false,
  generation: 0, // bumped by every seek: answers of an older one are dropped
  seeking: false,
  lastTick: 0,
  chart: [], // the run's progress and status events, for the chart up to the moment
  completions: null, // [{seq, ids}] of features completed in the run, or null (unknown)
  boardNote: null, // why the board at a moment cannot be known, when it cannot
  followTimer: null,
};

function api(path) {
  return `/api/projects/${encodeURIComponent(player.name)}/runs/${encodeURIComponent(player.runId)}${path}`;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
    throw new Error(`HTTP ${response.status}: ${detail}`);
  }
  if (!body || typeof body !== "object") throw new Error(`${path} did not answer JSON`);
  return body;
}

function eventTime(event) {
  const time = Date.parse(event.timestamp);
  return Number.isNaN(time) ? null : time;
}

function filters() {
  const query = {};
  const agent = $("replay-agent").value;
  const feature = $("replay-feature").value.trim();
  if (agent !== "") query.agent = agent;
  if (feature !== "") query.feature = feature;
  return query;
}

export async function startReplay(name, runId) {
  live.replay = true;
  player.name = name;
  player.runId = runId;
  clock.now = () => player.clock;
  $("replay-bar").hidden = false;
  $("controls").hidden = true;
  document.body.dataset.replay = runId;
  const runs = el("a", null, "runs");
  runs.href = `/projects/${encodeURIComponent(name)}/runs`;
  $("crumbs").append(el("span", "sep", "/"), runs, el("span", "sep", "/"), el("span", null, runId));
  wireControls();
  try {
    player.summary = await getJson(api(""));
  } catch (error) {
    note(`Cannot replay run ${runId}: ${error.message}`, "error");
    setMoment("error");
    return;
  }
  const summary = player.summary;
  player.start = Date.parse(summary.started_at);
  player.end = Math.max(player.start, Date.parse(summary.ended_at ?? summary.last_at) || player.start);
  document.title = `Run ${runId} · ${name} · trio-ws`;
  if (summary.ended === null || summary.ended === undefined) {
    $("replay-live").href = `/projects/${encodeURIComponent(name)}`;
    $("replay-live").hidden = false;
  }
  fillAgents(summary.agents);
  loadBoard(); // the board says it is reading until it knows; the replay need not wait
  await loadChart();
  await seek({ seq: summary.first_seq });
  player.lastTick = performance.now();
  setInterval(tick, TICK_MS);
}

function wireControls() {
  $("replay-play").addEventListener("click", async () => {
    if (!player.playing && $("replay-moment").dataset.state === "ended") {
      await seek({ seq: player.summary.first_seq }); // played to the end: again from the start
    }
    setPlaying(!player.playing);
  });
  for (const button of $("replay-speeds").querySelectorAll("button[data-speed]")) {
    button.addEventListener("click", () => {
      player.speed = Number(button.dataset.speed);
      for (const other of $("replay-speeds").children) other.classList.toggle("chosen", other === button);
    });
  }
  $("replay-next-error").addEventListener("click", nextError);
  const scrub = $("replay-scrub");
  scrub.addEventListener("input", () => {
    scrub.dataset.dragging = "1";
  });
  scrub.addEventListener("change", () => {
    delete scrub.dataset.dragging;
    if (Number(scrub.value) >= Number(scrub.max) || Number(scrub.value) <= 0) {
      // The ends by seq: a millisecond time can fall just outside the run's stamps.
      seek({ seq: Number(scrub.value) > 0 ? player.summary.last_seq : player.summary.first_seq });
      return;
    }
    const at = player.start + (Number(scrub.value) / Number(scrub.max)) * (player.end - player.start);
    seek({ at: new Date(at).toISOString() });
  });
  $("replay-agent").addEventListener("change", filtersChanged);
  $("replay-feature").addEventListener("change", filtersChanged);
  $("replay-search").addEventListener("change", search);
  $("replay-regex").addEventListener("change", search);
}

function fillAgents(agents) {
  const select = $("replay-agent");
  for (const agent of Array.isArray(agents) ? agents : []) {
    const option = el("option", null, `${agent.agentName ?? "agent"} (#${agent.agentIndex})`);
    option.value = String(agent.agentIndex);
    select.append(option);
  }
}

function setPlaying(playing) {
  player.playing = playing && player.cursor !== null;
  $("replay-play").textContent = player.playing ? "Pause" : "Play";
  $("replay-play").dataset.playing = player.playing ? "1" : "0";
  player.lastTick = performance.now();
  setMoment(player.playing ? "playing" : "paused");
}

// -- seeking and playing -----------------------------------------------------------

async function seek(query, then = []) {
  // The snapshot at the moment, then (optionally) the events `then` right after it.
  const generation = ++player.generation;
  const began = performance.now();
  player.seeking = true;
  setMoment("seeking");
  let body;
  try {
    body = await getJson(`${api("/state")}?${new URLSearchParams(query)}`);
    if (!Number.isInteger(body.seq) || !Array.isArray(body.messages)) {
      throw new Error("the answer holds no seq and messages");
    }
  } catch (error) {
    if (generation !== player.generation) return;
    player.seeking = false;
    note(`Cannot seek: ${error.message}`, "error");
    setMoment("error");
    return;
  }
  if (generation !== player.generation) return;
  if (clamped(query, body)) {
    note(`The server no longer holds this run before ${clockTime(Date.parse(body.timestamp))} (seq ${body.seq}).`, "clamped");
  } else if ($("replay-note").dataset.kind === "clamped") {
    note("");
  }
  reset();
  for (const message of body.messages) dispatch(message);
  player.cursor = body.seq;
  player.clock = Date.parse(body.timestamp) || player.start;
  for (const event of then) apply(event);
  expireCards(); // the cards of agents that finished over 3 s before this moment
  player.buffer = [];
  player.next = 0;
  player.nextAfter = player.cursor;
  player.fetching = false;
  for (const event of player.chart) {
    if (event.seq > player.cursor) break;
    if (event.type === "progress") addPoint(event);
    else addStatus(event);
  }
  touch("chart");
  touch("board");
  player.seeking = false;
  setMoment(player.playing ? "playing" : "paused");
  document.body.dataset.seekMs = String(Math.round(performance.now() - began)); // for benchmarks
  fetchMore();
}

function clamped(query, body) {
  // The server clamps a moment it no longer holds to the first one it does.
  if (body.seq <= player.summary.first_seq) return false;
  if (query.seq !== undefined) return body.seq > query.seq;
  return Date.parse(body.timestamp) > Date.parse(query.at) + 1;
}

function apply(event) {
  dispatch(event);
  if (Number.isInteger(event.seq)) player.cursor = event.seq;
  const time = eventTime(event);
  if (time !== null && time > player.clock) player.clock = time;
}

async function fetchMore() {
  if (player.fetching || player.nextAfter === null) return;
  const generation = player.generation;
  player.fetching = true;
  let body;
  try {
    body = await getJson(`${api("/events")}?${new URLSearchParams({ after: player.nextAfter, limit: PAGE })}`);
    if (!Array.isArray(body.events)) throw new Error("the answer holds no events");
  } catch (error) {
    if (generation === player.generation) {
      player.fetching = false;
      note(`Cannot read the run's events: ${error.message}`, "error");
      setPlaying(false);
    }
    return;
  }
  if (generation !== player.generation) return;
  player.buffer = player.buffer.slice(player.next).concat(body.events);
  player.next = 0;
  player.nextAfter = Number.isInteger(body.next_after) ? body.next_after : null;
  player.fetching = false;
}

function tick() {
  const now = performance.now();
  const elapsed = now - player.lastTick;
  player.lastTick = now;
  if (!player.playing || player.seeking) return;
  const target = player.clock + elapsed * player.speed;
  let applied = 0;
  while (player.next < player.buffer.length && applied < MAX_PER_TICK) {
    const event = player.buffer[player.next];
    const time = eventTime(event);
    if (time !== null && time > target) break;
    player.next += 1;
    apply(event);
    applied += 1;
  }
  const waiting = player.buffer.length - player.next;
  if (waiting > 0 && applied < MAX_PER_TICK) player.clock = Math.max(player.clock, target);
  expireCards(); // by the replay's clock: a paused replay never gets here, its cards stay
  if (waiting < LOW_WATER) fetchMore();
  if (waiting === 0 && player.nextAfter === null && !player.fetching) {
    if (player.summary.ended === null || player.summary.ended === undefined) {
      follow(); // the run is still going: keep up with it
      setMoment("caught-up");
    } else {
      setPlaying(false);
      setMoment("ended");
    }
  } else {
    setMoment("playing");
  }
}

function follow() {
  // Ask for the open run's newer events every FOLLOW_MS while caught up with it.
  if (player.followTimer !== null) return;
  const generation = player.generation;
  player.followTimer = setTimeout(() => {
    player.followTimer = null;
    if (generation !== player.generation || player.nextAfter !== null) return;
    player.nextAfter = player.cursor;
    fetchMore();
  }, FOLLOW_MS);
}

// -- the moment and the timeline -------------------------------------------------------

function share(time) {
  const span = player.end - player.start;
  return span > 0 ? Math.min(1, Math.max(0, (time - player.start) / span)) : 0;
}

function setMoment(state) {
  const moment = $("replay-moment");
  moment.dataset.state = state;
  moment.dataset.seq = player.cursor === null ? "" : String(player.cursor);
  const at = player.cursor === null ? "" : `${clockTime(player.clock)} · seq ${player.cursor}`;
  const words = {
    ended: "end of the run",
    "caught-up": "caught up: the run is still going",
    seeking: "seeking…",
    error: "",
    loading: "loading…",
  };
  moment.textContent = [at, words[state] ?? ""].filter(Boolean).join(" · ");
  const scrub = $("replay-scrub");
  if (!scrub.dataset.dragging && player.cursor !== null) {
    scrub.value = String(Math.round(share(player.clock) * Number(scrub.max)));
  }
}

function note(text, kind = "") {
  $("replay-note").textContent = text;
  $("replay-note").dataset.kind = kind;
}

function mark(events, kind, label) {
  // One mark per bucket of the timeline, titled with its first event; a click seeks there.
  const box = $("timeline-marks");
  for (const old of box.querySelectorAll(`.mark.${kind}`)) old.remove();
  const buckets = new Map();
  for (const event of events) {
    const time = eventTime(event);
    if (time === null || !Number.isInteger(event.seq)) continue;
    const bucket = Math.round(share(time) * MARK_BUCKETS);
    if (!buckets.has(bucket)) buckets.set(bucket, event);
  }
  for (const [bucket, event] of buckets) {
    const button = el("button", `mark ${kind}`);
    button.type = "button";
    button.style.left = `${(bucket / MARK_BUCKETS) * 100}%`;
    button.dataset.seq = String(event.seq);
    button.title = `${clockTime(eventTime(event))} · ${label(event)}`;
    button.addEventListener("click", () => seek({ seq: event.seq }));
    box.append(button);
  }
  $("timeline").dataset[kind === "hit" ? "hits" : "activity"] = String(buckets.size);
}

function eventText(event) {
  return String(event.line ?? event.thought ?? event.message ?? event.type ?? "");
}

async function collect(query, pages) {
  // Up to `pages` pages of 1000 matching events: {events, more, partial}.
  const found = [];
  let after = null;
  let partial = false;
  for (let page = 0; page < pages; page++) {
    const params = new URLSearchParams({ ...query, limit: "1000" });
    if (after !== null) params.set("after", String(after));
    const body = await getJson(`${api("/events")}?${params}`);
    if (!Array.isArray(body.events)) throw new Error("the answer holds no events");
    found.push(...body.events);
    partial = partial || Boolean(body.partial);
    after = Number.isInteger(body.next_after) ? body.next_after : null;
    if (after === null) return { events: found, more: false, partial };
  }
  return { events: found, more: true, partial };
}

async function search() {
  const q = $("replay-search").value.trim();
  if (!q) {
    mark([], "hit", eventText);
    note("");
    return;
  }
  const query = { q, ...filters() };
  if ($("replay-regex").checked) query.regex = "1";
  try {
    const { events, more, partial } = await collect(query, HIT_PAGES);
    if ($("replay-search").value.trim() !== q) return; // a newer search is on its way
    mark(events, "hit", eventText);
    const count = `${events.length}${more ? "+" : ""} hit${events.length === 1 ? "" : "s"} for “${q}”`;
    note(partial ? `${count} (the search stopped early: its time ran out)` : count);
  } catch (error) {
    note(`Cannot search: ${error.message}`, "error");
  }
}

async function filtersChanged() {
  // The log shows the chosen agent's lines; the timeline marks where the agent and
  // feature were busy; search and next error keep to them.
  const agent = $("replay-agent").value;
  const logFilter = $("log-filter");
  const value = agent === "" ? "all" : agent;
  if (![...logFilter.options].some((option) => option.value === value)) {
    const option = el("option", null, $("replay-agent").selectedOptions[0].textContent);
    option.value = value;
    logFilter.append(option);
  }
  logFilter.value = value;
  logFilter.dispatchEvent(new Event("change"));
  const query = filters();
  if (Object.keys(query).length === 0) {
    mark([], "activity", eventText);
  } else {
    try {
      const { events } = await collect(query, HIT_PAGES);
      mark(events, "activity", eventText);
    } catch (error) {
      note(`Cannot filter: ${error.message}`, "error");
    }
  }
  if ($("replay-search").value.trim()) search();
}

function isError(event) {
  // What "an error" is in a run: a failed agent update (what the run's summary counts),
  // a crash, or a raised alert of severity error.
  if (event.type === "agent_update") return event.state === "error";
  if (event.type === "agent_status") return event.status === "crashed";
  if (event.type === "alert") return event.severity === "error" && event.state !== "resolved";
  return false;
}

function errorText(event) {
  const at = clockTime(eventTime(event));
  if (event.type === "agent_status") return `the run crashed at ${at}`;
  if (event.type === "alert") return `alert: ${event.message ?? event.kind} at ${at}`;
  const where = event.featureName || featureIds(event).map((id) => `#${id}`).join(", ");
  return `error: ${event.agentName ?? "agent"} on ${where} at ${at}`;
}

async function nextError() {
  // The next error after the moment (within the filters): seek right before it and
  // apply it, paused, so the panels show the failure as it happened.
  if (player.cursor === null) return;
  let after = player.cursor;
  try {
    for (let page = 0; page < SCAN_PAGES; page++) {
      const params = new URLSearchParams({
        type: "agent_update,agent_status,alert",
        after: String(after),
        limit: "1000",
        ...filters(),
      });
      const body = await getJson(`${api("/events")}?${params}`);
      const found = (body.events ?? []).find(isError);
      if (found) {
        setPlaying(false);
        await seek({ seq: found.seq - 1 }, [found]);
        note(errorText(found), "error-found");
        return;
      }
      if (!Number.isInteger(body.next_after)) break;
      after = body.next_after;
    }
    note("No error after this moment.");
  } catch (error) {
    note(`Cannot look for errors: ${error.message}`, "error");
  }
}

// -- the chart's and the board's data ------------------------------------------------

async function loadChart() {
  try {
    const { events } = await collect({ type: "progress,agent_status" }, CHART_PAGES);
    player.chart = events;
  } catch (error) {
    $("chart-note").textContent = `the run's progress is unavailable: ${error.message}`;
  }
}

async function loadBoard() {
  // The board at a moment is known from the features now and this run's completions
  // after the moment, when no later run has changed the features since.
  setBoardTransform(boardAtMoment);
  try {
    const newest = await getJson(`/api/projects/${encodeURIComponent(player.name)}/runs?limit=1`);
    if (!Array.isArray(newest.runs) || newest.runs[0]?.id !== player.runId) {
      player.boardNote =
        "The board at a moment of an earlier run cannot be known: later runs changed the features since.";
    } else {
      const { events, more } = await collect({ type: "agent_update" }, BOARD_PAGES);
      if (more) {
        player.boardNote = "The board at this moment cannot be known: the run has too many agent updates.";
      } else {
        player.completions = events
          .filter((event) => event.state === "success" && event.agentType !== "testing")
          .map((event) => ({ seq: event.seq, ids: featureIds(event) }));
      }
    }
  } catch (error) {
    player.boardNote = `The board at this moment cannot be known: ${error.message}`;
  }
  touch("board");
}

function featureIds(event) {
  const ids = Array.isArray(event.featureIds) ? event.featureIds : [event.featureId];
  return ids.filter(Number.isInteger);
}

function boardAtMoment(features) {
  if (player.boardNote !== null || player.completions === null) {
    return { error: player.boardNote ?? "Reading the run's completions…" };
  }
  const later = new Set();
  for (const completion of player.completions) {
    if (completion.seq > (player.cursor ?? 0)) for (const id of completion.ids) later.add(id);
  }
  const busy = featureAgents();
  const shown = features.map((feature) => {
    const passes = Boolean(feature.passes) && !later.has(feature.id);
    return { ...feature, passes, in_progress: !passes && busy.has(feature.id) };
  });
  return { features: shown, note: `at ${clockTime(player.clock)} (the features now, less this run's later completions)` };
}
