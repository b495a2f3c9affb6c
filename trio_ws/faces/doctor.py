"""``trio-ws doctor``: look at what a new user trips over (the config file, the home, the
registry, each project's directory and features database, the journals, the port, the
broker, the certificate) and say, one line each, what is wrong and what to do. Where to
look is what ``serve`` would use: the CLI reads serve's options, config file included.

This module only looks, read-only (it never opens a journal for writing nor takes
its lock); the verdicts are `trio_ws.core.checkup`'s.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import coredis.exceptions
import h11
import trio

from trio_ws.core.certificates import CertificateError, validity
from trio_ws.core.checkup import (
    BrokerSettings,
    Check,
    PortFinding,
    broker_checks,
    certificate_check,
    port_check,
)
from trio_ws.core.protocol import is_valid_project_name
from trio_ws.data.progress import ProgressError, find_features_db
from trio_ws.data.registry import Project, Registry, RegistryError
from trio_ws.faces.config_file import CONFIG_FILE
from trio_ws.journal.redis import redis_client
from trio_ws.journal.sqlite import JOURNAL_DIR, journal_path
from trio_ws.net.config import ServerConfig
from trio_ws.net.tls import TlsSetupError, server_tls

PROBE_TIMEOUT: Final = 5.0
"""Seconds for each network look (the port's /healthz, the broker)."""
SQLITE_TIMEOUT: Final = 1.0


@dataclass(frozen=True)
class DoctorOptions:
    """Where to look: the home and registry, the address ``serve`` would take, and the
    broker and certificate when they are given."""

    home: Path
    registry_file: Path
    host: str
    port: int
    broker: str | None = None
    certfile: Path | None = None
    keyfile: Path | None = None


def run_checks(
    options: DoctorOptions, now: datetime | None = None, *, first: Sequence[Check] = ()
) -> list[Check]:
    """Every check, in the order a user would fix things, after ``first`` (the config
    file's and the options' verdicts: they decide where the others look)."""
    checks = [*first, home_check(options.home)]
    registry, projects = registry_check(options.registry_file)
    checks.append(registry)
    for project in projects:
        checks.extend(project_checks(project))
    checks.extend(journal_checks(options.home, [project.name for project in projects]))
    checks.append(port_check(trio.run(find_port, options.host, options.port)))
    if options.broker is not None:
        checks.extend(trio.run(check_broker, options.broker))
    if options.certfile is not None:
        checks.extend(certificate_checks(options.certfile, options.keyfile, now))
    return checks


def config_file_check(found: Path | None, home: Path, problem: str | None = None) -> Check:
    """The config file ``serve`` would read (``found``; None: none), or what is wrong
    with it (``problem``: the refusal naming the file, the line and the key), in which
    case the other checks could use only the command line and the environment."""
    if problem is not None:
        return Check(
            "config file",
            "fail",
            problem.removeprefix("config file "),
            "fix it (serve refuses to start on it); the other checks used the command "
            "line and environment only",
        )
    if found is None:
        return Check("config file", "ok", f"none (no {home / CONFIG_FILE}): serve's options decide")
    return Check("config file", "ok", f"{found} is valid; the checks below use it")


def serve_options_check(
    host: str,
    trust_origins: Sequence[str],
    certfile: Path | None,
    keyfile: Path | None,
    insecure_remote: bool,
) -> Check:
    """Whether ``serve`` would start with these options together (`ServerConfig`'s
    rules: no plain HTTP off loopback, a certificate with its key, ...)."""
    try:
        ServerConfig(
            registry_path=Path(),
            token="",
            host=host,
            trust_origins=frozenset(trust_origins),
            certfile=certfile,
            keyfile=keyfile,
            insecure_remote=insecure_remote,
        )
    except ValueError as exc:
        return Check(
            "serve options",
            "fail",
            str(exc),
            "change them (command line, environment or config file)",
        )
    return Check("serve options", "ok", "serve accepts them together")


def home_check(home: Path) -> Check:
    if not home.exists():
        return Check(
            "home", "warn", f"{home} does not exist yet", "`trio-ws serve` makes it at its start"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "home",
            "fail",
            f"{home} is not writable: {exc.strerror}",
            "fix its owner and mode, or choose another --home",
        )
    return Check("home", "ok", f"{home} is writable")


def registry_check(registry_file: Path) -> tuple[Check, list[Project]]:
    if not registry_file.exists():
        return Check(
            "registry", "warn", f"no registry at {registry_file}", "trio-ws projects add NAME DIR"
        ), []
    try:
        projects = Registry(registry_file).list()
    except RegistryError as exc:
        return Check(
            "registry",
            "fail",
            str(exc),
            "restore it from a backup, or move it aside and add the projects again",
        ), []
    return Check("registry", "ok", f"{registry_file}: {len(projects)} projects"), projects


def project_checks(project: Project) -> list[Check]:
    """The project's directory, and its features database when there is one."""
    name = f"project {project.name}"
    if not project.path.is_dir():
        return [
            Check(
                name,
                "fail",
                f"directory {project.path} is missing",
                f"restore it, or `trio-ws projects remove {project.name}`",
            )
        ]
    try:
        database = find_features_db(project.path)
    except ProgressError as exc:
        return [Check(name, "fail", str(exc), "give this user read access to it")]
    if database is None:
        return [Check(name, "ok", f"{project.path} (no features database yet)")]
    problem = sqlite_problem(database, table="features")
    if problem is not None:
        return [
            Check(
                f"features {project.name}",
                "fail",
                f"{database}: {problem}",
                "let the agent recreate it, or restore it from a backup",
            )
        ]
    return [Check(name, "ok", f"{project.path}, features database {database.name} readable")]


def journal_checks(home: Path, registered: list[str]) -> list[Check]:
    """``PRAGMA quick_check`` of each journal file (the registered projects' and any
    other in the journal folder), opened read-only."""
    names = set(registered)
    folder = home / JOURNAL_DIR
    if folder.is_dir():
        names.update(path.stem for path in folder.glob("*.db") if is_valid_project_name(path.stem))
    checks: list[Check] = []
    for name in sorted(names):
        path = journal_path(home, name)
        if not path.exists():
            continue
        problem = sqlite_problem(path)
        if problem is None:
            checks.append(Check(f"journal {name}", "ok", f"{path} passes quick_check"))
        else:
            checks.append(
                Check(
                    f"journal {name}",
                    "fail",
                    f"{path}: {problem}",
                    f"stop serve, move {path.name} (and its -wal/-shm) aside; the project "
                    "starts a new history at its next use",
                )
            )
    return checks


def sqlite_problem(path: Path, table: str | None = None) -> str | None:
    """What is wrong with the SQLite file at ``path``, read-only: not a database, no
    ``table``, or what ``PRAGMA quick_check`` found (without ``table``); None if nothing."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT)
        try:
            if table is not None:
                found = connection.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
                return None if found is not None else f"has no {table} table"
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return str(exc)
    if rows == [("ok",)]:
        return None
    return "quick_check: " + "; ".join(str(row[0]) for row in rows[:3])


async def find_port(host: str, port: int) -> PortFinding:
    """Whether ``serve`` could listen on ``host:port``, and if not, who is there."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return PortFinding(host, port, free=False, error=exc.strerror or str(exc))
        answered = await answers_as_trio_ws(_reachable(host), port)
        return PortFinding(host, port, free=False, trio_ws_answer=answered)
    for listener in listeners:
        await listener.aclose()
    return PortFinding(host, port, free=True)


def _reachable(host: str) -> str:
    """Where to knock for a server listening on ``host`` (a wildcard is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


async def answers_as_trio_ws(host: str, port: int) -> bool:
    """Whether ``/healthz`` there answers as a trio-ws server does, over plain HTTP or
    TLS (the certificate is not checked: this only asks who it is, and sends no token)."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    for context in (None, unverified):
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                body = await _get_healthz(host, port, context)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                continue
            try:
                answer = json.loads(body)
            except ValueError:
                return False
            return isinstance(answer, dict) and answer.get("status") == "ok" and "journal" in answer
    return False


async def _get_healthz(host: str, port: int, tls: ssl.SSLContext | None) -> bytes:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname=host, https_compatible=True)
    async with stream:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET", target="/healthz", headers=[("host", host), ("connection", "close")]
        )
        await stream.send_all(connection.send(request) + (connection.send(h11.EndOfMessage())))
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return body


async def check_broker(url: str) -> list[Check]:
    """The broker answers, and keeps what it is given (`broker_checks`)."""
    shown = _without_password(url)
    found: dict[str, object] = {}
    failure: BaseException | None = None
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            async with redis_client(url) as client:
                await client.ping()
                found.update(await client.config_get(["maxmemory-policy", "appendonly", "save"]))
    except* (coredis.exceptions.RedisError, OSError, trio.TooSlowError) as group:
        failure = _first_leaf(group)
    if failure is not None:
        reason = str(failure) or type(failure).__name__
        detail = f"{shown} does not answer: {reason}"
        return [Check("broker", "fail", detail, "start Redis, or fix --broker")]
    settings = BrokerSettings(
        maxmemory_policy=str(found.get("maxmemory-policy", "")),
        appendonly=str(found.get("appendonly", "")),
        save=str(found.get("save", "")),
    )
    return [Check("broker", "ok", f"{shown} answers"), *broker_checks(shown, settings)]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{netloc}", parts.path, parts.query, ""))


def certificate_checks(certfile: Path, keyfile: Path | None, now: datetime | None) -> list[Check]:
    try:
        dates = validity(certfile.read_bytes())
    except OSError as exc:
        return [Check("certificate", "fail", f"cannot read {certfile}: {exc.strerror}", None)]
    except CertificateError as exc:
        return [Check("certificate", "fail", f"{certfile}: {exc}", "give the PEM chain file")]
    checks = [certificate_check(dates, now or datetime.now(UTC))]
    if keyfile is not None:
        try:
            server_tls(certfile, keyfile)
        except TlsSetupError as exc:
            checks.append(Check("certificate key", "fail", str(exc), "give the certificate's key"))
        else:
            checks.append(Check("certificate key", "ok", f"{keyfile} is the certificate's key"))
    return checks
