"""The demo's simulated orchestrator, as a real child process read by the real pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trio_ws.core.pipeline import AgentPipeline
from trio_ws.data.progress import count_passing_tests
from trio_ws.faces.demo_orchestrator import FEATURES


def run_orchestrator(project: Path, seed: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_ws.faces.demo_orchestrator",
            "--project-dir",
            str(project),
            "--speed",
            "200",
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_completes_every_feature_and_exits_0(tmp_path: Path) -> None:
    result = run_orchestrator(tmp_path, seed=7)
    assert result.returncode == 0, result.stderr
    progress = count_passing_tests(tmp_path)
    assert (progress.passing, progress.in_progress, progress.total) == (
        len(FEATURES),
        0,
        len(FEATURES),
    )
    assert result.stdout.splitlines()[-1] == "Orchestrator finished."


def test_output_tells_a_coherent_story_to_the_pipeline(tmp_path: Path) -> None:
    lines = run_orchestrator(tmp_path, seed=3).stdout.splitlines()
    pipeline = AgentPipeline(clock=lambda: 0.0)
    events = pipeline.set_status("running")
    coding_seen = testing_seen = 0
    for line in lines:
        events.extend(pipeline.feed_line(line))
        state = pipeline.orchestrator.state()
        assert state["codingAgents"] >= 0 and state["testingAgents"] >= 0
        coding_seen = max(coding_seen, state["codingAgents"])
        testing_seen = max(testing_seen, state["testingAgents"])
    statuses = [e["status"] for e in events if e["type"] == "agent_status"]
    assert statuses == ["running", "paused_graceful", "running"]
    assert coding_seen >= 2 and testing_seen >= 1
    assert pipeline.agents.active_count == 0
    assert pipeline.orchestrator.state()["state"] == "complete"
    updates = [e for e in events if e["type"] == "agent_update"]
    assert not any(e.get("synthetic") for e in updates), "every completion had an owner"
    assert {e["agentType"] for e in updates} == {"coding", "testing"}
    assert any(e["state"] == "error" for e in updates), "the demo shows a failure and retry"


def test_an_outside_drain_file_pauses_until_removed(tmp_path: Path) -> None:
    """The dashboard's graceful pause writes the drain file; the demo must honour it."""
    drain = tmp_path / ".autoforge" / ".pause_drain"
    drain.parent.mkdir()
    drain.write_text("1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_ws.faces.demo_orchestrator",
            "--project-dir",
            str(tmp_path),
            "--speed",
            "200",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.strip() == "All agents drained - paused.":
                break
        assert process.poll() is None, "still paused while the file exists"
        drain.unlink()
        rest = process.stdout.read().splitlines()
        assert rest[0] == "Resuming from graceful pause..."
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
