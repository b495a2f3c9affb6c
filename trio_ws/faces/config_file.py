"""The config file: ``serve``'s options and per-project settings in one TOML file.

Found at ``--config FILE``, else ``$TRIO_WS_CONFIG``, else ``<home>/config.toml`` when
it exists. Its top-level keys are ``serve``'s long option names as written on the
command line, dashes and all (``alert-silent = "10m"``, ``allow-origin = [...]``);
``[projects.NAME]`` tables hold `core.project_settings` keys. Nothing here lists
the options: `ConfiguredCommand` reads them from the click command itself, so an
option added to ``serve`` is a key of the file the day it is added.

The file's values become click's ``default_map``, so click's own order holds:
command line > environment > file > defaults, and ``ParameterSource`` says which
one gave each value (`sources`). Every key is checked before anything starts: an
unknown key, a wrong TOML type or a value the option refuses is a `ConfigFileError`
naming the file, the line and the key (tomllib gives no positions, so `key_line`
finds the key's line in the text).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
from click.core import ParameterSource

from trio_ws.core.notify import NotifyTarget, command_target, webhook_target
from trio_ws.core.project_settings import ProjectSettings, SettingError, read_setting
from trio_ws.core.protocol import is_valid_project_name
from trio_ws.data.registry import resolve_home

CONFIG_ENV: Final = "TRIO_WS_CONFIG"
CONFIG_FILE: Final = "config.toml"
"""Looked for in the home when neither ``--config`` nor ``$TRIO_WS_CONFIG`` names a file."""
PROJECTS_TABLE: Final = "projects"
META_KEY: Final = "trio_ws.config_file"
"""Where the loaded `ConfigFile` waits in the click context's ``meta``."""
CONFIG_PARAM: Final = "config_path"
"""The click parameter of ``--config``."""
_NOT_FROM_FILE: Final = frozenset({CONFIG_PARAM})
"""Options a file cannot set: which file is read is decided before it is read."""
_SECRET: Final = re.compile(r"token|secret|password", re.IGNORECASE)
"""Options whose value `sources` never shows."""


class ConfigFileError(click.ClickException):
    """The config file is unreadable, not TOML, or holds a key or value ``serve`` would
    refuse; the message names the file and, when it can, the line and the key. A usage
    error (exit 2): nothing has started."""

    exit_code = 2


@dataclass(frozen=True)
class ConfigFile:
    """A checked config file: the options it sets (by click parameter name, as written)
    and each project's settings."""

    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    projects: dict[str, ProjectSettings] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """One effective option of a command and where its value came from."""

    key: str
    value: Any
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "source": self.source}


class ConfiguredCommand(click.Command):
    """A click command whose options may also come from the config file.

    The arguments are parsed twice: once leniently, to learn ``--config`` and
    ``--home`` (flag or environment) and so which file to read, then for real with
    the file's values as the ``default_map``."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if extra.get("resilient_parsing") or _asks_for_help(self, args, parent):
            return super().make_context(info_name, args, parent, **extra)
        probe = super().make_context(
            info_name, list(args), parent, **{**extra, "resilient_parsing": True}
        )
        found = load_for(self, probe)
        if found is not None:
            extra["default_map"] = {**(extra.get("default_map") or {}), **found.options}
        ctx = super().make_context(info_name, args, parent, **extra)
        ctx.meta[META_KEY] = found
        return ctx


def _asks_for_help(
    command: click.Command, args: Sequence[str], parent: click.Context | None
) -> bool:
    names = command.get_help_option_names(click.Context(command, parent=parent))
    return any(arg in names for arg in args)


def config_of(ctx: click.Context) -> ConfigFile | None:
    """The config file a `ConfiguredCommand`'s context was made with, if any."""
    found = ctx.meta.get(META_KEY)
    return found if isinstance(found, ConfigFile) else None


def locate(explicit: Path | None, home: Path) -> tuple[Path, bool] | None:
    """Which file to read and whether it is the home's own; None when there is none.
    ``explicit`` (``--config`` or ``$TRIO_WS_CONFIG``) must exist."""
    if explicit is not None:
        path = explicit.expanduser().resolve()
        if not path.is_file():
            raise ConfigFileError(f"config file {path} does not exist")
        return path, False
    in_home = home / CONFIG_FILE
    return (in_home, True) if in_home.is_file() else None


def load_for(command: click.Command, probe: click.Context) -> ConfigFile | None:
    """The config file ``probe`` (a lenient parse of the command line) points at,
    checked against ``command``'s options; None when there is none."""
    given = probe.params.get(CONFIG_PARAM)
    home = probe.params.get("home")
    found = locate(
        Path(given) if given else None, resolve_home(home if isinstance(home, Path) else None)
    )
    if found is None:
        return None
    return load(found[0], command, probe, in_home=found[1])


def option_keys(command: click.Command) -> dict[str, click.Option]:
    """The file's keys for ``command``: each option's long name without its dashes."""
    keys: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or not param.expose_value or param.name is None:
            continue
        if param.name in _NOT_FROM_FILE:
            continue
        longs = [opt for opt in param.opts if opt.startswith("--")]
        keys[longs[0][2:] if longs else param.name] = param
    return keys


def load(path: Path, command: click.Command, ctx: click.Context, *, in_home: bool) -> ConfigFile:
    """Read and check ``path``; `ConfigFileError` at the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"config file {path}: cannot read it: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: not valid TOML: {exc}") from None

    def fail(where: tuple[str, ...], detail: str) -> ConfigFileError:
        line = key_line(text, where)
        at = f", line {line}" if line is not None else ""
        return ConfigFileError(f"config file {path}{at}: {'.'.join(where)}: {detail}")

    keys = option_keys(command)
    options: dict[str, Any] = {}
    projects: dict[str, ProjectSettings] = {}
    for key, value in data.items():
        if key == PROJECTS_TABLE:
            projects = _projects(value, fail)
            continue
        param = keys.get(key)
        if param is None:
            raise fail((key,), _unknown(key, keys))
        if in_home and param.name == "home":
            raise fail((key,), f"cannot be set in the home's own {CONFIG_FILE}")
        problem = _type_problem(param, value)
        if problem is not None:
            raise fail((key,), problem)
        value = _relative_to(path.parent, param, value)
        try:
            param.process_value(ctx, value)
        except click.BadParameter as exc:
            raise fail((key,), exc.message) from None
        assert param.name is not None
        options[param.name] = value
    return ConfigFile(path, options, projects)


def _unknown(key: str, keys: Mapping[str, click.Option]) -> str:
    dashed = key.replace("_", "-")
    if dashed in keys:
        return f"unknown key; did you mean {dashed!r}? (keys are the option names, with dashes)"
    if key == "config":
        return "cannot be set in a config file"
    return "unknown key: not an option of `trio-ws serve` nor [projects.NAME]"


def _projects(value: object, fail: Any) -> dict[str, ProjectSettings]:
    if not isinstance(value, dict):
        raise fail((PROJECTS_TABLE,), "must be a table of [projects.NAME] tables")
    found: dict[str, ProjectSettings] = {}
    for name, table in value.items():
        where = (PROJECTS_TABLE, name)
        if not is_valid_project_name(name):
            raise fail(where, "not a valid project name (1 to 50 of A-Z a-z 0-9 _ -)")
        if not isinstance(table, dict):
            raise fail(where, "must be a table of project settings")
        for key, setting in table.items():
            try:
                read_setting(key, setting)
            except SettingError as exc:
                raise fail((*where, key), exc.detail) from None
        found[name] = ProjectSettings.read(table)
    return found


def _expects(param: click.Option) -> tuple[str, tuple[type, ...]]:
    """What TOML type an option's value must have, in words and as Python types."""
    kind = param.type
    if param.is_flag and param.is_bool_flag:
        return "a boolean (true or false)", (bool,)
    if isinstance(kind, click.types.IntParamType):
        return "an integer", (int,)
    if isinstance(kind, click.types.FloatParamType):
        return "a number", (int, float)
    if isinstance(kind, (click.types.StringParamType, click.Choice, click.Path)):
        return "a string", (str,)
    return "a string or a number", (str, int, float)


def _type_problem(param: click.Option, value: object) -> str | None:
    words, types = _expects(param)

    def fits(one: object) -> bool:
        return isinstance(one, types) and (bool in types or not isinstance(one, bool))

    if param.multiple:
        if not isinstance(value, list) or not all(fits(one) for one in value):
            return f"must be a list of {words.removeprefix('a ').removeprefix('an ')}s"
        return None
    if not fits(value):
        return f"must be {words}, not {_toml_type(value)}"
    return None


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return (
        "a list" if isinstance(value, list) else "a table" if isinstance(value, dict) else "a date"
    )


def _relative_to(directory: Path, param: click.Option, value: Any) -> Any:
    """A path option's relative path is relative to the file that names it."""
    if not isinstance(param.type, click.Path):
        return value

    def anchored(text: str) -> str:
        path = Path(text).expanduser()
        return str(path if path.is_absolute() else directory / path)

    return [anchored(one) for one in value] if isinstance(value, list) else anchored(value)


# -- where a key is written --------------------------------------------------------

_SEGMENT: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED: Final = rf"{_SEGMENT}(?:\s*\.\s*{_SEGMENT})*"
_HEADER: Final = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_ASSIGNMENT: Final = re.compile(rf"^\s*({_DOTTED})\s*=")


def _segments(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_SEGMENT, dotted)
    return tuple(part[1:-1] if part[:1] in "\"'" else part for part in parts)


def key_line(text: str, where: tuple[str, ...]) -> int | None:
    """The (1-based) line that writes the key at path ``where`` (``("projects",
    "todo", "alerts")``), as a table header, a key (dotted or not) in its table, or
    the line of an inline table that holds it; None when it cannot be told."""
    table: tuple[str, ...] = ()
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:  # inside a multi-line string: no key here
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header is not None:
            table = _segments(header[1])
            if table == where:
                return number
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment is None:
            continue
        full = table + _segments(assignment[1])
        if full == where[: len(full)] or where == full[: len(where)]:
            return number
        rest = line[assignment.end() :]
        for quotes in ('"""', "'''"):
            if rest.count(quotes) % 2 == 1:
                in_string = quotes
    return None


# -- where each value came from ---------------------------------------------------

_NOTIFY_LABELS: Final[dict[str, Callable[[str], NotifyTarget]]] = {
    "notify_urls": webhook_target,
    "notify_commands": command_target,
}
"""Options whose values hold credentials (a webhook URL's path, a command's arguments):
shown by their targets' labels, as the log names them."""


def _labelled(target_of: Callable[[str], NotifyTarget], value: str) -> str:
    try:
        return target_of(value).label
    except ValueError as exc:
        return f"(refused: {exc})"


def sources(ctx: click.Context) -> list[Setting]:
    """Every option of ``ctx``'s command (but ``--config``), its effective value and
    where that came from: ``default``, ``file PATH``, ``env VAR`` or ``command line``.
    Secrets (the token) are shown as ``(redacted)``."""
    found = config_of(ctx)
    settings: list[Setting] = []
    for key, param in option_keys(ctx.command).items():
        assert param.name is not None
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if source is ParameterSource.DEFAULT_MAP and found is not None:
            where = f"file {found.path}"
        elif source is ParameterSource.ENVIRONMENT:
            where = f"env {_envvar(ctx, param)}"
        elif source is ParameterSource.COMMANDLINE:
            where = "command line"
        else:
            where = "default"
        if value is not None and _SECRET.search(param.name) and not param.is_flag:
            value = "(redacted)"
        elif param.name in _NOTIFY_LABELS and value:
            value = [_labelled(_NOTIFY_LABELS[param.name], item) for item in value]
        settings.append(Setting(key, _plain(value), where))
    return settings


def _envvar(ctx: click.Context, param: click.Option) -> str:
    """The variable that gave ``param`` its value (as click looks for it)."""
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    for name in names:
        if os.environ.get(name):
            return name
    return f"{ctx.auto_envvar_prefix}_{(param.name or '').upper()}"


def _plain(value: Any) -> Any:
    """A value as JSON shows it."""
    if isinstance(value, (tuple, list, frozenset, set)):
        return [_plain(one) for one in value]
    if isinstance(value, Path):
        return value.as_posix()
    return value
