"""`ServerConfig`: everything `serve` needs, built by the CLI from its options, and
`open_journals`, the journal backend those options name, for the server's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from trio_ws.core import defaults
from trio_ws.core.alerts import AlertSettings
from trio_ws.core.notify import NotifyTarget
from trio_ws.core.project_settings import ProjectSettings
from trio_ws.core.security import is_loopback_host, origin_shape_problem
from trio_ws.data.registry import Registry, RegistryMissing
from trio_ws.journal.choice import JournalName, SyncMode, local_backend, open_shared_backend
from trio_ws.journal.interface import DEFAULT_ARCHIVE_BYTES, ArchiveLimits, JournalBackend
from trio_ws.net.alert_sender import ATTEMPT_TIMEOUT
from trio_ws.net.httpio import STALL_TIMEOUT
from trio_ws.net.publish import PRODUCER_PING_TIMEOUT
from trio_ws.net.tls import ServerTls, server_tls
from trio_ws.state.delivery import RETRY
from trio_ws.state.hub_state import DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES
from trio_ws.state.project import DEFAULT_GRACE, POLL_RESTART

HANDSHAKE_TIMEOUT: Final = defaults.HANDSHAKE_TIMEOUT


@dataclass(frozen=True)
class ServerConfig:
    """Everything `serve` needs; the CLI builds one from its options."""

    registry_path: Path
    token: str
    host: str = defaults.HOST
    port: int = defaults.PORT
    poll_interval: float = defaults.POLL_INTERVAL
    history: int = DEFAULT_HISTORY
    history_bytes: int = DEFAULT_HISTORY_BYTES
    queue_size: int = defaults.QUEUE_SIZE
    allow_origins: frozenset[str] = frozenset()
    allow_hosts: frozenset[str] = frozenset()
    trust_origins: frozenset[str] = frozenset()
    """Origins whose pages may control without the token (a UI served elsewhere, behind
    a proxy that routes the agent API and the socket here); loopback servers only."""
    require_token: bool = False
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    stall_timeout: float = STALL_TIMEOUT
    lock_timeout: float = defaults.LOCK_TIMEOUT
    producer_grace: float = DEFAULT_GRACE
    poll_restart: tuple[float, float] = POLL_RESTART
    """A crashed poll loop's first restart delay and the cap it doubles up to."""
    producer_ping_timeout: float = PRODUCER_PING_TIMEOUT
    staged_limit: int = defaults.STAGED_LIMIT
    """Staged events past which a project's producers are not read (back-pressure)."""
    subscriber_idle: float = defaults.SUBSCRIBER_IDLE
    """A subscriber that sent nothing for this long is pinged."""
    subscriber_pong_timeout: float = defaults.SUBSCRIBER_PONG_TIMEOUT
    """A pinged subscriber that answers no pong within this long is dropped."""
    journal: JournalName = "sqlite"
    """Where projects' histories live (STATE.md 1)."""
    sync: SyncMode = "normal"
    """SQLite ``synchronous`` for the sqlite journal."""
    home: Path | None = None
    """The trio-ws home; journals live in ``<home>/journal`` (default: the registry's
    directory)."""
    broker: str | None = None
    """``redis://HOST:PORT/DB``: journals live in Redis, shared with every node that
    names the same broker (STATE.md 5); the journal option is then ``redis``."""
    idle_close: float | None = defaults.IDLE_CLOSE
    """Seconds a project may go unused before it is closed (None: never)."""
    max_projects: int = defaults.MAX_PROJECTS
    """Most projects open at once; a new one beyond it is refused (1013 / 503)."""
    alerts: AlertSettings | None = None
    """The alert rules' thresholds, the same for every project (None: no alerts;
    ``serve`` turns them on unless ``--alerts off``); a project's own settings may
    say otherwise (`alerts_of`)."""
    certfile: Path | None = None
    """PEM certificate chain: the port speaks HTTPS and wss:// (with ``keyfile``)."""
    keyfile: Path | None = None
    insecure_remote: bool = False
    """Serve plain HTTP on a non-loopback address anyway (a trusted network only)."""
    project_settings: Mapping[str, ProjectSettings] = field(default_factory=dict)
    """The config file's ``[projects.NAME]`` settings; the registry's win over them."""
    archive_bytes: int | None = None
    """Event text kept per project beyond the live history, the oldest whole runs
    going first (None: the backend's default, `DEFAULT_ARCHIVE_BYTES`); a project's own
    ``archive-bytes`` wins over it (`archive_of`)."""
    keep_runs: int | None = None
    """Closed runs kept per project, at most (None: as many as the bytes allow); a
    project's own ``keep-runs`` wins over it (`archive_of`)."""
    notify: tuple[NotifyTarget, ...] = ()
    """Where every project's alerts are delivered (``--notify``, ``--notify-command``)."""
    notify_secret: str | None = None
    """Signs each webhook's body (``--notify-secret``)."""
    notify_timeout: float = ATTEMPT_TIMEOUT
    """Seconds one delivery attempt may take."""
    notify_retry: tuple[float, float] = RETRY
    """A failed attempt's first retry delay and the cap it doubles up to."""

    def __post_init__(self) -> None:
        if not self.notify_timeout > 0:
            raise ValueError("--notify-timeout must be positive")
        keys = [target.key for target in self.notify]
        if len(set(keys)) != len(keys):
            raise ValueError("--notify / --notify-command: a target is named twice")
        if self.trust_origins and not self.on_loopback:
            raise ValueError(
                "--trust-origin needs a loopback --host: on a network any client can send "
                "any Origin header"
            )
        for origin in self.trust_origins:
            problem = origin_shape_problem(origin)
            if problem is not None:
                raise ValueError(f"--trust-origin {problem}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("--certfile and --keyfile go together")
        if not self.on_loopback and self.certfile is None and not self.insecure_remote:
            raise ValueError(
                f"--host {self.host} is not loopback: serve TLS there (--certfile and "
                "--keyfile), or keep a loopback --host behind a TLS proxy; --insecure-remote "
                "serves plain HTTP anyway, the token readable on the network"
            )

    def server_tls(self) -> ServerTls | None:
        """The TLS setup the certificate options name (None: plain HTTP);
        `trio_ws.net.tls.TlsSetupError` when they cannot be used."""
        if self.certfile is None or self.keyfile is None:
            return None
        return server_tls(self.certfile, self.keyfile)

    def settings_of(self, name: str) -> ProjectSettings:
        """Project ``name``'s own settings: the registry's over the config file's.
        Blocking (it reads the registry): call it from a thread."""
        try:
            own = Registry(self.registry_path).settings(name)
        except RegistryMissing:
            own = ProjectSettings()
        return own.over(self.project_settings.get(name, ProjectSettings()))

    def alerts_of(self, name: str) -> AlertSettings | None:
        """Project ``name``'s alert thresholds (None: no alerts): its settings in the
        registry, over the config file's, over the server's options. Blocking."""
        return self.settings_of(name).alert_settings(self.alerts)

    def archive_of(self, name: str) -> ArchiveLimits | None:
        """Project ``name``'s archive limits: its ``archive-bytes`` and ``keep-runs``
        in the registry, over the config file's, over ``--archive-bytes`` and
        ``--keep-runs``; None when it sets neither (the journals' own, `archive`).
        Blocking."""
        own = self.settings_of(name)
        if own.archive_bytes is None and own.keep_runs is None:
            return None
        archive_bytes, keep_runs = own.retention(self.archive_bytes, self.keep_runs)
        return ArchiveLimits(archive_bytes or self.default_archive_bytes, keep_runs)

    @property
    def listed_origins(self) -> frozenset[str]:
        """Origins whose pages may watch and control (with the token, or trusted)."""
        return self.allow_origins | self.trust_origins

    @property
    def default_archive_bytes(self) -> int:
        """The backend's archive bytes when ``--archive-bytes`` is not given."""
        return DEFAULT_ARCHIVE_BYTES["redis" if self.broker else self.journal]

    @property
    def archive(self) -> ArchiveLimits:
        """Every project's archive limits but those a project sets (`archive_of`)."""
        return ArchiveLimits(self.archive_bytes or self.default_archive_bytes, self.keep_runs)

    @property
    def journal_home(self) -> Path:
        return self.home if self.home is not None else self.registry_path.parent

    def journal_backend(self) -> JournalBackend:
        """The local backend (``redis`` needs a client: `open_journals`)."""
        return local_backend(
            self.journal,
            self.journal_home,
            sync=self.sync,
            history=self.history,
            history_bytes=self.history_bytes,
            archive=self.archive,
        )

    @property
    def on_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def subscribers_need_token(self) -> bool:
        return self.require_token or not self.on_loopback


@asynccontextmanager
async def open_journals(config: ServerConfig) -> AsyncIterator[JournalBackend]:
    """Where projects' histories live, for the server's lifetime. With a broker, Redis
    must answer now (JournalError naming it if not): a node that cannot share its
    projects should not start."""
    if config.broker is None:
        yield config.journal_backend()
        return
    async with open_shared_backend(
        config.broker,
        history=config.history,
        history_bytes=config.history_bytes,
        archive=config.archive,
    ) as backend:
        yield backend
