"""A simulated AutoForge orchestrator for `trio-ws demo` (run as a real child process).

It prints the same line formats the real ``parallel_orchestrator`` prints
(``../shared/corpus``): the settings banner, an initializer session, batches
of coding agents with interleaved ``[Feature #N]`` narrative, testing
agents, failures and retries, a graceful pause and resume, and the final
``All features complete!``. While doing so it writes a real features
database (the schema of DATA.md) so the progress the server reads climbs to
100 %. Like the real one it honours ``<dir>/.autoforge/.pause_drain``: while
that file exists it drains its agents and waits, so a dashboard's graceful
pause really works against the demo.

Usage: ``python -m trio_ws.faces.demo_orchestrator --project-dir DIR [--speed S] [--seed N]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FEATURES: tuple[tuple[str, str], ...] = (
    ("functional", "User can add a todo"),
    ("functional", "User can mark a todo as done"),
    ("functional", "User can delete a todo"),
    ("functional", "User can edit a todo inline"),
    ("functional", "Todos persist across reloads"),
    ("functional", "User can filter active and completed todos"),
    ("functional", "User can clear completed todos"),
    ("functional", "Counter shows items left"),
    ("style", "Empty state shows a friendly hint"),
    ("style", "Completed todos are struck through"),
    ("functional", "User can reorder todos by dragging"),
    ("functional", "User can set a due date"),
    ("style", "Overdue todos are highlighted"),
    ("functional", "User can add tags to a todo"),
    ("functional", "User can search todos"),
    ("accessibility", "All controls are keyboard reachable"),
    ("accessibility", "Screen readers announce changes"),
    ("functional", "User can undo a delete"),
    ("style", "Dark mode follows the system setting"),
    ("functional", "User can export todos as JSON"),
    ("functional", "User can import todos from JSON"),
    ("performance", "List of 1000 todos scrolls smoothly"),
    ("functional", "Sync indicator shows save state"),
    ("style", "Layout works on a phone-width screen"),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
  id INTEGER NOT NULL PRIMARY KEY,
  priority INTEGER NOT NULL,
  category VARCHAR(100) NOT NULL,
  name VARCHAR(255) NOT NULL,
  description TEXT NOT NULL,
  steps JSON NOT NULL,
  passes BOOLEAN NOT NULL,
  in_progress BOOLEAN NOT NULL,
  dependencies JSON,
  needs_human_input BOOLEAN NOT NULL,
  human_input_request JSON,
  human_input_response JSON
);
CREATE INDEX IF NOT EXISTS ix_feature_status ON features (passes, in_progress, needs_human_input);
"""

NARRATIVE = (
    "I'll begin by reading the existing project structure.",
    "[Tool: Glob]",
    "   Input: {{'pattern': 'src/**/*.tsx'}}",
    "Looking at the current {component} component first.",
    "[Tool: Read]",
    "   Input: {{'file_path': '{root}/src/components/{component}.tsx'}}",
    "Implementing {name_lower}",
    "[Tool: Edit]",
    "   Input: {{'file_path': '{root}/src/components/{component}.tsx'}}",
    "Writing tests for {name_lower}",
    "[Tool: Write]",
    "[Tool: Bash]",
    "   Input: {{'command': 'npm run build', 'description': 'Type-check and build'}}",
    "Running tests for {component}",
)
TROUBLE = (
    "   [Error] Exit code 1",
    "src/App.tsx(12,5): error TS2322: Type 'string' is not assignable to type 'number'.",
    "Fixing the type error in App.tsx.",
)
COMPONENTS = ("TodoInput", "TodoList", "TodoItem", "FilterBar", "Footer", "App")


@dataclass
class Agent:
    features: list[int]
    testing: bool
    script: Iterator[str]
    fails: bool = False


@dataclass
class Orchestrator:
    """The simulated run: prints lines, writes the database, sleeps between steps."""

    project_dir: Path
    speed: float
    rng: random.Random
    concurrency: int = 3
    batch_size: int = 3
    attempts: dict[int, int] = field(default_factory=dict)
    passed: set[int] = field(default_factory=set)
    tested: set[int] = field(default_factory=set)
    pause_at: int = len(FEATURES) // 2
    paused_once: bool = False
    own_pause: bool = False

    @property
    def db(self) -> Path:
        return self.project_dir / ".autoforge" / "features.db"

    @property
    def drain_file(self) -> Path:
        return self.project_dir / ".autoforge" / ".pause_drain"

    # -- output and pacing ---------------------------------------------------

    def say(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)

    def tick(self, steps: float = 1.0) -> None:
        time.sleep(0.12 * steps / self.speed)

    # -- database ------------------------------------------------------------

    def write(self, sql: str, params: tuple[object, ...] = ()) -> None:
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, params)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def mark(self, ids: list[int], *, passes: bool | None = None, in_progress: bool) -> None:
        marks = ",".join("?" * len(ids))
        if passes is None:
            self.write(
                f"UPDATE features SET in_progress = ? WHERE id IN ({marks})",
                (int(in_progress), *ids),
            )
        else:
            self.write(
                f"UPDATE features SET passes = ?, in_progress = ? WHERE id IN ({marks})",
                (int(passes), int(in_progress), *ids),
            )

    def create_features(self) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM features")
            for index, (category, name) in enumerate(FEATURES, start=1):
                conn.execute(
                    "INSERT INTO features (id, priority, category, name, description, steps,"
                    " passes, in_progress, dependencies, needs_human_input)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, 0)",
                    (
                        index,
                        index,
                        category,
                        name,
                        f"{name}.",
                        json.dumps(["Navigate to the app", f"Check that: {name.lower()}"]),
                        json.dumps([index - 1] if index % 6 == 0 else []),
                    ),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- the run ---------------------------------------------------------------

    def run(self) -> int:
        self.banner()
        self.initialize()
        self.feature_loop()
        self.say(
            "",
            "All features complete!",
            "Waiting for running agents to complete...",
            "Orchestrator finished.",
        )
        return 0

    def banner(self) -> None:
        rule = "=" * 70
        self.say(
            "[ENTRY] autonomous_agent_demo.py starting...",
            "[ORCHESTRATOR] run_parallel_orchestrator called with "
            f"max_concurrency={self.concurrency}",
            rule,
            "  UNIFIED ORCHESTRATOR SETTINGS",
            rule,
            f"Project: {self.project_dir}",
            f"Max concurrency: {self.concurrency} coding agents",
            "YOLO mode: False",
            "Regression agents: 1 (maintained independently)",
            f"Batch size: {self.batch_size} features per agent",
            rule,
            "",
        )
        self.tick(3)

    def initialize(self) -> None:
        rule = "=" * 70
        self.say(
            rule,
            "  INITIALIZATION PHASE",
            rule,
            "No features found - running initializer agent first...",
            "",
            "Running initializer agent...",
            "",
            "Running as INITIALIZER agent",
            "I'll start by reading the app specification.",
            "[Tool: Read]",
            f"   Input: {{'file_path': '{self.project_dir}/app_spec.txt'}}",
            "   [Done]",
        )
        self.tick(4)
        self.say(
            "Now I'll create the feature list in the database.",
            "[Tool: mcp__features__feature_create_bulk]",
            "   [Done]",
        )
        self.create_features()
        self.tick(2)
        self.say(
            f"Progress: 0/{len(FEATURES)} tests passing (0.0%)",
            "",
            rule,
            "  INITIALIZATION COMPLETE - Starting feature loop",
            rule,
            "",
        )
        self.tick(2)

    def pending(self) -> list[int]:
        return [i for i in range(1, len(FEATURES) + 1) if i not in self.passed]

    def feature_loop(self) -> None:
        active: list[Agent] = []
        busy: set[int] = set()
        schedule = True
        while self.pending() or active:
            if self.should_drain():
                self.say("Graceful pause requested - draining running agents...")
                while active:
                    self.step(active, busy)
                self.pause()
                schedule = True
                continue
            if schedule:
                self.spawn(active, busy)
            schedule = self.step(active, busy)

    def should_drain(self) -> bool:
        """True while a pause is asked for: by the drain file, or once, halfway, by the demo."""
        if self.drain_file.exists():
            return True
        if not self.paused_once and len(self.passed) >= self.pause_at:
            self.paused_once = self.own_pause = True
            self.drain_file.parent.mkdir(parents=True, exist_ok=True)
            self.drain_file.write_text(str(os.getpid()))
            return True
        return False

    def pause(self) -> None:
        """Stay paused while the drain file exists (the demo's own pause ends by itself)."""
        self.say("All agents drained - paused.")
        waited = 0
        while self.drain_file.exists():
            self.tick(2)
            waited += 1
            if self.own_pause and waited >= 20:
                self.drain_file.unlink(missing_ok=True)
        self.own_pause = False
        self.say("Resuming from graceful pause...")

    def spawn(self, active: list[Agent], busy: set[int]) -> None:
        coding = [a for a in active if not a.testing]
        ready = [i for i in self.pending() if i not in busy]
        slots = self.concurrency - len(coding)
        if ready or slots:
            self.say(
                f"[DEBUG] Spawning loop: {len(ready)} ready, {max(slots, 0)} slots available,"
                f" max_concurrency={self.concurrency}"
            )
        if slots <= 0 and ready:
            self.say("At max capacity, monitoring active agents")
        while slots > 0 and ready:
            size = 1 if self.rng.random() < 0.3 else min(self.batch_size, len(ready))
            batch, ready = ready[:size], ready[size:]
            busy.update(batch)
            attempt = max(self.attempts.get(i, 0) for i in batch) + 1
            for i in batch:
                self.attempts[i] = attempt
            fails = attempt == 1 and self.rng.random() < 0.2
            if len(batch) == 1:
                self.say(f"Started coding agent for feature #{batch[0]}")
            else:
                self.say("Started coding agent for features " + ", ".join(f"#{i}" for i in batch))
            self.mark(batch, in_progress=True)
            active.append(Agent(batch, False, self.narrative(batch, fails), fails))
            slots -= 1
        untested = sorted(self.passed - self.tested)
        if untested and not any(a.testing for a in active) and self.rng.random() < 0.5:
            batch = untested[: self.batch_size]
            self.tested.update(batch)
            pid = self.rng.randint(40000, 60000)
            self.say(
                f"Started testing agent for features [{','.join(map(str, batch))}] (PID {pid})"
            )
            active.append(Agent(batch, True, self.testing_narrative(batch)))

    def step(self, active: list[Agent], busy: set[int]) -> bool:
        """One line of one agent's story; True when that agent just finished."""
        agent = self.rng.choice(active)
        line = next(agent.script, None)
        if line is not None:
            prefix = f"[Feature #{agent.features[0]}]"
            self.say(f"{prefix} {line}" if line else prefix)
            self.tick(self.rng.uniform(0.5, 1.5))
            return False
        active.remove(agent)
        ids = agent.features
        label = (
            f"Feature #{ids[0]}" if len(ids) == 1 else "Features " + ", ".join(f"#{i}" for i in ids)
        )
        if agent.testing:
            self.say(f"Feature #{ids[0]} testing completed")
        elif agent.fails:
            self.mark(ids, passes=False, in_progress=False)
            busy.difference_update(ids)
            self.say(f"{label} failed")
        else:
            self.mark(ids, passes=True, in_progress=False)
            self.passed.update(ids)
            busy.difference_update(ids)
            self.say(f"{label} completed")
        self.tick()
        return True

    def narrative(self, ids: list[int], fails: bool) -> Iterator[str]:
        root = self.project_dir.as_posix()
        name = FEATURES[ids[0] - 1][1]
        component = self.rng.choice(COMPONENTS)
        yield "[ENTRY] autonomous_agent_demo.py starting..."
        yield "Agent type: coding"
        yield "Feature batch: " + ", ".join(f"#{i}" for i in ids)
        yield ""
        yield "[Tool: mcp__features__feature_claim_and_get]"
        yield f"   Input: {{'feature_id': {ids[0]}}}"
        for template in NARRATIVE:
            yield template.format(root=root, component=component, name_lower=name.lower())
        if fails or self.rng.random() < 0.3:
            yield from TROUBLE
        if fails:
            yield "Unable to make the build pass; giving up on this attempt"
            return
        yield "PASS  src/__tests__/App.test.tsx"
        yield "[Tool: mcp__features__feature_mark_passing]"
        yield f"   Input: {{'feature_id': {ids[0]}}}"
        yield "   [Done]"
        done = len(self.passed) + len(ids)
        yield f"Progress: {done}/{len(FEATURES)} tests passing ({done / len(FEATURES) * 100:.1f}%)"

    def testing_narrative(self, ids: list[int]) -> Iterator[str]:
        yield "[ENTRY] autonomous_agent_demo.py starting..."
        yield "Agent type: testing"
        yield "Running as TESTING agent (regression testing)"
        yield "[Tool: Bash]"
        yield (
            "   Input: {'command': 'playwright-cli open http://localhost:5173',"
            " 'description': 'Open app'}"
        )
        yield "   [Done]"
        yield f"Verifying features {', '.join(f'#{i}' for i in ids)} still pass"
        yield "Testing agent complete. Terminating session."


def dev_server(speed: float, rng: random.Random) -> int:
    """The project's dev server, as Vite prints it, with hot updates until stopped."""
    print("> todo-app@0.1.0 dev", "> vite", "", "  VITE v5.4.0  ready in 312 ms", "",
          "  ➜  Local:   http://localhost:5173/", "  ➜  Network: use --host to expose",
          sep="\n", flush=True)  # fmt: skip
    while True:
        time.sleep(rng.uniform(2.0, 6.0) / speed)
        component = rng.choice(COMPONENTS)
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} [vite] hmr update /src/components/{component}.tsx", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project-dir", type=Path, required=True)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--dev-server", action="store_true", help="Be the project's dev server instead."
    )
    args = parser.parse_args(argv)
    if args.speed <= 0:
        parser.error("--speed must be positive")
    rng = random.Random(args.seed)
    try:
        if args.dev_server:
            return dev_server(args.speed, rng)
        return Orchestrator(args.project_dir.resolve(), args.speed, rng).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
