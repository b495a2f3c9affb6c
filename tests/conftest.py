"""Fixtures for tests that run the real server on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import settings
from redis_server import RedisServer, redis_server_path
from services import require
from serving import NETWORK_TIMEOUT, make_config

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

# Property tests check what is computed, never how fast: hypothesis's 200 ms deadline per
# example failed a pipeline property test on a machine at load 10 (speed is the
# benchmarks' job), so no deadline.
settings.register_profile("trio-ws", deadline=None)
settings.load_profile("trio-ws")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def registry(home: Path) -> Registry:
    return Registry(home / "registry.db")


@pytest.fixture
def project_dir(tmp_path: Path, registry: Registry) -> Path:
    """A registered project named ``demo`` with an empty directory."""
    directory = tmp_path / "demo"
    directory.mkdir()
    registry.add("demo", directory)
    return directory


@pytest.fixture
def served_home(home: Path, tmp_path: Path) -> Path:
    """A home whose registry lists ``demo`` (an empty directory), for a `trio-ws serve`
    subprocess (`serving.serve_subprocess`)."""
    directory = tmp_path / "demo"
    directory.mkdir()
    Registry(home / "registry.db").add("demo", directory)
    return home


@pytest.fixture
async def server(nursery: trio.Nursery, registry: Registry) -> AsyncIterator[Server]:
    with trio.fail_after(NETWORK_TIMEOUT):
        running: Server = await nursery.start(serve, make_config(registry))
    yield running
    running._cancel.cancel()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the session (tests flush it as they need); skips
    only when the binary is not installed on a developer's machine: CI (``CI`` set,
    as `.ci/run` runs) installs it, so there a missing binary fails."""
    binary = require(redis_server_path(), "redis-server")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
