// The live view's state: what the messages built, what the connection knows, and
// which parts changed. Messages update plain state and mark what changed with
// `touch`; the DOM is written once per animation frame by the renderer main.js
// registers, so a fast run costs one layout per frame.

export function emptyView() {
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

export const live = {
  projectName: "",
  replay: false, // a recorded run replayed (replay.js), not the live websocket
  view: emptyView(),
};

export const connection = {
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

const dirty = new Set();
let frameRequested = false;
let render = () => {};

export function setRenderer(renderParts) {
  render = renderParts;
}

export function touch(part) {
  dirty.add(part);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameRequested = false;
  const parts = new Set(dirty);
  dirty.clear();
  render(parts);
}
