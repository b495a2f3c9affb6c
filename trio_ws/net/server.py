"""The server: one port for HTTP and websockets, one task per connection.

`serve` opens the listeners, reports the bound port through ``task_status``
(as ``trio.serve_listeners`` does) and runs until cancelled. Each connection
is handled by `_handle_connection`, which reads the request head with h11
under a deadline and a byte cap, answers plain HTTP itself, and answers
websocket upgrades on the same h11 connection (`trio_ws.net.connection`). Every
write is bounded by the stall timeout. A handler failure is logged with its
peer and never reaches the server's nursery.

Who may read, control or produce is `trio_ws.net.access`'s to decide; this
module routes a request to the handler for its path.

Resources: one nursery, holding every connection's handler, each project's
tasks (writer, poll loop, follower: through the manager) and the idle
subscribers' probe; the journals are opened around it and closed (one last
commit each) before it ends. Errors: `OSError` from binding (port in use) and
`JournalError` (a broker that does not answer) propagate to the caller before
``task_status.started`` is called.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import unquote

import trio

from trio_ws.core import protocol
from trio_ws.core.errors import (
    InvalidProjectName,
    JournalUnavailable,
    ProjectDirectoryNotFound,
    ProjectNotFound,
    ServerBusy,
    Unauthorized,
)
from trio_ws.core.security import (
    control_origin_allowed,
    host_refusal,
    origin_allowed,
    redact,
)
from trio_ws.data.registry import Project, Registry, RegistryError, RegistryMissing
from trio_ws.journal.interface import Journal, JournalBackend, JournalError
from trio_ws.journal.redis import RedisBackend
from trio_ws.journal.sqlite import SqliteBackend
from trio_ws.net import api, control, dashboard, runs_api
from trio_ws.net.access import (
    TOKEN_COOKIE,
    carries_token,
    may_control_without_token,
    producer_refusal,
    project_api_refusal,
)
from trio_ws.net.access_log import Exchange, log_access
from trio_ws.net.alert_sender import open_notify
from trio_ws.net.config import ServerConfig, open_journals
from trio_ws.net.connection import ConnectionClosed, WebSocket, accept
from trio_ws.net.httpio import (
    MAX_BODY_BYTES,
    BadRequest,
    RequestHead,
    Transport,
    WriteStalled,
    declared_body_size,
    discard_body,
    linger,
    read_request_head,
    send_json,
    send_response,
    send_streamed,
)
from trio_ws.net.liveness import probe_idle_sessions
from trio_ws.net.metrics import CONTENT_TYPE as METRICS_TYPE
from trio_ws.net.metrics import Metrics
from trio_ws.net.overview_socket import OverviewSession
from trio_ws.net.project_lookup import CoalescedReads
from trio_ws.net.publish import MAX_PRODUCER_MESSAGE, serve_producer
from trio_ws.net.refusals import refuse
from trio_ws.net.subscribe import (
    MAX_INBOUND_BYTES,
    SubscribeRequest,
    parse_backlog,
    parse_since,
    project_websocket,
)
from trio_ws.net.tls import ServerTls, secure
from trio_ws.runtime.signals import on_stop_signals
from trio_ws.runtime.supervise import contained
from trio_ws.state import run_events
from trio_ws.state.lease import PollLease
from trio_ws.state.manager import ConnectionManager, TooManyProjects
from trio_ws.state.overview import left_live
from trio_ws.state.project import Project as LiveProject
from trio_ws.state.runs import RunSummary

log = logging.getLogger("trio_ws.net.server")

POLL_LEASE_INTERVALS: Final = 3
"""A node's poll lease lasts this many poll intervals, renewed at each of its reads."""
JOURNAL_CLOSE_TIMEOUT: Final = 5.0
"""Longest a shutdown waits to commit what is staged and close the journals."""
OVERVIEW_PATH: Final = "/ws/overview"
_SUBSCRIBE_PATH = re.compile(r"/ws/projects/(?P<name>[^/]*)")
_PUBLISH_PATH = re.compile(r"/ws/projects/(?P<name>[^/]*)/publish")
_PROJECT_API_PATH = re.compile(
    r"/api/projects/(?P<name>[^/]*)/(?P<view>features|progress-history|runs(?:/[^/]*(?:/events|/state|/export)?)?|agent/[a-z-]+)"
)


@dataclass
class Server:
    """A running server: what tests, the CLI and the signal handler talk to."""

    config: ServerConfig
    manager: ConnectionManager
    port: int
    metrics: Metrics
    tls: ServerTls | None = None
    """Set when the port speaks TLS (``--certfile``): HTTPS and wss://."""
    started_at: float = field(default_factory=time.monotonic)
    _cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    _accepting: trio.CancelScope = field(default_factory=trio.CancelScope)
    _not_accepting: trio.Event = field(default_factory=trio.Event)
    lookups: CoalescedReads[tuple[Project, bool] | None] = field(
        default_factory=lambda: CoalescedReads(lambda path, name: _lookup(path, name))
    )
    """The registry reads of connecting clients, shared (`project_lookup`)."""

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{shown}:{self.port}/"

    async def shutdown(self, code: int = 1001, within: float = 2.0) -> None:
        """Stop accepting connections, close every subscriber and producer with ``code``
        within ``within`` seconds, then stop serving."""
        self._accepting.cancel()
        await self._not_accepting.wait()
        await self.manager.close_all(code, "server shutting down", within)
        self._cancel.cancel()


async def serve(
    config: ServerConfig, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled (or `Server.shutdown`); reports the `Server` once listening.
    JournalError when the broker cannot be reached at start."""
    async with open_journals(config) as journals:
        await _serve(config, journals, task_status)


async def _serve(
    config: ServerConfig, journals: JournalBackend, task_status: trio.TaskStatus[Server]
) -> None:
    tls = config.server_tls()  # before listening: a bad certificate stops the start
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    for origin in sorted(config.trust_origins):
        log.warning(
            "pages from %s may control every project without the token; any program of "
            "any user of this machine can send that Origin header",
            origin,
        )
    port = listeners[0].socket.getsockname()[1]
    metrics = Metrics()
    async with (
        open_notify(
            config.notify,
            secret=config.notify_secret,
            timeout=config.notify_timeout,
            retry=config.notify_retry,
        ) as notify,
        trio.open_nursery() as nursery,
    ):
        manager = ConnectionManager(
            nursery,
            history=config.history,
            history_bytes=config.history_bytes,
            queue_size=config.queue_size,
            poll_interval=config.poll_interval,
            lock_timeout=config.lock_timeout,
            on_poll=metrics.observe_poll,
            poll_restart=config.poll_restart,
            grace=config.producer_grace,
            extra_secrets=(config.token,),
            journals=journals,
            on_commit=metrics.observe_commit,
            idle_close=config.idle_close,
            max_projects=config.max_projects,
            alerts=config.alerts,
            project_alerts=config.alerts_of,
            # Never None: a project whose own limits were unset goes back to the server's.
            project_archive=lambda name: config.archive_of(name) or config.archive,
            notify=notify,
            # Several nodes: one of them polls a project at a time (the lease's holder).
            lease=(
                PollLease(journals.client, ttl=POLL_LEASE_INTERVALS * config.poll_interval)
                if isinstance(journals, RedisBackend)
                else None
            ),
        )
        metrics.bind(manager)
        server = Server(config, manager, port, metrics, tls)
        nursery.start_soon(contained, "the overview", manager.overview.run, config.registry_path)
        if notify is not None or isinstance(journals, SqliteBackend):
            nursery.start_soon(
                contained, "opening projects at start", _open_at_start, server, notify is not None
            )
        nursery.start_soon(
            probe_idle_sessions,
            manager.live_sessions,
            config.subscriber_idle,
            config.subscriber_pong_timeout,
        )
        try:
            with server._cancel:
                task_status.started(server)

                # A partial, not a closure: every open connection waits under its
                # handler, and a closure is one more coroutine frame (~290 B) each.
                handler = functools.partial(_handle_connection, server)
                with server._accepting:  # cancelling it closes the listening sockets
                    await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
                server._not_accepting.set()
                await trio.sleep_forever()
        finally:
            # Cancelled or shut down: what is staged gets one commit, and each journal
            # records a clean stop (STATE.md 3.3).
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + JOURNAL_CLOSE_TIMEOUT
                await manager.close_journals()
        nursery.cancel_scope.cancel()


async def _handle_connection(server: Server, stream: trio.SocketStream) -> None:
    peer = _peer_name(stream)
    try:
        async with stream:
            if server.tls is None:
                await _dispatch(server, stream, peer)
                return
            secured = await secure(stream, server.tls, peer, server.config.handshake_timeout)
            if secured is not None:
                await _dispatch(server, secured, peer)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        log.debug("connection from %s dropped", peer, extra={"client": peer})
    except* WriteStalled as group:
        log.info("connection from %s cut: %s", peer, group.exceptions[0], extra={"client": peer})
    except* Exception as group:
        log.error("connection from %s failed", peer, exc_info=group, extra={"client": peer})


async def _dispatch(server: Server, stream: Transport, peer: str) -> None:
    config = server.config
    head: RequestHead | None = None
    with trio.move_on_after(config.handshake_timeout):
        try:
            head = await read_request_head(stream, stall_timeout=config.stall_timeout)
        except BadRequest as exc:
            log.info(
                "bad request from %s: %s",
                peer,
                _loggable(str(exc), config.token),
                extra={"client": peer, "status": exc.status},
            )
            await send_response(stream, exc.connection, exc.status, f"{exc}\n".encode())
            return
    if head is None:
        return
    exchange = Exchange(head, peer)
    # Routed here, not in a function of its own: a subscriber's task holds every frame
    # of its call chain while it waits, 15,000 times over.
    try:
        refused = host_refusal(head.header("host"), config.on_loopback, config.allow_hosts)
        if refused is not None:
            # Before anything else, websocket upgrades included: DNS rebinding (PROTOCOL.md 1).
            log.info(
                "refused %s from %s: Host not allowed",
                head.path,
                peer,
                extra={"client": peer, "path": head.path},
            )
            await send_response(stream, head.connection, refused, b"host not allowed\n")
        elif head.path.startswith("/ws/"):
            await _websocket(server, stream, head, peer, exchange)
        else:
            await _http(server, stream, head)
    finally:
        log_access(exchange, config.token)


# -- plain HTTP ---------------------------------------------------------------


async def _http(server: Server, stream: Transport, head: RequestHead) -> None:
    connection = head.connection
    project_api = _PROJECT_API_PATH.fullmatch(head.path)
    if project_api is not None:
        await _project_api(server, stream, head, project_api["name"], project_api["view"])
        return
    if head.method != "GET":
        await send_response(
            stream, connection, 405, b"only GET is served\n", extra_headers=[("allow", "GET")]
        )
        return
    if head.path == "/healthz":
        health = api.health(server.manager, server.started_at)
        if server.tls is not None:
            health["tls"] = {"not_after": server.tls.dates.not_after_text}
        await send_json(stream, connection, 200, health)
    elif head.path == "/metrics":
        await send_response(stream, connection, 200, server.metrics.render(), METRICS_TYPE)
    elif head.path == "/api/projects":
        await _api_projects(server, stream, head)
    elif head.path == "/" or head.path.startswith(("/projects/", "/static/")):
        await _dashboard(server, stream, head)
    else:
        await send_response(stream, connection, 404, b"not found\n")


async def _api_projects(server: Server, stream: Transport, head: RequestHead) -> None:
    """The registered projects; it names directories, so it needs the token whenever
    subscribers do (PROTOCOL.md 1, 6)."""
    if server.config.subscribers_need_token and not carries_token(head, server.config.token):
        await send_json(stream, head.connection, 401, {"error": "Unauthorized"})
        return
    registry = Registry(server.config.registry_path)
    try:
        projects = await trio.to_thread.run_sync(api.list_with_existence, registry)
    except RegistryError as exc:
        log.error("registry unreadable: %s", exc)
        await send_json(stream, head.connection, 503, {"error": str(exc)})
        return
    listing = api.project_listing(server.manager, projects)
    await send_json(stream, head.connection, 200, listing)


async def _project_api(
    server: Server, stream: Transport, head: RequestHead, raw_name: str, view: str
) -> None:
    """``/api/projects/{name}/...``: the features board, the progress chart's data, the
    runs and AutoForge's agent API (PROTOCOL.md 1). Errors are ``{"detail": ...}``, as
    AutoForge's."""
    connection = head.connection
    action = control.REST_ACTIONS.get(view.removeprefix("agent/"))
    if view.startswith("agent/") and action is None and view != "agent/status":
        await send_json(stream, connection, 404, {"detail": "Not Found"})
        return
    method = "POST" if action is not None else "GET"
    if head.method != method:
        await send_json(
            stream,
            connection,
            405,
            {"detail": "Method Not Allowed"},
            extra_headers=[("allow", method)],
        )
        return
    if action is not None and not await _discard_body(stream, head, server.config):
        return
    refusal = project_api_refusal(
        head,
        token=server.config.token,
        allow_origins=server.config.allow_origins,
        trust_origins=server.config.trust_origins,
        readers_need_token=server.config.subscribers_need_token,
        control_action=action is not None,
    )
    if refusal is not None:
        await send_json(stream, connection, refusal[0], {"detail": refusal[1]})
        return
    name = _unquote(raw_name)
    if name is None or not protocol.is_valid_project_name(name):
        await send_json(stream, connection, 400, {"detail": "Invalid project name"})
        return
    try:
        directory = await _locate(server, name)
        if view == "features" and directory is not None:
            status, body = await api.features(
                name, directory, server.config.lock_timeout, server.manager.limiter
            )
            await send_json(stream, connection, status, body)
            return
        live = await server.manager.open(name, directory)
        if view == "features":  # the directory is on the producer's machine
            status, body = await api.producer_features(name, live.hub)
    except ProjectNotFound:
        detail = f"Project '{name}' not found in registry"
        await send_json(stream, connection, 404, {"detail": detail})
        return
    except ProjectDirectoryNotFound as missing:
        await send_json(stream, connection, 404, {"detail": str(missing)})
        return
    except RegistryError as exc:
        log.error("registry unreadable: %s", exc)
        await send_json(stream, connection, 503, {"detail": str(exc)})
        return
    except JournalError as exc:
        log.error("project %s: journal unavailable: %s", name, exc)
        await send_json(stream, connection, 503, {"detail": f"journal unavailable: {exc}"})
        return
    except TooManyProjects as exc:
        log.warning("project %s refused: %s", name, exc)
        await send_json(stream, connection, 503, {"detail": str(exc)})
        return
    if view != "features":
        if action is not None:
            status, body = 200, await control.act(live, action)
        elif view == "agent/status":
            status, body = 200, control.agent_status(live.hub)
        elif view == "runs" or view.startswith("runs/"):
            await _runs(stream, head, name, live, view.removeprefix("runs").lstrip("/"))
            return
        else:
            status, body = 200, control.progress_history(live.hub)
    await send_json(stream, connection, status, body)


async def _runs(
    stream: Transport, head: RequestHead, name: str, live: LiveProject, path: str
) -> None:
    """``runs``, ``runs/{id}`` and its ``/events``, ``/state`` and ``/export`` (the runs
    contract): the open run from the hub's recorder, the closed ones from the journal."""
    connection = head.connection
    journal = live.hub.journal
    if journal is None:
        await send_json(stream, connection, 503, {"detail": "journal unavailable"})
        return
    raw_id, _, part = path.partition("/")
    run_id = _unquote(raw_id) or ""
    recorder = live.hub.runs
    try:
        if not path:
            limit, before_id = runs_api.listing_query(head.query)
            before = None
            if before_id is not None:
                before = await run_events.find_run(journal, recorder, before_id)
                if before is None:
                    raise runs_api.BadParameter("before", f"no run {before_id!r} is held")
            listed, more = await run_events.list_runs(journal, recorder, before, limit)
            await send_json(stream, connection, 200, runs_api.listing_body(name, listed, more))
            return
        found = await run_events.find_run(journal, recorder, run_id)
        if found is None:
            await send_json(stream, connection, *runs_api.unknown_run(run_id))
            return
        if not part:
            data = json.dumps(found.to_json(), separators=(",", ":")).encode()
        elif part == "events":
            query = runs_api.events_query(found, head.query)
            page = await run_events.events_page(
                journal, found, query.selected, query.after, query.limit
            )
            data = runs_api.events_body(name, found, page)
        elif part == "state":
            moment = runs_api.state_query(head.query)
            replay = await run_events.state_at(journal, found, seq=moment.seq, at=moment.at)
            data = runs_api.state_body(name, found, replay)
        else:
            await _export(stream, head, name, journal, found)
            return
    except runs_api.BadParameter as exc:
        await send_json(stream, connection, 400, {"detail": str(exc)})
        return
    except run_events.PatternTooSlow as exc:
        await send_json(stream, connection, 400, {"detail": f"q: {exc}"})
        return
    except (KeyError, TypeError, ValueError) as exc:  # a stored summary unreadable
        log.error("project %s: a stored run is unreadable: %s", name, exc)
        await send_json(stream, connection, 503, {"detail": f"stored run unreadable: {exc}"})
        return
    except JournalError as exc:
        log.error("project %s: journal read for run %s failed: %s", name, run_id, exc)
        await send_json(stream, connection, 503, {"detail": f"journal unavailable: {exc}"})
        return
    await send_response(stream, connection, 200, data, "application/json")


async def _export(
    stream: Transport, head: RequestHead, name: str, journal: Journal, run: RunSummary
) -> None:
    """The run as NDJSON, streamed a chunk of events at a time. A journal failure
    midway can only cut the body short (the 200 is out): logged, and the connection
    ends without the chunked body's end, so the client sees it was cut."""
    filename = runs_api.export_filename(name, run)

    async def parts() -> AsyncIterator[bytes]:
        async for texts in run_events.export_pages(journal, run):
            yield ("\n".join(texts) + "\n").encode()

    await send_streamed(
        stream,
        head.connection,
        parts(),
        "application/x-ndjson",
        [("content-disposition", f'attachment; filename="{filename}"')],
    )


async def _discard_body(stream: Transport, head: RequestHead, config: ServerConfig) -> bool:
    """Read a POST's body (AutoForge sends none or ``{}``) under the handshake deadline;
    False once a refusal (413, 400, 408) was sent."""
    declared = declared_body_size(head)
    failure: tuple[int, str] | None = None
    if declared is not None and declared > MAX_BODY_BYTES:
        failure = (413, f"request body over the {MAX_BODY_BYTES} byte limit")
    else:
        with trio.move_on_after(config.handshake_timeout) as scope:
            try:
                await discard_body(stream, head.connection)
            except BadRequest as exc:
                failure = (exc.status, str(exc))
        if scope.cancelled_caught:
            failure = (408, "request body not received in time")
    if failure is not None:
        await send_json(stream, head.connection, failure[0], {"detail": failure[1]})
        if failure[0] == 413:
            await linger(stream)
        return False
    return True


async def _dashboard(server: Server, stream: Transport, head: RequestHead) -> None:
    """The dashboard page and its static files; `dashboard.respond` decides what to send,
    except that a project page names a project this server has (found as the websocket
    finds it), else it is a clear 404."""
    answer = await _missing_project_page(server, head.path) or dashboard.respond(
        head.path, head.query, head.cookie(TOKEN_COOKIE), server.config.token
    )
    await send_response(
        stream,
        head.connection,
        answer.status,
        answer.body,
        answer.content_type,
        extra_headers=list(answer.headers),
    )


async def _missing_project_page(server: Server, path: str) -> dashboard.Response | None:
    """The 404 page when ``path`` is the page of a project this server does not have;
    None otherwise, also when that cannot be told now (the page's socket will say)."""
    raw_name = dashboard.project_of(path)
    if raw_name is None:
        return None
    name = _unquote(raw_name)
    try:
        if name is None or not protocol.is_valid_project_name(name):
            raise ProjectNotFound()
        await _locate(server, name)
    except (ProjectNotFound, ProjectDirectoryNotFound) as missing:
        return dashboard.missing_project(name or raw_name, str(missing))
    except (RegistryError, JournalError) as exc:
        log.error("cannot tell whether project %s exists: %s", name, exc)
    return None


# -- websockets ---------------------------------------------------------------


async def _websocket(
    server: Server, stream: Transport, head: RequestHead, peer: str, exchange: Exchange
) -> None:
    config = server.config
    if not head.is_websocket:
        await send_response(
            stream,
            head.connection,
            426,
            b"websocket upgrade required\n",
            extra_headers=[("upgrade", "websocket")],
        )
        return
    if head.path == OVERVIEW_PATH:
        await _overview(server, stream, head, peer)
        return
    # The name only: this frame lives as long as the connection, a match object with it.
    publish = _PUBLISH_PATH.fullmatch(head.path) is not None
    match = (_PUBLISH_PATH if publish else _SUBSCRIBE_PATH).fullmatch(head.path)
    if match is None:
        await send_response(stream, head.connection, 404, b"not found\n")
        return
    name = match["name"]
    del match
    if publish:
        refusal = producer_refusal(head, config.token)
    elif not origin_allowed(
        head.header("origin"), head.header("host"), config.on_loopback, config.listed_origins
    ):
        refusal = (403, "origin not allowed")
    else:
        refusal = None
    if refusal is not None:
        log.info(
            "refused %s from %s: %s",
            head.path,
            peer,
            refusal[1],
            extra={"client": peer, "path": head.path, "status": refusal[0]},
        )
        await send_response(stream, head.connection, refusal[0], f"{refusal[1]}\n".encode())
        return
    max_size = MAX_PRODUCER_MESSAGE if publish else MAX_INBOUND_BYTES
    ws = await accept(stream, head, max_message=max_size, stall_timeout=config.stall_timeout)
    if ws is None:
        return
    exchange.ws = ws
    code = 1000
    try:
        if publish:
            await _producer(server, ws, name, peer)
        else:
            await _subscriber(server, ws, head, name, peer)
    except Exception:
        code = 1011  # a failure is no normal closure; the client may retry later
        raise
    finally:
        # Not shielded: when the server is cancelled this drops the TCP
        # connection at once instead of waiting for the peer.
        await ws.aclose(code)


async def _overview(server: Server, stream: Transport, head: RequestHead, peer: str) -> None:
    """``/ws/overview``: every project's summary, live. It names directories, so it
    follows ``/api/projects``: the token whenever subscribers need one; and, as every
    subscriber, only from an allowed Origin."""
    config = server.config
    if not origin_allowed(
        head.header("origin"), head.header("host"), config.on_loopback, config.listed_origins
    ):
        log.info("refused %s from %s: origin not allowed", head.path, peer)
        await send_response(stream, head.connection, 403, b"origin not allowed\n")
        return
    authorized = carries_token(head, config.token)
    ws = await accept(
        stream, head, max_message=MAX_INBOUND_BYTES, stall_timeout=config.stall_timeout
    )
    if ws is None:
        return
    head.release()  # an idle watcher holds no header values
    code = 1000
    try:
        if config.subscribers_need_token and not authorized:
            await refuse(ws, Unauthorized())
            return
        await server.manager.overview.read_registry(config.registry_path)
        session = OverviewSession(ws, server.manager.overview, peer)
        server.manager.add_session(session)
        try:
            await session.run()
        finally:
            server.manager.remove_session(session)
    except Exception:
        code = 1011
        raise
    finally:
        await ws.aclose(code)


async def _project(
    server: Server, ws: WebSocket, raw_name: str, peer: str, *, producer: bool = False
) -> LiveProject | None:
    """The project named in the path, open and held (the caller releases it); otherwise
    refuse and say why.

    Known is a registered project whose directory exists here; with a broker also one
    this node's registry lacks (its directory is on another machine) when a producer
    feeds it, or the broker holds its history, or its hub is open here."""
    name = _unquote(raw_name)
    if name is None or not protocol.is_valid_project_name(name):
        await refuse(ws, InvalidProjectName())
        return None
    try:
        directory = await _locate(server, name, producer=producer)
        project = await server.manager.hold(name, directory)
    except (ProjectNotFound, ProjectDirectoryNotFound) as missing:
        await refuse(ws, missing)
        return None
    except RegistryError as exc:
        log.error("registry unreadable while %s connected: %s", peer, exc, extra={"client": peer})
        await ws.aclose(1011, "registry unavailable")
        return None
    except JournalError:
        # Logged where it was opened; the client retries later (PROTOCOL.md 1011).
        await refuse(ws, JournalUnavailable())
        return None
    except TooManyProjects as exc:
        log.warning("project %s refused to %s: %s", name, peer, exc, extra={"client": peer})
        await refuse(ws, ServerBusy(str(exc)))
        return None
    return project


async def _locate(server: Server, name: str, *, producer: bool = False) -> Path | None:
    """Where ``name``'s directory is on this machine; None for a project this node
    serves though its directory is on another machine (`_known_elsewhere`). The
    websocket and the REST API find projects here, so neither 404s while the other
    works. Raises `ProjectNotFound`, `ProjectDirectoryNotFound`, `RegistryError` (the
    registry unreadable) or `JournalError` (the broker)."""
    found = await server.lookups.get(server.config.registry_path, name)
    if found is not None and found[1]:
        return found[0].path
    if await _known_elsewhere(server, name, producer):
        return None
    raise ProjectNotFound() if found is None else ProjectDirectoryNotFound()


async def _known_elsewhere(server: Server, name: str, producer: bool) -> bool:
    """With a broker: may this node serve ``name`` though it has no directory for it?"""
    journals = server.manager.journals
    if not isinstance(journals, RedisBackend):
        return False
    return producer or server.manager.get_hub(name) is not None or await journals.knows(name)


async def _subscriber(
    server: Server,
    ws: WebSocket,
    head: RequestHead,
    raw_name: str,
    peer: str,
) -> None:
    config = server.config
    authorized = carries_token(head, config.token) or may_control_without_token(
        head, config.trust_origins
    )
    if config.subscribers_need_token and not authorized:
        await refuse(ws, Unauthorized())
        return
    project = await _project(server, ws, raw_name, peer)
    if project is None:
        return
    try:
        await project.prime()
        request = SubscribeRequest(
            project=project.name,
            since=parse_since(head.query.get("since")),
            epoch=head.query.get("epoch"),
            backlog=parse_backlog(head.query.get("backlog")),
            authorized=authorized,
            origin_may_control=control_origin_allowed(
                head.header("origin"), head.header("host"), config.listed_origins
            ),
            peer=peer,
        )
        head.release()  # an idle subscriber holds no header values
        await project_websocket(ws, server.manager, project, request)
    finally:
        server.manager.release(project)


async def _producer(server: Server, ws: WebSocket, raw_name: str, peer: str) -> None:
    project = await _project(server, ws, raw_name, peer, producer=True)
    if project is None:
        return
    try:
        await serve_producer(
            ws,
            project,
            server.manager,
            peer,
            ping_timeout=server.config.producer_ping_timeout,
            staged_limit=server.config.staged_limit,
        )
    finally:
        server.manager.release(project)


async def _open_at_start(server: Server, every: bool) -> None:
    """Open, one after the other, the registered projects whose journal wants it now:

    - ``every`` (notify targets): each one with a journal, so that the alerts its
      targets had not been delivered before this start go out now rather than when a
      client comes back;
    - else each one its journal left live (agent or dev server neither stopped nor
      crashed): its producer may have died with the last server, and only an open
      project runs the grace period that says so (and alerts). Only with the sqlite
      journal: with a broker another node may hold that producer, and a memory
      journal holds nothing from before the start.

    One nobody uses is closed again once idle (never while an alert waits)."""
    manager = server.manager
    try:
        projects = await trio.to_thread.run_sync(Registry(server.config.registry_path).list)
    except RegistryMissing:
        return  # no project registered yet: none to open
    except RegistryError as exc:
        log.error("registry unreadable; no project opened at start: %s", exc)
        return
    for project in projects:
        try:
            if every:
                if not await manager.journals.knows(project.name):
                    continue
            else:
                state = await manager.journals.last_state(project.name)
                if state is None or not left_live(state):
                    continue
            if not await trio.to_thread.run_sync(project.path.is_dir):
                continue
            await manager.open(project.name, project.path)
        except (JournalError, TooManyProjects) as exc:
            log.warning("project %s: not opened at start: %s", project.name, exc)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("project %s: journalled state unreadable: %s", project.name, exc)


def _lookup(registry_path: Path, name: str) -> tuple[Project, bool] | None:
    project = Registry(registry_path).get(name)
    if project is None:
        return None
    return project, project.path.is_dir()


def _unquote(raw: str) -> str | None:
    """The percent-decoded project name; None when it is not valid UTF-8."""
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None


def _loggable(text: str, token: str) -> str:
    """``text`` (which may quote the request) without the server token or other secrets."""
    return redact(text, (token,))


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "unknown peer"
    return f"{host}:{port}"


async def serve_until_signalled(
    config: ServerConfig, announce: Callable[[Server], None] | None = None
) -> None:
    """`serve` for the CLI: the first SIGINT/SIGTERM closes subscribers with 1001 and
    returns (within the 2 s close bound); a second one exits the process at once."""
    stop = trio.Event()

    def stop_serving(signum: int) -> None:
        log.info("signal %d: closing subscribers", signum)
        stop.set()

    async with on_stop_signals(stop_serving), trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        if announce is not None:
            announce(server)
        await stop.wait()
        # No cancel here: `serve` returns by itself once the journals closed (bounded by
        # JOURNAL_CLOSE_TIMEOUT). Cancelling from outside would cancel the broker client's
        # own tasks too, and the journals' last writes (the clean stop, the hold's
        # release) would find the connection gone.
        await server.shutdown(1001)
