"""What the watch client's tests share: a target on a test server, a populated
project, a port nobody listens on, a fast backoff."""

from __future__ import annotations

from pathlib import Path

from features_db import create_db, db_path, rows
from test_run_view import AGENT_LINES

from trio_ws.clients.watch_session import WatchTarget
from trio_ws.data.progress import count_passing_tests
from trio_ws.net.server import Server
from trio_ws.runtime.backoff import Backoff
from trio_ws.state.hub import ProjectHub

FAST = Backoff(initial=0.01, maximum=0.05)


def target_of(server: Server, project: str = "demo") -> WatchTarget:
    return WatchTarget.from_server(f"http://127.0.0.1:{server.port}", project)


async def populate(server: Server, project_dir: Path) -> ProjectHub:
    """Give ``demo`` a running agent stream, two agents, orchestrator events and progress."""
    create_db(db_path(project_dir), rows(passing=3, in_progress=2, needs_human_input=1, pending=4))
    hub = (await server.manager.open("demo", project_dir)).hub
    hub.set_status("running")
    hub.feed_lines(AGENT_LINES)
    hub.publish_progress(count_passing_tests(project_dir))  # what the poll loop will read too
    return hub
