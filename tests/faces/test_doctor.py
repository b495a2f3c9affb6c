"""`trio-ws doctor` (`trio_ws.faces.doctor`) on real homes: a healthy one, and each
thing broken for real (a corrupt journal, an unreadable features database, a port
held by another program, an expired certificate, a Redis that evicts), and the
config file serve would read: its port, broker and certificate are the ones checked,
and a broken one is a failed check naming the file, the line and the key."""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from features_db import create_db, db_path
from redis_server import RedisServer, redis_server_path
from services import free_port, require
from serving import NETWORK_TIMEOUT, make_config
from tls_certs import make_tls_files
from trio_websocket import open_websocket_url

from trio_ws.core.checkup import Check, exit_status
from trio_ws.data.registry import Registry
from trio_ws.faces.cli import main
from trio_ws.faces.doctor import DoctorOptions, find_port, run_checks
from trio_ws.journal.redis import redis_client
from trio_ws.journal.sqlite import journal_path
from trio_ws.net.server import Server, serve

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")


def options(home: Path, **settings: object) -> DoctorOptions:
    values: dict[str, object] = {
        "home": home,
        "registry_file": home / "registry.db",
        "host": "127.0.0.1",
        "port": free_port(),
    }
    values.update(settings)
    return DoctorOptions(**values)  # type: ignore[arg-type]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


@pytest.fixture
def healthy_home(home: Path, registry: Registry, project_dir: Path) -> Path:
    """The ``demo`` project with a features database and a journal with history."""
    create_db(db_path(project_dir))
    return home


async def test_a_healthy_home_passes_with_its_server_on_the_port(
    nursery: trio.Nursery, healthy_home: Path, registry: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        config = make_config(registry, journal="sqlite", home=healthy_home)
        server: Server = await nursery.start(serve, config)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws/projects/demo") as ws:
            await ws.get_message()  # hello: the project's journal is open
        assert journal_path(healthy_home, "demo").exists()
        checks = await trio.to_thread.run_sync(run_checks, options(healthy_home, port=server.port))
    found = by_name(checks)
    assert [check.status for check in checks] == ["ok"] * len(checks), checks
    assert set(found) == {"home", "registry", "project demo", "journal demo", "port"}
    assert "trio-ws server is serving there" in found["port"].detail
    assert exit_status(checks) == 0


def test_a_corrupt_journal_fails_with_what_to_do(healthy_home: Path) -> None:
    path = journal_path(healthy_home, "demo")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is no sqlite file at all" * 200)
    check = by_name(run_checks(options(healthy_home)))["journal demo"]
    assert check.status == "fail"
    assert "not a database" in check.detail and check.fix is not None
    assert "move demo.db" in check.fix


def test_a_journal_with_a_broken_page_fails_quick_check(healthy_home: Path) -> None:
    path = journal_path(healthy_home, "demo")
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany(
            "INSERT INTO events (body) VALUES (?)", [("x" * 500,) for _ in range(200)]
        )
    connection.close()
    data = bytearray(path.read_bytes())
    data[8192:12288] = b"\xa5" * 4096  # the third page: one of the table's b-tree pages
    path.write_bytes(bytes(data))
    check = by_name(run_checks(options(healthy_home)))["journal demo"]
    assert check.status == "fail", check


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"garbage, not sqlite" * 100, "not a database"), (None, "has no features table")],
)
def test_an_unreadable_features_database_fails(
    home: Path, registry: Registry, project_dir: Path, content: bytes | None, words: str
) -> None:
    path = db_path(project_dir)
    path.parent.mkdir(parents=True)
    if content is not None:
        path.write_bytes(content)
    else:
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE other (id INTEGER)")
        connection.close()
    checks = run_checks(options(home))
    check = by_name(checks)["features demo"]
    assert check.status == "fail" and words in check.detail
    assert exit_status(checks) == 1


def test_a_missing_project_directory_fails(home: Path, registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    registry.add("gone", tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    check = by_name(run_checks(options(home)))["project gone"]
    assert check.status == "fail" and "projects remove gone" in (check.fix or "")


async def test_a_port_held_by_another_program_is_named(nursery: trio.Nursery) -> None:
    async def not_trio_ws(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")

    with trio.fail_after(NETWORK_TIMEOUT):
        serving = functools.partial(trio.serve_tcp, not_trio_ws, 0, host="127.0.0.1")
        listeners = await nursery.start(serving)
        port = listeners[0].socket.getsockname()[1]
        found = await find_port("127.0.0.1", port)
    assert not found.free and not found.trio_ws_answer


async def test_a_trio_ws_server_over_tls_is_recognised(
    nursery: trio.Nursery, registry: Registry, tmp_path: Path
) -> None:
    files = make_tls_files(tmp_path / "tls")
    config = make_config(registry, certfile=files.certfile, keyfile=files.keyfile)
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, config)
        found = await find_port("127.0.0.1", server.port)
    assert not found.free and found.trio_ws_answer


def test_an_expired_certificate_fails_and_a_close_end_warns(home: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    expired = make_tls_files(
        tmp_path / "old", not_before=now - timedelta(days=90), not_after=now - timedelta(days=1)
    )
    ending = make_tls_files(
        tmp_path / "soon", not_before=now - timedelta(days=80), not_after=now + timedelta(days=5)
    )
    old = by_name(run_checks(options(home, certfile=expired.certfile)))["certificate"]
    assert old.status == "fail" and old.detail.startswith("expired on")
    soon = by_name(run_checks(options(home, certfile=ending.certfile, keyfile=ending.keyfile)))
    assert (
        soon["certificate"].status == "warn" and "expires in 4 days" in soon["certificate"].detail
    )
    assert soon["certificate key"].status == "ok"
    mismatched = run_checks(options(home, certfile=ending.certfile, keyfile=expired.keyfile))
    assert by_name(mismatched)["certificate key"].status == "fail"


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of its own (the session's is shared), set to evict keys."""
    server = RedisServer(require(redis_server_path(), "redis-server"), tmp_path / "redis")
    server.start()

    async def evict() -> None:
        async with redis_client(server.url) as client:
            await client.config_set({"maxmemory-policy": "allkeys-lru"})

    trio.run(evict)
    yield server
    server.stop()


def test_a_redis_that_evicts_fails(home: Path, evicting_redis: RedisServer) -> None:
    checks = by_name(run_checks(options(home, broker=evicting_redis.url)))
    assert checks["broker"].status == "ok"
    assert checks["broker eviction"].status == "fail"
    assert "allkeys-lru" in checks["broker eviction"].detail
    assert checks["broker persistence"].status == "warn"  # started with no save, no AOF


def test_an_unreachable_broker_fails(home: Path) -> None:
    check = by_name(run_checks(options(home, broker=f"redis://127.0.0.1:{free_port()}/0")))
    assert check["broker"].status == "fail" and "does not answer" in check["broker"].detail


def test_the_command_prints_one_line_per_check_and_json(healthy_home: Path) -> None:
    path = journal_path(healthy_home, "demo")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"broken" * 100)
    port = str(free_port())
    common = ["doctor", "--home", str(healthy_home), "--port", port]
    result = subprocess.run([TRIO_WS, *common], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("FAIL journal demo: ") and " -> " in line for line in lines)
    assert any(line.startswith("ok   port: ") for line in lines)
    result = subprocess.run(
        [TRIO_WS, *common, "--json"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    names = [check["check"] for check in report["checks"][:3]]
    assert names == ["config file", "serve options", "home"]
    assert {"check": "home", "status": "ok"}.items() <= report["checks"][2].items()


# -- the config file: doctor looks where serve would ---------------------------------

CLEAN_ENV: dict[str, str | None] = {
    name: None for name in ("TRIO_WS_CONFIG", "TRIO_WS_HOME", "TRIO_WS_PORT", "TRIO_WS_HOST")
}


def doctor(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, Check]]:
    """``trio-ws doctor --json`` through click's runner: the exit code and the checks."""
    result = CliRunner().invoke(
        main, ["doctor", "--json", *map(str, args)], env={**CLEAN_ENV, **(env or {})}
    )
    report = json.loads(result.stdout)
    checks = [
        Check(each["check"], each["status"], each["detail"], each["fix"])
        for each in report["checks"]
    ]
    return result.exit_code, by_name(checks)


@pytest.mark.parametrize("named_by", ["option", "environment", "home"])
def test_the_port_broker_and_certificate_are_the_config_files(
    home: Path, tmp_path: Path, named_by: str
) -> None:
    file = home / "config.toml" if named_by == "home" else tmp_path / "serve.toml"
    now = datetime.now(UTC)
    expired = make_tls_files(
        file.parent / "tls", not_before=now - timedelta(days=90), not_after=now - timedelta(days=1)
    )
    port, broker_port = free_port(), free_port()
    text = (
        f'host = "localhost"\nport = {port}\nbroker = "redis://127.0.0.1:{broker_port}/0"\n'
        'certfile = "tls/test-cert.pem"\nkeyfile = "tls/test-key.pem"\n'  # beside the file
    )
    file.write_text(text, encoding="utf-8")
    assert expired.certfile.exists()
    args: list[str | Path] = ["--home", home]
    env = {}
    if named_by == "option":
        args += ["--config", file]
    elif named_by == "environment":
        env["TRIO_WS_CONFIG"] = str(file)
    code, checks = doctor(*args, env=env)
    assert code == 1
    assert checks["config file"].status == "ok" and str(file) in checks["config file"].detail
    assert checks["port"].detail == f"localhost:{port} is free"
    assert checks["broker"].status == "fail"
    assert f"redis://127.0.0.1:{broker_port}/0 does not answer" in checks["broker"].detail
    assert checks["certificate"].status == "fail"
    assert checks["certificate"].detail.startswith("expired on")
    assert checks["certificate key"].status == "ok"
    # The command line wins over the file, as for serve.
    other = free_port()
    code, checks = doctor(*args, "--port", str(other), env=env)
    assert checks["port"].detail == f"localhost:{other} is free"


def test_without_a_config_file_doctor_says_so_and_checks_the_defaults(home: Path) -> None:
    code, checks = doctor("--home", home, "--port", "0")
    assert code == 0
    assert checks["config file"] == Check(
        "config file", "ok", f"none (no {home / 'config.toml'}): serve's options decide"
    )
    assert checks["port"].detail == "127.0.0.1: port 0, serve takes any free one"
    assert checks["serve options"].status == "ok"
    assert "broker" not in checks and "certificate" not in checks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('host = "127.0.0.1"\n\nport = "8000"\n', "line 3: port: must be an integer"),
        ("[projects.demo]\nkeep-runs = -1\n", "line 2: projects.demo.keep-runs: -1 is below 0"),
        ('certfile = "missing.pem"\n', "line 1: certfile: File "),
        ("prot = 1\n", "line 1: prot: unknown key"),
    ],
)
def test_a_broken_config_file_is_a_failed_check_naming_file_line_and_key(
    healthy_home: Path, text: str, expected: str
) -> None:
    file = healthy_home / "config.toml"
    file.write_text(text, encoding="utf-8")
    code, checks = doctor("--home", healthy_home, "--port", "0")
    assert code == 1
    check = checks["config file"]
    assert check.status == "fail" and check.detail.startswith(f"{file}, {expected}"), check
    assert check.fix is not None and "command line and environment only" in check.fix
    # The other checks still ran, on the command line and environment.
    assert checks["project demo"].status == "ok" and checks["home"].status == "ok"


def test_a_named_config_file_that_is_missing_fails(home: Path, tmp_path: Path) -> None:
    code, checks = doctor("--home", home, "--config", tmp_path / "nope.toml", "--port", "0")
    assert code == 1
    assert checks["config file"].detail == f"{tmp_path / 'nope.toml'} does not exist"


def test_options_serve_would_refuse_together_fail(home: Path) -> None:
    """A non-loopback host from the file without TLS: serve would not start."""
    (home / "config.toml").write_text('host = "0.0.0.0"\nport = 0\n', encoding="utf-8")
    code, checks = doctor("--home", home)
    assert code == 1
    check = checks["serve options"]
    assert check.status == "fail" and "--host 0.0.0.0 is not loopback" in check.detail
    assert checks["port"].detail == "0.0.0.0: port 0, serve takes any free one"
    code, checks = doctor("--home", home, "--insecure-remote")
    assert checks["serve options"].status == "ok"
