"""The config file (issue 23 item 2): `serve`'s options and per-project settings in TOML,
through click's runner (`config show`, refusals) and a real `trio-ws serve` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import trio
from click.testing import CliRunner, Result
from services import free_port
from serving import NETWORK_TIMEOUT, http_request
from tls_certs import make_tls_files

from trio_ws.core.project_settings import ProjectSettings
from trio_ws.data.registry import Registry
from trio_ws.faces.cli import main, serve
from trio_ws.faces.config_file import key_line, option_keys

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
CLEAN_ENV: dict[str, str | None] = {
    "TRIO_WS_CONFIG": None,
    "TRIO_WS_HOME": None,
    "TRIO_WS_TOKEN": None,
    "TRIO_WS_PORT": None,
    "TRIO_WS_HISTORY": None,
}


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env={**CLEAN_ENV, **(env or {})})


def show(home: Path, *args: str | Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run("config", "show", "--json", "--home", home, *args, env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert isinstance(shown, dict)
    return shown


def setting(shown: dict[str, Any], key: str) -> tuple[Any, str]:
    (found,) = [each for each in shown["settings"] if each["key"] == key]
    return found["value"], found["source"]


def refused(result: Result) -> str:
    """The one error line of a refusal that exits 2 before anything starts."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("trio-ws: error: config file ")
    return line


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "elsewhere" / "serve.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- precedence: command line > environment > file > default -----------------------


def test_each_value_comes_from_the_strongest_source_and_config_show_names_it(
    home: Path, config: Path
) -> None:
    write(config, 'port = 9001\nhistory = 77\nmax-projects = 5\nalert-silent = "2m"\n')
    shown = show(
        home,
        "--config",
        config,
        "--history",
        "88",
        env={"TRIO_WS_PORT": "9002", "TRIO_WS_ALERT_SILENT": "3m"},
    )
    assert shown["config_file"] == config.as_posix()
    assert setting(shown, "history") == (88, "command line")  # over the file
    assert setting(shown, "port") == (9002, "env TRIO_WS_PORT")  # over the file
    assert setting(shown, "alert-silent") == (180.0, "env TRIO_WS_ALERT_SILENT")
    assert setting(shown, "max-projects") == (5, f"file {config}")
    assert setting(shown, "poll-interval") == (1.0, "default")
    assert setting(shown, "home") == (home.as_posix(), "command line")


def test_the_command_line_wins_over_the_environment(home: Path) -> None:
    shown = show(home, "--port", "9003", env={"TRIO_WS_PORT": "9002"})
    assert setting(shown, "port") == (9003, "command line")


def test_config_show_lists_every_serve_option_and_no_more(home: Path) -> None:
    shown = show(home)
    assert [each["key"] for each in shown["settings"]] == list(option_keys(serve))
    assert "config" not in option_keys(serve)
    assert {"port", "alert-silent", "allow-origin", "require-token", "log-format"} <= set(
        option_keys(serve)
    )


def test_an_option_added_to_serve_is_a_key_of_the_file_without_listing_it(
    home: Path, config: Path
) -> None:
    """The keys come from the click command's own parameters (another helper's new
    option works the day it merges)."""
    extra = click.Option(["--brand-new-thing"], type=click.IntRange(1, 9), default=1)
    serve.params.append(extra)
    try:
        write(config, "brand-new-thing = 7\n")
        assert setting(show(home, "--config", config), "brand-new-thing") == (7, f"file {config}")
        write(config, "brand-new-thing = 70\n")
        line = refused(run("config", "show", "--home", home, "--config", config))
        assert "line 1: brand-new-thing: 70 is not in the range 1<=x<=9" in line
    finally:
        serve.params.remove(extra)


def test_the_file_is_named_by_the_environment_too(home: Path, config: Path) -> None:
    write(config, "history = 42\n")
    shown = show(home, env={"TRIO_WS_CONFIG": str(config)})
    assert setting(shown, "history") == (42, f"file {config}")


def test_the_homes_config_toml_is_read_when_no_file_is_named(home: Path) -> None:
    write(home / "config.toml", 'allow-origin = ["http://dash.local:3000"]\nrequire-token = true\n')
    shown = show(home)
    assert shown["config_file"] == (home / "config.toml").as_posix()
    assert setting(shown, "allow-origin") == (
        ["http://dash.local:3000"],
        f"file {home}/config.toml",
    )
    assert setting(shown, "require-token") == (True, f"file {home}/config.toml")


def test_without_a_file_every_value_is_a_default_and_the_text_says_where_it_looked(
    home: Path,
) -> None:
    result = run("config", "show", "--home", home)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"config file: none (no {home / 'config.toml'})"
    assert show(home)["config_file"] is None


def test_the_token_is_never_shown(home: Path, config: Path) -> None:
    write(config, 'token = "file-secret-123"\n')
    for env in ({}, {"TRIO_WS_TOKEN": "env-secret-456"}):
        for flag in (False, True):
            args = ("--json",) if flag else ()
            result = run("config", "show", *args, "--home", home, "--config", config, env=env)
            assert result.exit_code == 0, result.output
            assert "secret-123" not in result.stdout and "secret-456" not in result.stdout
    assert setting(show(home, "--config", config), "token") == ("(redacted)", f"file {config}")


def test_notify_targets_are_shown_by_their_labels_never_their_credentials(
    home: Path, config: Path
) -> None:
    """A webhook URL's path is its token (Slack, Discord) and a command's arguments may
    hold one: `config show` names them as the log does."""
    write(
        config,
        'notify = ["https://hooks.slack.com/services/T0/B0/hook-secret-1"]\n'
        'notify-command = ["notify-send --key arg-secret-2"]\n'
        'notify-secret = "hmac-secret-3"\n',
    )
    for args in ((), ("--json",)):
        result = run("config", "show", *args, "--home", home, "--config", config)
        assert result.exit_code == 0, result.output
        assert not any(f"secret-{n}" in result.stdout for n in (1, 2, 3))
    shown = show(home, "--config", config)
    [hook] = setting(shown, "notify")[0]
    assert hook.startswith("slack webhook https://hooks.slack.com/")
    [command] = setting(shown, "notify-command")[0]
    assert command.startswith("command notify-send")
    assert setting(shown, "notify-secret")[0] == "(redacted)"


def test_durations_are_read_as_the_command_line_reads_them(home: Path, config: Path) -> None:
    write(config, 'alert-silent = "90s"\nalert-stalled = 3600\n')
    shown = show(home, "--config", config)
    assert setting(shown, "alert-silent")[0] == 90.0
    assert setting(shown, "alert-stalled")[0] == 3600.0


def test_a_relative_path_in_the_file_is_relative_to_the_file(home: Path, config: Path) -> None:
    write(config, 'registry = "data/registry.db"\n')
    value, _ = setting(show(home, "--config", config), "registry")
    assert value == (config.parent / "data" / "registry.db").as_posix()


# -- per-project settings ------------------------------------------------------------


def test_project_tables_and_the_registry_are_shown_the_registry_winning(
    home: Path, config: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "todo"
    directory.mkdir()
    registry = Registry(home / "registry.db")
    registry.add("todo", directory)
    registry.set_setting("todo", "alert-stalled", "5m")
    registry.set_setting("todo", "keep-runs", "3")
    write(
        config,
        '[projects.todo]\nalert-silent = "1m"\nalert-stalled = "1h"\nkeep-runs = 10\n'
        "archive-bytes = 1048576\n\n"
        '[projects.other]\nalerts = "off"\nkeep-runs = 0\n',
    )
    shown = show(home, "--config", config)
    assert shown["projects"] == {
        "other": [
            {"key": "alerts", "value": "off", "source": f"file {config}"},
            {"key": "keep-runs", "value": "0", "source": f"file {config}"},
        ],
        "todo": [
            {"key": "alert-silent", "value": "1m", "source": f"file {config}"},
            {"key": "alert-stalled", "value": "5m", "source": f"registry {registry.path}"},
            {"key": "archive-bytes", "value": "1048576", "source": f"file {config}"},
            {"key": "keep-runs", "value": "3", "source": f"registry {registry.path}"},
        ],
    }
    table = run("config", "show", "--home", home, "--config", config).stdout
    assert f"todo     keep-runs      3        registry {registry.path}" in table


# -- refusals: file, line, key; exit 2 before anything starts -----------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# hello\n\nprot = 1\n", "line 3: prot: unknown key"),
        (
            'alert_silent = "1m"\n',
            "line 1: alert_silent: unknown key; did you mean 'alert-silent'?",
        ),
        ('port = 1\nport2 = "x"\n', "line 2: port2: unknown key"),
        ('\nport = "8000"\n', "line 2: port: must be an integer, not a string"),
        ("history = 0\n", "line 1: history: 0 is not in the range 1<=x<=1000000"),
        ('require-token = "yes"\n', "line 1: require-token: must be a boolean"),
        ('allow-origin = "http://a"\n', "line 1: allow-origin: must be a list of strings"),
        ('sync = "sometimes"\n', "line 1: sync: 'sometimes' is not one of 'normal', 'full'"),
        ('alert-silent = "10x"\n', "line 1: alert-silent: '10x' is not a duration"),
        ('broker = "http://x"\n', "line 1: broker: 'http://x' is not a Redis URL"),
        ('config = "other.toml"\n', "line 1: config: cannot be set in a config file"),
        (
            'port = 1\n\n[projects.todo]\nalerts = "on"\nalert-silnt = "1m"\n',
            "line 5: projects.todo.alert-silnt: unknown project setting",
        ),
        (
            '[projects]\ntodo = { alerts = "maybe" }\n',
            "line 2: projects.todo.alerts: 'maybe' is not on or off",
        ),
        ('[projects."bad name"]\nalerts = "on"\n', "line 1: projects.bad name: not a valid"),
        ("projects = 3\n", "line 1: projects: must be a table"),
        (
            "[projects.todo]\nkeep-runs = -1\n",
            "line 2: projects.todo.keep-runs: -1 is below 0",
        ),
        (
            "[projects.todo]\narchive-bytes = 1.5\n",
            "line 2: projects.todo.archive-bytes: 1.5 is not a whole number",
        ),
    ],
)
def test_a_bad_key_or_value_names_the_file_the_line_and_the_key(
    home: Path, config: Path, text: str, expected: str
) -> None:
    write(config, text)
    for command in (("serve",), ("config", "show")):
        line = refused(run(*command, "--home", home, "--config", config))
        assert f"config file {config}, {expected}" in line, line
    assert not (home / "registry.db").exists()  # nothing started


def test_toml_that_does_not_parse_is_refused_with_tomllibs_position(
    home: Path, config: Path
) -> None:
    write(config, 'port = 1\nhost = "x\n')
    line = refused(run("serve", "--home", home, "--config", config))
    assert f"config file {config}: not valid TOML" in line and "line 2" in line


def test_a_named_file_that_does_not_exist_is_refused(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = refused(run("serve", "--home", home, "--config", missing))
    assert line.endswith(f"config file {missing} does not exist")
    line = refused(run("serve", "--home", home, env={"TRIO_WS_CONFIG": str(missing)}))
    assert line.endswith(f"config file {missing} does not exist")


def test_the_homes_own_file_cannot_move_the_home(home: Path, tmp_path: Path) -> None:
    write(home / "config.toml", f'home = "{tmp_path}"\n')
    line = refused(run("serve", "--home", home))
    assert "line 1: home: cannot be set in the home's own config.toml" in line


def test_help_is_shown_even_when_the_file_is_bad(home: Path) -> None:
    write(home / "config.toml", "nonsense = 1\n")
    result = run("serve", "--home", home, "--help")
    assert result.exit_code == 0 and "--config FILE" in result.stdout


# -- key_line: tomllib gives no positions ------------------------------------------


KEYED_TEXT = (
    "# a comment: port = 3\n"  # 1
    "port = 1\n"  # 2
    'host = """\n'  # 3
    "history = 5\n"  # 4: inside a multi-line string
    '"""\n'  # 5
    'projects.a.alerts = "on"\n'  # 6
    "\n"  # 7
    '[ projects . "b" ]\n'  # 8
    'alert-silent = "1m"\n'  # 9
    'projects.c = { alerts = "off" }\n'  # 10: in [projects.b], so projects.b.projects.c
    "[projects]\n"  # 11
    'd = { alerts = "off" }\n'  # 12
    "[other]\n"  # 13
    "history = 1\n"  # 14
)


@pytest.mark.parametrize(
    ("where", "line"),
    [
        (("port",), 2),
        (("projects", "a", "alerts"), 6),
        (("projects", "b"), 8),
        (("projects", "b", "alert-silent"), 9),
        (("projects", "b", "projects", "c", "alerts"), 10),
        (("projects", "c", "alerts"), None),
        (("projects", "d", "alerts"), 12),
        (("other", "history"), 14),
        (("history",), None),  # only inside a string and inside [other]
        (("missing",), None),
    ],
)
def test_key_line_finds_keys_in_tables_dotted_keys_inline_tables_and_not_in_strings(
    where: tuple[str, ...], line: int | None
) -> None:
    assert key_line(KEYED_TEXT, where) == line


# -- a real `trio-ws serve --config` ------------------------------------------------


async def test_serve_listens_on_the_files_port_and_logs_as_the_file_says(
    home: Path, config: Path
) -> None:
    port = free_port()
    write(config, f'port = {port}\nhistory = 3\nlog-format = "json"\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRIO_WS_")}
    process = await trio.lowlevel.open_process(
        [TRIO_WS, "serve", "--home", str(home), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            assert process.stdout is not None and process.stderr is not None
            printed = b""
            while b"\n" not in printed:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "serve exited before printing its URL"
                printed += chunk
            assert f"serving http://127.0.0.1:{port}/" in printed.decode()
            status, _, _ = await http_request(port, "GET", "/healthz?token=abc")
            assert status == 200
            process.terminate()
            assert await process.wait() == 0
            logged = b""
            while chunk := await process.stderr.receive_some(65536):
                logged += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    records = [json.loads(line) for line in logged.decode().splitlines() if line.startswith("{")]
    (access,) = [each for each in records if each["logger"] == "trio_ws.net.access"]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/healthz", 200)
    assert "abc" not in logged.decode()


def test_project_settings_of_the_file_reach_the_servers_config(
    home: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` builds its ServerConfig with the file's project tables."""
    import trio_ws.faces.cli as cli

    write(config, '[projects.todo]\nalert-silent = "1m"\n')
    seen: list[Any] = []
    monkeypatch.setattr(cli, "_serve_on", lambda config, announce: seen.append(config))
    result = run("serve", "--home", home, "--config", config, "--port", "0")
    assert result.exit_code == 0, result.output
    (server_config,) = seen
    assert server_config.project_settings == {"todo": ProjectSettings(alert_silent=60.0)}


def test_the_readmes_example_file_is_a_valid_config_showing_every_key(
    home: Path, config: Path
) -> None:
    """Every key of `serve` is in the example (set, or commented out), the project
    tables show retention, and it is valid as written and with its TLS keys set."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n# ~/.trio-ws/config.toml", 1)[1].split("```", 1)[0]
    example = "# ~/.trio-ws/config.toml" + block
    written = {
        line.lstrip("# ").split("=", 1)[0].strip()
        for line in example.splitlines()
        if "=" in line and not line.startswith("# --")
    }
    assert set(option_keys(serve)) <= written
    write(config, example)
    shown = show(home, "--config", config)
    assert setting(shown, "alert-silent") == (600.0, f"file {config}")
    assert setting(shown, "keep-runs") == (200, f"file {config}")
    assert [row["key"] for row in shown["projects"]["todo-app"]] == [
        "alerts",
        "alert-silent",
        "alert-stalled",
        "archive-bytes",
        "keep-runs",
    ]
    assert shown["projects"]["big-refactor"] == [
        {"key": "keep-runs", "value": "1000", "source": f"file {config}"}
    ]
    files = make_tls_files(config.parent / "tls")
    files.certfile.rename(config.parent / "tls" / "fullchain.pem")
    files.keyfile.rename(config.parent / "tls" / "privkey.pem")
    write(config, example.replace("# certfile", "certfile").replace("# keyfile", "keyfile"))
    shown = show(home, "--config", config)
    assert setting(shown, "certfile") == (
        (config.parent / "tls" / "fullchain.pem").as_posix(),
        f"file {config}",
    )
