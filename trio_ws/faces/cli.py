"""The ``trio-ws`` command line: a thin click layer over ``trio_ws``.

Each command only parses options, calls the library and prints. Every
refusal, whether click's own usage error or a registry error, leaves as one
``trio-ws: error: ...`` line on stderr with exit status 2 (usage) or 1
(anything else), so scripts can rely on both.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import ssl
import stat
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import quote, urlsplit

import click
import trio
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from trio_ws import __version__
from trio_ws.clients.browser_view import INTERVAL as SCREENSHOT_INTERVAL
from trio_ws.clients.common import http_base
from trio_ws.clients.outbox import LINE_CAP
from trio_ws.clients.producer import publish_url
from trio_ws.clients.publish_stdin import publish_stream
from trio_ws.clients.supervisor import ECHO_BUFFER, Outcome, RunOptions, run_command
from trio_ws.clients.tls import client_tls
from trio_ws.core import defaults
from trio_ws.core.alerts import SILENT_AFTER, STALLED_AFTER, AlertSettings
from trio_ws.core.durations import parse_duration
from trio_ws.core.notify import command_target, webhook_target
from trio_ws.core.project_settings import PROJECT_KEYS, SettingError, show_setting
from trio_ws.core.protocol import JsonObject, encode, is_valid_project_name
from trio_ws.core.security import TOKEN_ENV, TokenError, load_token
from trio_ws.data.registry import (
    HOME_ENV,
    InvalidProjectName,
    Project,
    Registry,
    RegistryError,
    registry_path,
    resolve_home,
)
from trio_ws.faces.config_file import (
    CONFIG_ENV,
    CONFIG_FILE,
    ConfigFile,
    ConfigFileError,
    ConfiguredCommand,
    config_of,
    sources,
)
from trio_ws.journal.interface import JournalError
from trio_ws.journal.sqlite import journal_path
from trio_ws.net.config import ServerConfig, open_journals
from trio_ws.net.server import Server, serve_until_signalled
from trio_ws.net.tls import TlsSetupError
from trio_ws.runtime.log_format import LOG_FORMATS, LogFormat, configure_logging
from trio_ws.runtime.signals import until_signalled
from trio_ws.runtime.tuning import tune_gc_for_serving

USAGE_EXIT = 2
FAILURE_EXIT = 1


class Refusal(click.ClickException):
    """An expected failure, shown as one prefixed line with no traceback."""

    exit_code = FAILURE_EXIT

    def show(self, file: IO[Any] | None = None) -> None:
        line = self.format_message().replace("\r", "\\r").replace("\n", "\\n")
        click.echo(f"trio-ws: error: {line}", file=file, err=True)


class UsageRefusal(Refusal):
    """A refusal caused by how the command was called."""

    exit_code = USAGE_EXIT


@contextmanager
def _refusals() -> Iterator[None]:
    """Turn click's multi-line usage errors and registry errors into ``Refusal``."""
    try:
        yield
    except (Refusal, click.exceptions.NoArgsIsHelpError):
        raise
    except click.UsageError as exc:
        message = exc.format_message()
        if exc.ctx is not None:
            message = f"{message} (see '{exc.ctx.command_path} --help')"
        raise UsageRefusal(message) from exc
    except click.ClickException as exc:
        kind = UsageRefusal if exc.exit_code == USAGE_EXIT else Refusal
        raise kind(exc.format_message()) from exc
    except InvalidProjectName as exc:
        raise UsageRefusal(str(exc)) from exc
    except RegistryError as exc:
        raise Refusal(str(exc)) from exc


class _Cli(click.Group):
    """The root group; applies ``_refusals`` to parsing and to every subcommand."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _refusals():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _refusals():
            return super().invoke(ctx)


class Duration(click.ParamType[float]):
    """``90s``, ``10m``, ``1h`` (or plain seconds), as positive seconds
    (`core.durations`); anything else is a usage error naming the option."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION: Final = Duration()


def broker_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--broker URL``, checked to be a Redis URL, for every command that reaches one."""
    return click.option(
        "--broker",
        metavar="redis://HOST:PORT/DB",
        callback=lambda _ctx, _param, value: _broker_url(value),
        help=help,
    )


def log_format_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-format text|json`` for the long-running commands."""
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="Log lines as text, or as one JSON object per line (time, level, logger, "
        "project, message and the line's fields) for a log collector.",
    )(command)


def registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--home``/``--registry``; the command gets ``home_dir``, ``registry_file``
    and ``registry_given`` (whether ``--registry`` named another file)."""

    @click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=HOME_ENV,
        show_envvar=True,
        help="trio-ws home holding registry.db [default: ~/.trio-ws]",
    )
    @click.option(
        "--registry",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Use this registry file instead, e.g. ~/.autoforge/registry.db",
    )
    @functools.wraps(command)
    def wrapper(home: Path | None, registry: Path | None, **kwargs: Any) -> Any:
        home_dir = resolve_home(home)
        return command(
            home_dir=home_dir,
            registry_file=registry_path(home_dir, registry),
            registry_given=registry is not None,
            **kwargs,
        )

    return wrapper


@click.group(cls=_Cli, name="trio-ws", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trio-ws")
def main() -> None:
    """Live-update server for autonomous coding-agent runs."""


@main.group(short_help="The project registry: which names serve which directories.")
def projects() -> None:
    """The project registry: which names serve which directories."""


@projects.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@registry_options
def projects_add(name: str, path: Path, registry_file: Path, **_: Any) -> None:
    """Register directory PATH as project NAME."""
    project = Registry(registry_file).add(name, path)
    click.echo(f"added {project.name} -> {project.path.as_posix()}")


@projects.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@registry_options
def projects_list(as_json: bool, registry_file: Path, **_: Any) -> None:
    """Show every registered project."""
    found = Registry(registry_file).list()
    if as_json:
        click.echo(json.dumps([project.to_json() for project in found], indent=2))
    elif not found:
        click.echo("no projects registered")
    else:
        _print_table(found)


@projects.command("remove", short_help="Unregister project NAME and delete its journal.")
@click.argument("name")
@click.option("--keep-journal", is_flag=True, help="Keep the project's journal (its history).")
@broker_option("The project's journal lives in this Redis (as for `serve --broker`).")
@registry_options
def projects_remove(
    name: str,
    keep_journal: bool,
    broker: str | None,
    home_dir: Path,
    registry_file: Path,
    **_: Any,
) -> None:
    """Unregister project NAME and delete its journal (its directory is left untouched).

    Refused while a running server has the project open: its journal would be
    deleted under it."""
    registry = Registry(registry_file)
    known = registry.get(name)
    if known is None and broker is None:
        registry.remove(name)  # says there is no such project
    config = ServerConfig(registry_path=registry_file, token="", home=home_dir, broker=broker)
    removed = False
    if not keep_journal:
        try:
            removed = trio.run(_remove_journal, config, name)
        except* JournalError as group:
            raise Refusal(str(_first(group))) from None
    if known is not None:
        project = registry.remove(name)
        click.echo(f"removed {project.name} (was {project.path.as_posix()})")
    where = f"in {broker}" if broker else str(journal_path(config.journal_home, name))
    if keep_journal:
        click.echo(f"kept its journal {where}")
    elif removed:
        click.echo(f"removed its journal {where}")


async def _remove_journal(config: ServerConfig, name: str) -> bool:
    """Delete ``name``'s journal through its backend; JournalError while it is open."""
    async with open_journals(config) as journals:
        return await journals.remove(name)


@projects.command(
    "set",
    short_help="Set one of project NAME's own settings.",
    help="Set KEY of project NAME to VALUE, over `serve`'s option of the same name.\n\n"
    "\b\nKEYS:\n"
    + "\n".join(f"  {key:<14} {known.help}" for key, known in PROJECT_KEYS.items())
    + "\n\nA running server reads them when it opens the project (at its first use, or "
    "again after it was closed idle).",
)
@click.argument("name")
@click.argument("key", metavar="KEY")
@click.argument("value")
@registry_options
def projects_set(name: str, key: str, value: str, registry_file: Path, **_: Any) -> None:
    try:
        kept = Registry(registry_file).set_setting(name, key, value)
    except SettingError as exc:
        raise UsageRefusal(str(exc)) from None
    click.echo(f"{name}: {key} = {show_setting(key, kept)}")


@projects.command("unset", short_help="Forget one of project NAME's own settings.")
@click.argument("name")
@click.argument("key", metavar="KEY")
@registry_options
def projects_unset(name: str, key: str, registry_file: Path, **_: Any) -> None:
    """Forget KEY of project NAME: `serve`'s option decides it again."""
    try:
        removed = Registry(registry_file).unset_setting(name, key)
    except SettingError as exc:
        raise UsageRefusal(str(exc)) from None
    click.echo(f"{name}: {key} {'unset' if removed else 'was not set'}")


@projects.command("show", short_help="Show project NAME's own settings.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead.")
@registry_options
def projects_show(name: str, as_json: bool, registry_file: Path, **_: Any) -> None:
    """Show the settings project NAME keeps in the registry (`trio-ws config show`
    also shows those of the config file, and which one wins)."""
    registry = Registry(registry_file)
    if registry.get(name) is None:
        raise Refusal(f"no project {name!r} in registry {registry_file}")
    own = registry.settings(name).items()
    if as_json:
        click.echo(json.dumps({key: show_setting(key, value) for key, value in own.items()}))
    elif not own:
        click.echo(f"{name}: no settings of its own (serve's options decide)")
    else:
        for key, value in own.items():
            click.echo(f"{name}: {key} = {show_setting(key, value)}")


@main.group("config", short_help="The settings `serve` runs with.")
def config_group() -> None:
    """The settings `serve` runs with: config file, environment and options."""


@config_group.command(
    "show",
    context_settings={"ignore_unknown_options": True},
    short_help="Show serve's effective settings and where each came from.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED, metavar="[SERVE OPTIONS]...")
def config_show(as_json: bool, serve_args: tuple[str, ...]) -> None:
    """Show the settings `trio-ws serve` would run with, given the same environment
    and SERVE OPTIONS, and where each came from: default, file PATH, env VAR or
    command line; then each project's own settings (from the registry, which wins,
    or the config file). The token is never shown."""
    root = click.get_current_context().find_root()
    ctx = serve.make_context("serve", list(serve_args), parent=root)
    found = config_of(ctx)
    settings = sources(ctx)
    home_dir = resolve_home(ctx.params.get("home"))
    projects_seen = _project_sources(found, registry_path(home_dir, ctx.params.get("registry")))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "config_file": None if found is None else found.path.as_posix(),
                    "settings": [setting.to_json() for setting in settings],
                    "projects": projects_seen,
                },
                indent=2,
            )
        )
        return
    looked = f"none (no {home_dir / CONFIG_FILE})" if found is None else found.path.as_posix()
    click.echo(f"config file: {looked}")
    console = _table_console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("key", "value", "source"):
        table.add_column(column, no_wrap=True)
    for setting in settings:
        table.add_row(setting.key, _shown(setting.value), setting.source)
    console.print(table)
    if projects_seen:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("project", "key", "value", "source"):
            table.add_column(column, no_wrap=True)
        for name, rows in projects_seen.items():
            for row in rows:
                table.add_row(name, row["key"], row["value"], row["source"])
        console.print(table)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(one) for one in value) or "-"
    return str(value)


def _project_sources(
    found: ConfigFile | None, registry_file: Path
) -> dict[str, list[dict[str, str]]]:
    """Each project's own settings and where each came from: the registry wins over
    the config file (`net.config.ServerConfig.settings_of` reads them the same way)."""
    try:
        kept = Registry(registry_file).all_settings() if registry_file.exists() else {}
    except RegistryError as exc:
        raise Refusal(str(exc)) from exc
    filed = found.projects if found is not None else {}
    seen: dict[str, list[dict[str, str]]] = {}
    for name in sorted(set(kept) | set(filed)):
        rows: dict[str, dict[str, str]] = {}
        for source, settings in (
            (f"file {found.path}" if found is not None else "", filed.get(name)),
            (f"registry {registry_file}", kept.get(name)),
        ):
            for key, value in (settings.items() if settings is not None else {}).items():
                rows[key] = {"key": key, "value": show_setting(key, value), "source": source}
        seen[name] = list(rows.values())
    return seen


def _table_console() -> Console:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        # Piped: never wrap a row across lines, whatever width the pipe reports.
        console = Console(file=sys.stdout, highlight=False, width=10_000)
    return console


def _print_table(found: list[Project]) -> None:
    console = _table_console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "path", "exists", "created"):
        table.add_column(column, no_wrap=True)
    for project in found:
        table.add_row(
            project.name,
            project.path.as_posix(),
            "yes" if project.exists() else "no",
            project.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
    console.print(table)


@dataclass(frozen=True)
class TlsOptions:
    """``serve``'s TLS options, one value for the command (`tls_options`)."""

    certfile: Path | None
    keyfile: Path | None
    insecure_remote: bool


def tls_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--certfile``, ``--keyfile`` and ``--insecure-remote``; the command gets ``tls``."""

    @click.option(
        "--certfile",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="PEM",
        help="Serve HTTPS and wss:// with this certificate chain (with --keyfile).",
    )
    @click.option(
        "--keyfile",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="PEM",
        help="The private key of --certfile.",
    )
    @click.option(
        "--insecure-remote",
        is_flag=True,
        help="Serve plain HTTP on a non-loopback --host (refused otherwise): the token "
        "crosses the network readable.",
    )
    @functools.wraps(command)
    def wrapper(
        certfile: Path | None, keyfile: Path | None, insecure_remote: bool, **kwargs: Any
    ) -> Any:
        return command(tls=TlsOptions(certfile, keyfile, insecure_remote), **kwargs)

    return wrapper


@main.command(
    cls=ConfiguredCommand,
    context_settings={"auto_envvar_prefix": "TRIO_WS"},
    short_help="Serve every registered project's live updates.",
    epilog="Every option may also be set in the config file (the option's name without its "
    'dashes as the key: `alert-silent = "10m"`) or in the environment '
    "(TRIO_WS_ and the option's name in capitals with underscores: TRIO_WS_ALERT_SILENT); "
    "the command line wins over the environment, and both over the file. "
    "`trio-ws config show` says where each value came from.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    show_envvar=True,
    help=f"Read options and per-project settings from this TOML file "
    f"[default: <home>/{CONFIG_FILE} when it exists].",
)
@registry_options
@click.option("--host", default=defaults.HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=defaults.PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="0: any.",
)
@click.option(
    "--poll-interval",
    default=defaults.POLL_INTERVAL,
    show_default=True,
    type=click.FloatRange(min=0.05, max=3600),
    help="Seconds between reads of each watched project's features database.",
)
@click.option(
    "--history",
    default=defaults.HISTORY,
    show_default=True,
    type=click.IntRange(min=1, max=1_000_000),
    help="Events held per project for resume and catch-up.",
)
@click.option(
    "--history-bytes",
    default=defaults.HISTORY_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="Encoded bytes of events held per project, at most (the oldest go first).",
)
@click.option(
    "--archive-bytes",
    default=None,
    type=click.IntRange(min=1),
    help="Bytes of event text kept per project beyond --history, for the runs' "
    "events, search and replay; the oldest whole runs go first "
    "[default: 1 GiB sqlite, 256 MiB redis, 64 MiB memory].",
)
@click.option(
    "--keep-runs",
    default=None,
    type=click.IntRange(min=0),
    help="Closed runs kept per project, at most (the oldest go first) [default: no limit].",
)
@click.option(
    "--journal",
    type=click.Choice(["sqlite", "memory"]),
    default="sqlite",
    show_default=True,
    help="Where each project's history lives: <home>/journal/<project>.db (survives "
    "restarts and kill -9), or memory (every restart is a new epoch).",
)
@broker_option(
    "Share projects with every node that names the same Redis: one history per "
    "project across nodes (the journal then lives in Redis; --journal is ignored)."
)
@click.option(
    "--sync",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="SQLite synchronous mode of the sqlite journal; full also survives power loss.",
)
@click.option(
    "--producer-grace",
    default=defaults.PRODUCER_GRACE,
    show_default=True,
    type=click.FloatRange(min=0, max=86_400),
    help="Seconds a vanished agent producer may take to come back before the run is "
    "marked crashed.",
)
@click.option(
    "--idle-close",
    default=defaults.IDLE_CLOSE,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Close a project that had no subscriber, producer or request for this long "
    "(it opens again from its journal at its next use; never with --journal memory).",
)
@click.option(
    "--max-projects",
    default=defaults.MAX_PROJECTS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most projects open at once; beyond it a new one is refused (websocket 1013, "
    "HTTP 503) until one is closed idle.",
)
@click.option(
    "--alerts",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="Raise alerts (run finished or crashed, input needed, silent agent, stalled "
    "run, authentication, producer lost) as alert events to every watcher.",
)
@click.option(
    "--alert-silent",
    type=DURATION,
    default=f"{SILENT_AFTER / 60:g}m",
    show_default=True,
    help="An active agent without a log line for this long is silent (90s, 10m, 1h).",
)
@click.option(
    "--alert-stalled",
    type=DURATION,
    default=f"{STALLED_AFTER / 60:g}m",
    show_default=True,
    help="A running run without a progress change for this long is stalled.",
)
@click.option(
    "--notify",
    "notify_urls",
    multiple=True,
    metavar="URL",
    help="POST every alert (raised and resolved) to this webhook (repeatable): Slack "
    "(hooks.slack.com) and Discord (discord.com/api/webhooks) get a message, ntfy topics "
    "(ntfy.sh/TOPIC, or ntfy+https://HOST/TOPIC) a notification, any other URL the alert "
    "event's JSON. In order, retried until delivered, its progress kept across restarts.",
)
@click.option(
    "--notify-command",
    "notify_commands",
    multiple=True,
    metavar="CMD",
    help="Run CMD (no shell) with every alert's JSON on stdin (repeatable), e.g. a desktop "
    "notifier; killed after --notify-timeout, retried a few times on a non-zero exit.",
)
@click.option(
    "--notify-secret",
    envvar="TRIO_WS_NOTIFY_SECRET",
    show_envvar=True,
    metavar="SECRET",
    help="Sign each webhook POST: X-Trio-WS-Signature is sha256=HMAC-SHA256(SECRET, "
    "X-Trio-WS-Timestamp + '.' + body).",
)
@click.option(
    "--notify-timeout",
    type=DURATION,
    default="10s",
    show_default=True,
    help="Longest one delivery attempt may take (a webhook's answer, a command's exit).",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Also accept websockets from this Origin (repeatable), e.g. http://dash.local:3000; "
    "its pages may also send control.",
)
@click.option(
    "--trust-origin",
    "trust_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Pages from this Origin may control without the token (repeatable): the "
    "AutoForge UI served elsewhere, its /ws and agent API proxied here. Loopback "
    "servers only; any local program can send that Origin.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="HOST[:PORT]",
    help="On loopback, also serve requests whose Host header names this (repeatable); "
    "any other name is refused, against DNS rebinding.",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    help="Server token [default: <home>/token, created at first start].",
)
@click.option(
    "--require-token",
    is_flag=True,
    help="Subscribers need the token even on loopback (always so on other addresses).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@tls_options
@log_format_option
def serve(
    home_dir: Path,
    registry_file: Path,
    registry_given: bool,
    host: str,
    port: int,
    poll_interval: float,
    history: int,
    history_bytes: int,
    archive_bytes: int | None,
    keep_runs: int | None,
    journal: str,
    broker: str | None,
    sync: str,
    producer_grace: float,
    idle_close: float,
    max_projects: int,
    alerts: str,
    alert_silent: float,
    alert_stalled: float,
    notify_urls: tuple[str, ...],
    notify_commands: tuple[str, ...],
    notify_secret: str | None,
    notify_timeout: float,
    allow_origins: tuple[str, ...],
    trust_origins: tuple[str, ...],
    allow_hosts: tuple[str, ...],
    token: str | None,
    require_token: bool,
    log_level: str,
    tls: TlsOptions,
    log_format: LogFormat,
    config_path: Path | None,
) -> None:
    """Serve live updates of every registered project until Ctrl-C or SIGTERM.

    The first signal closes every subscriber with 1001 and exits 0 within 2 s;
    a second one exits at once.
    """
    configure_logging(log_level, log_format)
    config_file = config_of(click.get_current_context())
    # coredis logs each connection retry at INFO; the journal says what failed, once.
    logging.getLogger("coredis").setLevel(
        max(logging.WARNING, logging.getLevelName(log_level.upper()))
    )
    registry = Registry(registry_file)
    if registry_given:
        registry.list()  # an unreadable registry named by --registry stops us here
    else:
        registry.ensure()
    try:
        secret = load_token(home_dir, token, create=True)
    except (TokenError, OSError) as exc:
        raise Refusal(str(exc)) from exc
    try:
        targets = tuple(webhook_target(url) for url in notify_urls) + tuple(
            command_target(command) for command in notify_commands
        )
        config = ServerConfig(
            registry_path=registry_file,
            token=secret,
            host=host,
            port=port,
            poll_interval=poll_interval,
            history=history,
            history_bytes=history_bytes,
            archive_bytes=archive_bytes,
            keep_runs=keep_runs,
            journal="redis" if broker else "memory" if journal == "memory" else "sqlite",
            broker=broker,
            sync="full" if sync == "full" else "normal",
            home=home_dir,
            producer_grace=producer_grace,
            idle_close=idle_close,
            max_projects=max_projects,
            allow_origins=frozenset(allow_origins),
            trust_origins=frozenset(trust_origins),
            allow_hosts=frozenset(allow_hosts),
            require_token=require_token,
            alerts=AlertSettings(alert_silent, alert_stalled) if alerts == "on" else None,
            certfile=tls.certfile,
            keyfile=tls.keyfile,
            insecure_remote=tls.insecure_remote,
            project_settings=config_file.projects if config_file is not None else {},
            notify=targets,
            notify_secret=notify_secret or None,
            notify_timeout=notify_timeout,
        )
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from None
    if targets and config.alerts is None:
        click.echo(
            "trio-ws: --notify with --alerts off: only projects whose own settings turn "
            "alerts on (trio-ws projects set NAME alerts on) raise any",
            err=True,
        )

    def announce(server: Server) -> None:
        # The link carries the token, as Jupyter's does: the dashboard keeps it in its
        # cookie, and its buttons need it. This is stdout, not the log.
        click.echo(f"trio-ws {__version__} serving {server.url}?token={secret}")
        click.echo(f"projects from {registry_file}", err=True)

    tune_gc_for_serving()
    port_given = click.get_current_context().get_parameter_source("port") is not (
        ParameterSource.DEFAULT
    )
    candidates = [port] if port_given or port == 0 else list(range(port, port + PORT_TRIES))
    for attempt in candidates:
        in_use = _serve_on(replace(config, port=attempt), announce)
        if in_use is None:
            return
        if attempt != candidates[-1]:
            click.echo(f"trio-ws: port {attempt} is in use; trying {attempt + 1}", err=True)
            continue
        hint = "" if port == 0 else "; another server has it (Jupyter's is 8888 too): try --port 0"
        raise Refusal(f"cannot listen on {host}:{attempt}: {in_use}{hint}")


PORT_TRIES: Final = 10
"""Ports `serve` tries from the default one up when ``--port`` was not given."""


def _serve_on(config: ServerConfig, announce: Callable[[Server], None]) -> str | None:
    """Serve until signalled; what the OS said when the port is taken (None once served).
    Any other failure to listen, or a journal that cannot be opened, is a `Refusal`."""
    in_use: str | None = None
    try:
        trio.run(serve_until_signalled, config, announce)
    except* JournalError as group:
        raise Refusal(str(_first(group))) from None
    except* TlsSetupError as group:
        raise Refusal(str(group.exceptions[0])) from None
    except* OSError as group:
        if not _all_in_use(group):
            raise Refusal(
                f"cannot listen on {config.host}:{config.port}: {_os_reasons(group)}"
            ) from None
        in_use = _os_reasons(group)
    return in_use


def _all_in_use(group: BaseExceptionGroup[OSError]) -> bool:
    """Is every error of the (nested) group "address already in use"?"""
    return all(
        _all_in_use(exc) if isinstance(exc, BaseExceptionGroup) else exc.errno == errno.EADDRINUSE
        for exc in group.exceptions
    )


BROKER_SCHEMES: Final = ("redis://", "rediss://", "unix://")


def _broker_url(value: str | None) -> str | None:
    """``--broker`` as given, if it is a Redis URL (coredis reads anything else as
    localhost, which would hide the mistake)."""
    if value is None:
        return None
    if not value.startswith(BROKER_SCHEMES):
        raise click.BadParameter(f"{value!r} is not a Redis URL (redis://HOST:PORT/DB)")
    database = urlsplit(value).path.strip("/")
    if not value.startswith("unix://") and database and not database.isdigit():
        raise click.BadParameter(f"{value!r}: the database ({database!r}) must be a number")
    return value


def _first(group: BaseExceptionGroup[JournalError]) -> JournalError:
    """The first error of a (nested) group."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _os_reasons(group: BaseExceptionGroup[OSError]) -> str:
    """What the OS said, once per distinct reason, e.g. "address already in use"."""
    reasons: set[str] = set()
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            reasons.add(_os_reasons(exc))
        else:
            reasons.add((exc.strerror or str(exc)).lower())
    return "; ".join(sorted(reasons))


# -- producers: trio-ws run, trio-ws publish ---------------------------------------


def cafile_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--cafile PEM``: trust only this CA for an ``https://``/``wss://`` ``--server``."""
    return click.option(
        "--cafile",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        metavar="PEM",
        help="Trust the https/wss server's certificate only if this CA signed it "
        "[default: the system's CAs].",
    )(command)


def _client_tls(servers: tuple[str, ...], cafile: Path | None) -> ssl.SSLContext | None:
    """One TLS context for the servers (None when all are plain), or a usage refusal."""
    try:
        contexts = [client_tls(server, cafile) for server in servers]
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from None
    return next((context for context in contexts if context is not None), None)


def _producer_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--dev``, ``--server`` and ``--token``, shared by `run` and `publish`."""
    command = click.option(
        "--token",
        help=f"Server token [default: ${TOKEN_ENV}, else <home>/token].",
    )(command)
    command = click.option(
        "--server",
        "servers",
        multiple=True,
        default=(defaults.SERVER_URL,),
        show_default=True,
        metavar="URL",
        help="The trio-ws server (http, https, ws or wss). Repeat it for the nodes of a "
        "cluster: a failed connection moves on to the next one, in turn.",
    )(command)
    command = click.option(
        "--flush-within",
        default=defaults.FLUSH_WITHIN,
        show_default=True,
        type=click.FloatRange(min=0, max=3600),
        help="Seconds to keep delivering what is left once the input ended.",
    )(command)
    command = cafile_option(command)
    return click.option(
        "--dev", is_flag=True, help="Publish on the dev-server stream instead of the agent stream."
    )(command)


def _producer_target(
    name: str, servers: tuple[str, ...], home_dir: Path, token: str | None
) -> tuple[tuple[str, ...], str]:
    """The publish URLs (one per ``--server``) and the token, or a refusal saying what
    is wrong."""
    if not is_valid_project_name(name):
        raise UsageRefusal(f"invalid project name {name!r}: use 1 to 50 of A-Z a-z 0-9 _ -")
    try:
        urls = tuple(publish_url(server, name) for server in servers)
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from exc
    try:
        secret = load_token(home_dir, token)
    except (TokenError, OSError) as exc:
        raise Refusal(str(exc)) from exc
    return urls, secret


def _project_dirs(name: str, registry_file: Path, cwd: Path | None) -> tuple[Path, Path]:
    """(where to run, where ``.autoforge`` lives): the registered directory unless
    ``--cwd`` says otherwise; without a registered project, ``--cwd`` is needed."""
    try:
        project = Registry(registry_file).get(name)
    except RegistryError as exc:
        if cwd is None:
            raise Refusal(f"{exc}; or pass --cwd to run without a registered project") from exc
        project = None
    if project is None:
        if cwd is None:
            raise Refusal(
                f"no project {name!r} in registry {registry_file}; "
                "register it with `trio-ws projects add` or pass --cwd"
            )
        return cwd, cwd
    return cwd or project.path, project.path


@main.command(
    short_help="Run CMD and publish its output live.",
    epilog=f"Unacked output waits in a buffer of at most {defaults.CAPACITY:,} items "
    "(lines and statuses) while the server is away; when it is full, new lines are "
    f"dropped and one line says how many. Lines are cut at {LINE_CAP:,} characters. "
    f"Output printed here waits in at most {ECHO_BUFFER:,} bytes when stdout does "
    "not keep up (a pager, a pipe nobody reads); the rest is published but not "
    "printed, and stderr says how much.",
)
@click.argument("name")
@click.argument(
    "command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]..."
)
@_producer_options
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Run CMD here [default: the project's registered directory].",
)
@click.option(
    "--quiet",
    is_flag=True,
    help="Do not print CMD's output here too, nor the notice of a stop signal.",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="Do not read the project's features database under --cwd and send its progress "
    "(then the server reads it, if it can see the project's directory).",
)
@click.option(
    "--lifeline",
    type=click.IntRange(min=0),
    hidden=True,
    help="Stop CMD when this inherited pipe's write end is closed (its parent is gone).",
)
@click.option(
    "--kill-after",
    default=defaults.KILL_AFTER,
    show_default=True,
    type=click.FloatRange(min=0, max=3600),
    help="Seconds between SIGTERM and SIGKILL when stopping CMD.",
)
@click.option(
    "--screenshots",
    is_flag=True,
    help="While a dashboard watches the browsers, capture each agent's browser every 2 s "
    "with playwright-cli (as AutoForge 0.1.22 does) and send the pictures.",
)
@click.option(
    "--screenshot-interval",
    default=SCREENSHOT_INTERVAL,
    type=click.FloatRange(min=0.01, max=3600),
    hidden=True,
    help="Seconds between two rounds of screenshots (tests shorten it).",
)
@registry_options
def run(
    name: str,
    command: tuple[str, ...],
    dev: bool,
    flush_within: float,
    servers: tuple[str, ...],
    token: str | None,
    cafile: Path | None,
    cwd: Path | None,
    quiet: bool,
    no_progress: bool,
    lifeline: int | None,
    kill_after: float,
    screenshots: bool,
    screenshot_interval: float,
    home_dir: Path,
    registry_file: Path,
    **_: Any,
) -> None:
    """Run CMD for project NAME and publish its output live.

    CMD runs without a shell in its own process group, with stdout and stderr
    merged, stdin from /dev/null and PYTHONUNBUFFERED=1. Its statuses are reported: running, then
    stopped (exit 0 or a requested stop) or crashed. Ctrl-C or SIGTERM stops
    CMD's whole group (SIGTERM, then SIGKILL after --kill-after seconds); a
    second one kills the group at once, or, once CMD is gone, stops waiting to
    deliver and exits 128+N. The server's stop/pause/resume/graceful controls
    act on CMD (agent stream only). Exits with CMD's exit status (128+N after
    signal N).
    """
    urls, secret = _producer_target(name, servers, home_dir, token)
    run_dir, project_dir = _project_dirs(name, registry_file, cwd)
    if lifeline is not None and not _is_pipe(lifeline):
        raise UsageRefusal(f"--lifeline {lifeline} is not an open pipe")
    options = RunOptions(
        command=command,
        url=urls,
        token=secret,
        cwd=run_dir,
        project_dir=project_dir,
        stream="dev" if dev else "agent",
        quiet=quiet,
        kill_after=kill_after,
        flush_within=flush_within,
        lifeline=lifeline,
        progress=not no_progress,
        screenshots=screenshots,
        screenshot_interval=screenshot_interval,
        tls=_client_tls(servers, cafile),
    )
    outcome = trio.run(run_command, options)
    _finish(outcome, urls)


@main.command(
    short_help="Publish stdin's lines live.",
    epilog=f"Unacked lines wait in a buffer of at most {defaults.CAPACITY:,} items "
    "while the server is away; when it is full, new lines are dropped and one line "
    f"says how many. Lines are cut at {LINE_CAP:,} characters.",
)
@click.argument("name")
@_producer_options
@registry_options
def publish(
    name: str,
    dev: bool,
    flush_within: float,
    servers: tuple[str, ...],
    token: str | None,
    cafile: Path | None,
    home_dir: Path,
    **_: Any,
) -> None:
    """Publish stdin's lines to project NAME: running at start, stopped at EOF.

    Ctrl-C or SIGTERM ends the input there; a second one stops waiting to
    deliver and exits 128+N. Exits 0 once everything is delivered, 1 if
    anything could not be.
    """
    urls, secret = _producer_target(name, servers, home_dir, token)
    tls = _client_tls(servers, cafile)
    outcome = trio.run(
        functools.partial(
            publish_stream,
            urls,
            secret,
            "dev" if dev else "agent",
            flush_within=flush_within,
            tls=tls,
        )
    )
    _finish(outcome, urls)


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _finish(outcome: Outcome, urls: tuple[str, ...]) -> None:
    """Say what was not delivered or why the server refused, then exit as decided."""
    if outcome.refused is not None:
        raise Refusal(outcome.refused)
    if outcome.undelivered:
        where = " or ".join(urls)
        click.echo(f"trio-ws: {outcome.undelivered} items were not delivered to {where}", err=True)
    raise click.exceptions.Exit(outcome.exit_code)


# -- trio-ws watch ---------------------------------------------------------------


def reader_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--server``, ``--token`` and ``--home``: where a reading client (`watch`,
    `runs`) finds the server and its token."""
    command = click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=HOME_ENV,
        show_envvar=True,
        help="trio-ws home holding the token file [default: ~/.trio-ws]",
    )(command)
    command = click.option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        help="Server token [default: <home>/token if present; loopback servers need none].",
    )(command)
    return click.option(
        "--server",
        default=defaults.SERVER_URL,
        show_default=True,
        metavar="URL",
        help="The trio-ws server (http, https, ws or wss).",
    )(command)


@main.command("token", short_help="Print the server token.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=HOME_ENV,
    show_envvar=True,
    help="trio-ws home holding the token file [default: ~/.trio-ws]",
)
def token_command(home: Path | None) -> None:
    """Print the server token of this home (what producers, control and remote
    dashboards need); the file is made by the first `serve`."""
    home_dir = resolve_home(home)
    secret = _watch_token(home_dir, None)
    if secret is None:
        raise Refusal(f"no token in {home_dir}: `trio-ws serve` makes one at its first start")
    click.echo(secret)


@main.command("open", short_help="Open the dashboard, with the token.")
@click.argument("name", required=False)
@reader_options
def open_command(name: str | None, server: str, token: str | None, home: Path | None) -> None:
    """Open the dashboard (of project NAME, or the projects page) in a browser, with the
    token, so its buttons work; prints the link too."""
    import webbrowser

    if name is not None and not is_valid_project_name(name):
        raise UsageRefusal(f"invalid project name {name!r}")
    secret = _watch_token(resolve_home(home), token)
    try:
        base = http_base(server)
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from None
    link = f"{base}/projects/{name}" if name is not None else f"{base}/"
    if secret:
        link += f"?token={quote(secret, safe='')}"
    click.echo(link)
    webbrowser.open(link)


@main.command("watch", short_help="Watch a project, or every project, live in the terminal.")
@click.argument("name", required=False)
@reader_options
@cafile_option
@click.option("--once", is_flag=True, help="Print the current state once and exit.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print every received message as one JSON line."
)
@click.option(
    "--backlog",
    default=defaults.CLIENT_BACKLOG,
    show_default=True,
    type=click.IntRange(0, defaults.MAX_BACKLOG),
    help="Log lines the server replays on a fresh sync.",
)
@click.option(
    "--lines",
    type=click.IntRange(min=1),
    help="Log lines to show [default: what fits the terminal; 20 with --once].",
)
@click.option("--utc", is_flag=True, help="Show times in UTC [default: this machine's zone].")
@click.option("--no-bell", is_flag=True, help="Do not ring the terminal bell at a new alert.")
def watch_command(
    name: str | None,
    server: str,
    token: str | None,
    home: Path | None,
    cafile: Path | None,
    once: bool,
    as_json: bool,
    backlog: int,
    lines: int | None,
    utc: bool,
    no_bell: bool,
) -> None:
    """Watch project NAME live: agents, progress, orchestrator and log tail. Without
    NAME, every project at a glance (the overview), what needs you first (--backlog,
    --lines and --utc are for one project).

    Reconnects with backoff and resumes where it left off; exits 0 on Ctrl-C,
    1 when the server refuses the project (or, with --once, cannot be reached).
    """
    import time

    from trio_ws.clients import watch, watch_render, watch_session

    if name is None:
        _watch_overview(
            server, _watch_token(resolve_home(home), token), cafile, once, as_json, no_bell
        )
        return
    try:
        target = watch_session.WatchTarget.from_server(
            server, name, _watch_token(resolve_home(home), token), backlog, cafile
        )
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from exc

    dropped: list[str] = []
    zone = UTC if utc else None  # None: the local zone, named on the screen

    def note_drop(reason: str) -> None:
        if not dropped or dropped[-1] != reason:
            click.echo(f"trio-ws: reconnecting: {reason}", err=True)
        dropped[:] = [reason]

    async def once_mode() -> None:
        if as_json:
            await watch_session.fetch_snapshot(target, _print_message)
            return
        view = await watch.once(target)
        shown = lines or watch_render.ONCE_LOG_LINES
        watch.once_console().print(watch_render.render(view, time.time(), shown, zone))

    async def live_mode() -> None:
        if as_json:
            await watch.watch_json(target, _print_line, on_drop=note_drop)
        else:
            console = Console(highlight=False)
            await watch.watch_live(target, console, log_lines=lines, zone=zone, bell=not no_bell)

    _run_reader(once_mode if once else live_mode)


def _watch_overview(
    server: str, token: str | None, cafile: Path | None, once: bool, as_json: bool, no_bell: bool
) -> None:
    """`trio-ws watch` with no project: the overview, once, as JSON lines, or live."""
    import time

    from trio_ws.clients import watch, watch_overview

    try:
        target = watch_overview.OverviewTarget.from_server(server, token, cafile)
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from exc

    def note_drop(reason: str) -> None:
        click.echo(f"trio-ws: reconnecting: {reason}", err=True)

    async def once_mode() -> None:
        if as_json:
            await watch_overview.overview_once(target, _print_message)
            return
        view = await watch_overview.overview_once(target)
        watch.once_console().print(watch_overview.render_overview(view, time.time()))

    async def live_mode() -> None:
        if as_json:
            await watch_overview.watch_overview_json(target, _print_line, on_drop=note_drop)
        else:
            console = Console(highlight=False)
            await watch_overview.watch_overview_live(target, console, bell=not no_bell)

    _run_reader(once_mode if once else live_mode)


# -- trio-ws runs ----------------------------------------------------------------


@main.command("runs", short_help="List a project's runs.")
@click.argument("name")
@reader_options
@cafile_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON instead of a table.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 500),
    help="Newest runs to show.",
)
def runs_command(
    name: str,
    server: str,
    token: str | None,
    home: Path | None,
    cafile: Path | None,
    as_json: bool,
    limit: int,
) -> None:
    """List project NAME's runs, newest first: when, how long, how it ended, progress."""
    from trio_ws.clients import runs_list, watch_session

    try:
        target = watch_session.WatchTarget.from_server(
            server, name, _watch_token(resolve_home(home), token), cafile=cafile
        )
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from exc
    try:
        found = trio.run(runs_list.read_runs, target, limit)
    except watch_session.WatchError as exc:
        raise Refusal(str(exc)) from None
    if as_json:
        click.echo(json.dumps(found, indent=2))
    elif not found:
        click.echo(f"no runs recorded for {name}")
    else:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in runs_list.COLUMNS:
            table.add_column(column, no_wrap=True)
        for run in found:
            table.add_row(*runs_list.row(run))
        _table_console().print(table)


@main.command("replay", short_help="Replay a recorded run in the terminal.")
@click.argument("name")
@click.argument("run_id", metavar="RUN")
@reader_options
@cafile_option
@click.option(
    "--speed",
    default="1",
    show_default=True,
    metavar="X",
    help="Times real time, by the events' timestamps (10, 100, 0.5; 'max': no waiting).",
)
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Start at this moment: a seq, an ISO-8601 time or an offset from the run's "
    "start (+90s, +5m, +1h30m) [default: the run's start].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the snapshot and every event as JSON lines."
)
@click.option(
    "--lines",
    type=click.IntRange(min=1),
    help="Log lines to show [default: what fits the terminal].",
)
@click.option("--utc", is_flag=True, help="Show times in UTC [default: this machine's zone].")
def replay_command(
    name: str,
    run_id: str,
    server: str,
    token: str | None,
    home: Path | None,
    cafile: Path | None,
    speed: str,
    at: str | None,
    as_json: bool,
    lines: int | None,
    utc: bool,
) -> None:
    """Replay run RUN of project NAME (an id from `trio-ws runs`) through the watch view:
    the state at --at, then each event when its timestamp comes due at --speed (a run
    still going is followed). Exits 0 at the end of the run, 1 when the run cannot be
    read, 2 for an --at or --speed it cannot use."""
    from trio_ws.clients import run_replay, watch_session

    try:
        pace = float("inf") if speed == "max" else float(speed)
        if not pace > 0:
            raise ValueError
    except ValueError:
        raise UsageRefusal(f"--speed {speed!r}: give a number above 0 or 'max'") from None
    try:
        target = watch_session.WatchTarget.from_server(
            server, name, _watch_token(resolve_home(home), token), cafile=cafile
        )
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from exc

    async def replaying() -> None:
        if as_json:
            replay = await run_replay.open_replay(
                target, run_id, speed=pace, at=at, on_message=_print_message
            )
            await run_replay.play(replay, _print_message)
            return
        replay = await run_replay.open_replay(target, run_id, speed=pace, at=at)
        await run_replay.read_progress(replay)
        zone = UTC if utc else None
        await run_replay.replay_live(replay, Console(highlight=False), log_lines=lines, zone=zone)

    try:
        _run_reader(replaying)
    except ValueError as exc:  # an --at that cannot be read (it may need the run's start)
        raise UsageRefusal(str(exc)) from None


@main.command("export", short_help="Write a recorded run's events as NDJSON.")
@click.argument("name")
@click.argument("run_id", metavar="RUN")
@reader_options
@cafile_option
def export_command(
    name: str, run_id: str, server: str, token: str | None, home: Path | None, cafile: Path | None
) -> None:
    """Write run RUN of project NAME to stdout, one event per line as subscribers received
    it, streamed as the server sends it. Exits 1 with a one-line error when the run is
    unknown, a parameter is refused or the server cannot be reached."""
    from trio_ws.clients import run_export, watch_session

    try:
        target = watch_session.WatchTarget.from_server(
            server, name, _watch_token(resolve_home(home), token), cafile=cafile
        )
    except ValueError as exc:
        raise UsageRefusal(str(exc)) from exc

    async def exporting() -> None:
        await run_export.export(target, run_id, _write_stdout)

    _run_reader(exporting)


def _write_stdout(data: str | bytes) -> None:
    """Text or bytes to stdout, flushed at once for a reader that follows: a reader that
    went away (e.g. ``| head``) becomes `OutputClosed`, which `_run_reader` ends cleanly."""
    from trio_ws.clients.watch_session import OutputClosed

    try:
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(data)
            sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed("stdout closed") from None


def _print_line(text: str) -> None:
    _write_stdout(text + "\n")


def _print_message(message: JsonObject) -> None:
    """A protocol message as one JSON line (what ``--json`` prints)."""
    _print_line(encode(message))


def _run_reader(main: Callable[[], Awaitable[None]]) -> None:
    """Run a command that reads the server until it ends or is signalled. A reader of
    its output that is done (``| head``) is a clean end, with stdout sent to /dev/null
    so the exit's flush raises nothing; a `WatchError` is the one-line error; Ctrl-C
    before the signal handler was installed is still a clean exit."""
    from trio_ws.clients.watch_session import OutputClosed, WatchError

    try:
        trio.run(until_signalled, main)
    except OutputClosed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except WatchError as exc:
        raise Refusal(str(exc)) from None
    except KeyboardInterrupt:
        pass


def _watch_token(home_dir: Path, token: str | None) -> str | None:
    """The explicit token, else the home's token file when there is one, else none."""
    from trio_ws.core.security import TOKEN_FILE

    if token:
        return token
    if not (home_dir / TOKEN_FILE).exists():
        return None
    try:
        return load_token(home_dir)
    except (TokenError, OSError) as exc:
        raise Refusal(str(exc)) from exc


# -- trio-ws doctor --------------------------------------------------------------


@main.command(
    context_settings={"ignore_unknown_options": True},
    short_help="Check this machine's setup; one line per check.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object.")
@click.argument("serve_args", nargs=-1, type=click.UNPROCESSED, metavar="[SERVE OPTIONS]...")
def doctor(as_json: bool, serve_args: tuple[str, ...]) -> None:
    """Check what a new setup trips over: the config file, the home, the registry, each
    project's directory and features database, the journals (quick_check, read-only),
    the port, the broker and the certificate. It looks where `trio-ws serve` would
    with the same environment and SERVE OPTIONS (--config, --home, --host, --port,
    --broker, --certfile, --keyfile, ...): the config file's values included, as
    `trio-ws config show` lists them. Each problem says what to do; exits 1 when
    something is wrong (warnings alone exit 0), a broken config file included."""
    from trio_ws.core.checkup import exit_status
    from trio_ws.faces.doctor import (
        DoctorOptions,
        config_file_check,
        run_checks,
        serve_options_check,
    )

    root = click.get_current_context().find_root()
    args = list(serve_args)
    try:
        ctx = serve.make_context("serve", list(args), parent=root)
        problem = None
    except ConfigFileError as exc:  # a check of its own; the rest look without the file
        ctx = click.Command.make_context(serve, "serve", list(args), parent=root)
        problem = exc.message
    params = ctx.params
    home_dir = resolve_home(params.get("home"))
    found = config_of(ctx)
    config = config_file_check(None if found is None else found.path, home_dir, problem)
    options = DoctorOptions(
        home_dir,
        registry_path(home_dir, params.get("registry")),
        params["host"],
        params["port"],
        params.get("broker"),
        params.get("certfile"),
        params.get("keyfile"),
    )
    settings = serve_options_check(
        params["host"],
        params.get("trust_origins") or (),
        params.get("certfile"),
        params.get("keyfile"),
        bool(params.get("insecure_remote")),
    )
    checks = run_checks(options, first=(config, settings))
    code = exit_status(checks)
    if as_json:
        report = {"ok": code == 0, "checks": [check.as_json() for check in checks]}
        click.echo(json.dumps(report, indent=2))
    else:
        for check in checks:
            click.echo(check.line())
    raise click.exceptions.Exit(code)


@main.command(short_help="A lively simulated run, served and watched.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the demo's registry, token and project here [default: a temporary folder].",
)
@click.option("--port", default=defaults.PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.1, max=1000),
    help="Pace of the simulated run; at 1 a whole run takes about two minutes.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    help="Stop after this many seconds [default: run until Ctrl-C].",
)
@click.option("--seed", type=int, help="Make the simulated run repeatable.")
@log_format_option
def demo(
    home: Path | None,
    port: int,
    speed: float,
    duration: float | None,
    seed: int | None,
    log_format: LogFormat,
) -> None:
    """Watch a lively, realistic agent run: server, project and producer, no setup."""
    from trio_ws.faces.demo import DemoLinks, DemoOptions, run_demo

    if log_format == "json":
        configure_logging("warning", "json")
    else:
        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")

    def announce(links: DemoLinks) -> None:
        click.echo(f"trio-ws {__version__} demo is live.")
        click.echo(f"  dashboard: {links.dashboard}")
        click.echo(f"  terminal:  {links.watch}")
        click.echo(f"  home:      {links.home}")
        click.echo("Ctrl-C stops it.")

    options = DemoOptions(home=home, port=port, speed=speed, duration=duration, seed=seed)
    tune_gc_for_serving()
    try:
        code = trio.run(run_demo, options, announce)
    except* OSError as group:
        raise Refusal(f"cannot start the demo on port {port}: {_os_reasons(group)}") from None
    sys.exit(code)
