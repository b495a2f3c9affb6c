"""The ``trio-ws`` command line: a thin click layer over ``trio_ws``.

Each command only parses options, calls the library and prints. Every
refusal, whether click's own usage error or a registry error, leaves as one
``trio-ws: error: ...`` line on stderr with exit status 2 (usage) or 1
(anything else), so scripts can rely on both.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click
import trio
from rich.console import Console
from rich.table import Table

from trio_ws import __version__
from trio_ws.registry import (
    HOME_ENV,
    InvalidProjectName,
    Project,
    Registry,
    RegistryError,
    registry_path,
    resolve_home,
)
from trio_ws.security import TOKEN_ENV, TokenError, load_token
from trio_ws.server import Server, ServerConfig, serve_until_signalled

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


@click.group(cls=_Cli, name="trio-ws")
@click.version_option(__version__, prog_name="trio-ws")
def main() -> None:
    """Live-update server for autonomous coding-agent runs."""


@main.group()
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


@projects.command("remove")
@click.argument("name")
@registry_options
def projects_remove(name: str, registry_file: Path, **_: Any) -> None:
    """Unregister project NAME (its directory is left untouched)."""
    project = Registry(registry_file).remove(name)
    click.echo(f"removed {project.name} (was {project.path.as_posix()})")


def _print_table(found: list[Project]) -> None:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        # Piped: never wrap a path across lines, whatever width the pipe reports.
        console = Console(file=sys.stdout, highlight=False, width=10_000)
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


@main.command()
@registry_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8888, show_default=True, type=click.IntRange(0, 65535), help="0: any."
)
@click.option(
    "--poll-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05, max=3600),
    help="Seconds between reads of each watched project's features database.",
)
@click.option(
    "--history",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1, max=1_000_000),
    help="Events held per project for resume and catch-up.",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Also accept websockets from this Origin (repeatable), e.g. http://dash.local:3000.",
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
def serve(
    home_dir: Path,
    registry_file: Path,
    registry_given: bool,
    host: str,
    port: int,
    poll_interval: float,
    history: int,
    allow_origins: tuple[str, ...],
    token: str | None,
    require_token: bool,
    log_level: str,
) -> None:
    """Serve live updates of every registered project until Ctrl-C or SIGTERM.

    The first signal closes every subscriber with 1001 and exits 0 within 2 s;
    a second one exits at once.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
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
    config = ServerConfig(
        registry_path=registry_file,
        token=secret,
        host=host,
        port=port,
        poll_interval=poll_interval,
        history=history,
        allow_origins=frozenset(allow_origins),
        require_token=require_token,
    )

    def announce(server: Server) -> None:
        url = server.url
        if config.subscribers_need_token:
            url += f"?token={secret}"
        click.echo(f"trio-ws {__version__} serving {url}")
        click.echo(f"projects from {registry_file}", err=True)

    try:
        trio.run(serve_until_signalled, config, announce)
    except* OSError as group:
        reason = "; ".join(sorted({_os_reason(exc) for exc in _leaves(group)}))
        raise Refusal(f"cannot listen on {host}:{port}: {reason}") from None


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    found: list[OSError] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
