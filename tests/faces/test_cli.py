"""The ``trio-ws projects`` commands, through click's runner and the real script."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result
from redis_server import RedisServer

import trio_ws.data.registry
from trio_ws import __version__
from trio_ws.faces.cli import main
from trio_ws.journal.interface import Batch, JournalError
from trio_ws.journal.sqlite import SqliteBackend, journal_path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def alpha(tmp_path: Path) -> Path:
    directory = tmp_path / "alpha"
    directory.mkdir()
    return directory


def run(*args: str | Path, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env=env)


def projects(command: str, *args: str | Path, home: Path) -> Result:
    return run("projects", command, *args, "--home", home)


def assert_refused(result: Result, exit_code: int, fragment: str) -> None:
    """One prefixed line on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-ws: error: ")
    assert fragment in lines[0]


# -- commands that succeed --------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"trio-ws, version {__version__}\n"


def test_add_prints_one_confirmation_line(home: Path, alpha: Path) -> None:
    result = projects("add", "alpha", alpha, home=home)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"added alpha -> {alpha.resolve().as_posix()}\n"
    assert result.stderr == ""
    assert (home / "registry.db").is_file()


def test_list_json_lists_registered_projects(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    result = projects("list", "--json", home=home)
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.stdout)
    assert entry["name"] == "alpha"
    assert entry["path"] == alpha.resolve().as_posix()
    assert entry["exists"] is True
    assert entry["default_concurrency"] == 3
    assert entry["created_at"].endswith("Z")


def test_list_json_of_empty_registry_is_an_empty_list(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    projects("remove", "alpha", home=home)
    result = projects("list", "--json", home=home)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_list_table_shows_name_path_and_existence(home: Path, alpha: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    projects("add", "alpha", alpha, home=home)
    projects("add", "gone", gone, home=home)
    gone.rmdir()
    result = projects("list", home=home)
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["name", "path", "exists", "created"]
    assert first.split()[:3] == ["alpha", alpha.resolve().as_posix(), "yes"]
    assert second.split()[:3] == ["gone", gone.resolve().as_posix(), "no"]
    assert first.rstrip().endswith("UTC")


def test_list_table_keeps_long_paths_on_one_line(home: Path, tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["a-rather-long-directory-name"] * 6))
    deep.mkdir(parents=True)
    projects("add", "deep", deep, home=home)
    lines = projects("list", home=home).stdout.splitlines()
    assert len(lines) == 2
    assert deep.resolve().as_posix() in lines[1]


def test_list_table_of_empty_registry_says_so(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    projects("remove", "alpha", home=home)
    result = projects("list", home=home)
    assert result.exit_code == 0
    assert result.stdout == "no projects registered\n"


def test_remove_confirms_and_unregisters(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    result = projects("remove", "alpha", home=home)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"removed alpha (was {alpha.resolve().as_posix()})\n"
    assert json.loads(projects("list", "--json", home=home).stdout) == []
    assert alpha.is_dir()


def write_journal(home: Path, project: str) -> Path:
    """A real journal of ``project`` with one committed event, closed."""

    async def write() -> None:
        journal = SqliteBackend(home).journal(project)
        await journal.open()
        await journal.append(Batch([(1, '{"type":"log","seq":1}')]))
        await journal.close()

    trio.run(write)
    return journal_path(home, project)


def test_remove_deletes_the_projects_journal(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    path = write_journal(home, "alpha")
    result = projects("remove", "alpha", home=home)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == f"removed its journal {path}"
    assert sorted(path.parent.iterdir()) == []


def test_remove_keep_journal_keeps_it(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    path = write_journal(home, "alpha")
    result = projects("remove", "alpha", "--keep-journal", home=home)
    assert result.exit_code == 0, result.output
    assert path.is_file()


def test_home_comes_from_the_environment(home: Path, alpha: Path) -> None:
    env: dict[str, str | None] = {"TRIO_WS_HOME": str(home)}
    assert run("projects", "add", "alpha", alpha, env=env).exit_code == 0
    assert (home / "registry.db").is_file()
    listed = run("projects", "list", "--json", env=env)
    assert [entry["name"] for entry in json.loads(listed.stdout)] == ["alpha"]


def test_registry_option_uses_another_file(home: Path, alpha: Path, tmp_path: Path) -> None:
    other = tmp_path / "autoforge" / "registry.db"
    result = run("projects", "add", "alpha", alpha, "--home", home, "--registry", other)
    assert result.exit_code == 0, result.output
    assert other.is_file()
    assert not (home / "registry.db").exists()


# -- refusals ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad name", "x" * 51, "a\nb", "é"])
def test_bad_project_name_is_a_usage_error(home: Path, alpha: Path, name: str) -> None:
    assert_refused(projects("add", name, alpha, home=home), 2, "invalid project name")


def test_missing_argument_is_a_one_line_usage_error(home: Path) -> None:
    result = run("projects", "add", "--home", home)
    assert_refused(result, 2, "Missing argument 'NAME'")


def test_unknown_option_is_a_one_line_usage_error(home: Path) -> None:
    assert_refused(projects("list", "--bogus", home=home), 2, "No such option '--bogus'")


def test_unknown_command_is_a_one_line_usage_error() -> None:
    assert_refused(run("projects", "frobnicate"), 2, "No such command 'frobnicate'")


def test_duplicate_name_is_refused(home: Path, alpha: Path, tmp_path: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    other = tmp_path / "other"
    other.mkdir()
    assert_refused(projects("add", "alpha", other, home=home), 1, "already registered")


def test_duplicate_path_is_refused(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    result = projects("add", "beta", alpha / ".." / "alpha", home=home)
    assert_refused(result, 1, "already registered as project 'alpha'")


def test_missing_directory_is_refused(home: Path, tmp_path: Path) -> None:
    result = projects("add", "alpha", tmp_path / "nowhere", home=home)
    assert_refused(result, 1, "does not exist")


def test_file_instead_of_directory_is_refused(home: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_refused(projects("add", "alpha", a_file, home=home), 1, "is not a directory")


@pytest.mark.parametrize("command", [("list",), ("list", "--json"), ("remove", "alpha")])
def test_missing_registry_is_an_error(home: Path, command: tuple[str, ...]) -> None:
    result = projects(*command, home=home)
    assert_refused(result, 1, f"no registry at {home / 'registry.db'}")


def test_remove_unknown_project_is_refused(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    assert_refused(projects("remove", "beta", home=home), 1, "no project 'beta'")


def test_corrupt_registry_is_refused(home: Path) -> None:
    home.mkdir()
    (home / "registry.db").write_bytes(b"\x00garbage" * 512)
    assert_refused(projects("list", home=home), 1, "is corrupt")


def test_sqlite_file_without_projects_table_is_refused(home: Path) -> None:
    home.mkdir()
    with closing(sqlite3.connect(home / "registry.db")) as conn:
        conn.execute("CREATE TABLE other (id INTEGER)")
    assert_refused(projects("list", home=home), 1, "is not a registry")


@pytest.fixture
def locked_registry(home: Path, alpha: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    projects("add", "alpha", alpha, home=home)
    monkeypatch.setattr(trio_ws.data.registry, "BUSY_TIMEOUT_S", 0.05)
    with closing(sqlite3.connect(home / "registry.db", isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("ROLLBACK")


def test_locked_registry_is_refused(home: Path, locked_registry: None) -> None:
    assert_refused(projects("list", home=home), 1, "is locked")


# -- the installed script ---------------------------------------------------


def test_installed_script_adds_lists_and_removes(tmp_path: Path, alpha: Path) -> None:
    script = Path(sys.executable).parent / "trio-ws"
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"

    def call(*args: str | Path) -> subprocess.CompletedProcess[str]:
        argv = [str(script), "projects", *map(str, args), "--home", str(tmp_path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    added = call("add", "alpha", alpha)
    assert (added.returncode, added.stderr) == (0, "")
    listed = call("list", "--json")
    assert [entry["name"] for entry in json.loads(listed.stdout)] == ["alpha"]
    removed = call("remove", "alpha")
    assert removed.returncode == 0
    again = call("remove", "alpha")
    assert again.returncode == 1
    assert again.stderr.startswith("trio-ws: error: no project 'alpha'")
    assert again.stderr.count("\n") == 1


# -- packaging: the commands live in trio_ws.faces.cli ---------------------------------

REPO = Path(__file__).resolve().parent.parent.parent


def test_wheel_has_no_top_level_cli_module(tmp_path: Path) -> None:
    """Installing trio-ws adds the ``trio_ws`` package only; a top-level ``cli``
    module would clash with any other project's."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "trio_ws", source / "trio_ws", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("trio_ws-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert {name.split("/")[0] for name in names} == {
        "trio_ws",
        f"{wheel.name.split('-py3')[0]}.dist-info",
    }
    assert "trio_ws/faces/cli.py" in names
    assert "trio-ws = trio_ws.faces.cli:main" in scripts


@pytest.mark.parametrize(
    "launcher", [[str(REPO / "cli.py")], ["-m", "trio_ws"]], ids=["cli.py", "-m trio_ws"]
)
def test_checkout_launchers_run_the_command(launcher: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, *launcher, "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path if launcher[0] != "-m" else REPO,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"trio-ws, version {__version__}\n",
        "",
    )


# -- projects remove goes through the journal, never under a running server -----------

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")


@contextmanager
def serving_with_a_watcher(home: Path, *extra: str) -> Iterator[None]:
    """A real `trio-ws serve` with a subscriber of ``alpha`` connected, so the server
    has the project (and its journal) open for the block."""
    from websockets.sync.client import connect

    process = subprocess.Popen(
        [TRIO_WS, "serve", "--home", str(home), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        with connect(f"ws://127.0.0.1:{port}/ws/projects/alpha", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_remove_is_refused_while_a_server_has_the_project_open(home: Path, alpha: Path) -> None:
    projects("add", "alpha", alpha, home=home)
    path = journal_path(home, "alpha")
    with serving_with_a_watcher(home):
        result = projects("remove", "alpha", home=home)
        assert_refused(result, 1, "is open in another trio-ws process")
        assert path.is_file()  # nothing deleted under the server
    assert [p["name"] for p in json.loads(projects("list", "--json", home=home).stdout)] == [
        "alpha"
    ]
    result = projects("remove", "alpha", home=home)  # the server is gone: now it may
    assert result.exit_code == 0, result.output
    assert sorted(path.parent.iterdir()) == []  # database, -wal, -shm and lock


def test_a_journal_opens_once(home: Path) -> None:
    async def open_twice() -> None:
        backend = SqliteBackend(home)
        first = backend.journal("alpha")
        await first.open()
        try:
            with pytest.raises(JournalError, match="open in another trio-ws process"):
                await backend.journal("alpha").open()
        finally:
            await first.close()
        second = backend.journal("alpha")  # closed: the lock went with it
        await second.open()
        await second.close()

    trio.run(open_twice)


def test_remove_with_a_broker_deletes_the_keys_once_no_node_holds_them(
    home: Path, alpha: Path, redis_server: RedisServer
) -> None:
    projects("add", "alpha", alpha, home=home)

    def redis(*command: str) -> str:
        args = ["redis-cli", "-p", str(redis_server.port), *command]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    redis("FLUSHALL")
    with serving_with_a_watcher(home, "--broker", redis_server.url):
        result = projects("remove", "alpha", "--broker", redis_server.url, home=home)
        assert_refused(result, 1, "is open on a running trio-ws server")
        assert redis("EXISTS", "tws:{alpha}:meta") == "1"
    # The server stopped cleanly (SIGTERM, waited for): its close dropped the hold.
    result = projects("remove", "alpha", "--broker", redis_server.url, home=home)
    assert result.exit_code == 0, result.output
    assert "removed its journal in redis://" in result.stdout
    assert redis("EXISTS", "tws:{alpha}:meta", "tws:{alpha}:events") == "0"


# -- the token and the dashboard link ----------------------------------------------


def test_token_prints_the_homes_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-of-this-home\n")
    result = run("token", "--home", tmp_path)
    assert (result.exit_code, result.stdout) == (0, "s3cret-of-this-home\n")


def test_token_without_one_says_where_it_comes_from(tmp_path: Path) -> None:
    assert_refused(run("token", "--home", tmp_path), 1, "makes one at its first start")


def test_open_opens_the_projects_dashboard_with_the_token(tmp_path: Path) -> None:
    """The browser is $BROWSER (what Python's webbrowser runs): here a script that
    writes down what it was asked to open."""
    (tmp_path / "token").write_text("s3cret/with+signs\n")
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(opened)!r}, 'w').write(sys.argv[1])\n"
    )
    browser.chmod(0o755)
    env = {"BROWSER": f"{browser} %s", "DISPLAY": None}
    result = run("open", "demo", "--server", "http://127.0.0.1:9999", "--home", tmp_path, env=env)
    link = "http://127.0.0.1:9999/projects/demo?token=s3cret%2Fwith%2Bsigns"
    assert (result.exit_code, result.stdout) == (0, link + "\n"), result.output
    assert opened.read_text() == link


@pytest.mark.parametrize(
    "command", [(), ("projects",), *((name,) for name in main.commands), ("projects", "remove")]
)
def test_every_command_takes_minus_h(command: tuple[str, ...]) -> None:
    result = run(*command, "-h")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")


@pytest.mark.parametrize("group", [(), ("projects",)])
def test_no_summary_in_a_command_list_is_cut_off(group: tuple[str, ...]) -> None:
    listing = run(*group, "--help", env={"COLUMNS": "80"}).stdout.split("Commands:\n", 1)[1]
    assert "..." not in listing, listing


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o nosort -F"), ("zsh", "compdef"), ("fish", "complete --no-files")],
)
def test_shell_completion_scripts_are_printed(shell: str, marker: str) -> None:
    """The lines the README gives: click prints a completion script for each shell."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("trio-ws"))],
        env={**os.environ, "_TRIO_WS_COMPLETE": f"{shell}_source"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout and "_TRIO_WS_COMPLETE" in result.stdout


def test_completion_offers_the_commands() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("trio-ws"))],
        env={
            **os.environ,
            "_TRIO_WS_COMPLETE": "bash_complete",
            "COMP_WORDS": "trio-ws do",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "plain,doctor" in result.stdout.splitlines()


# -- trio-ws projects set / unset / show ----------------------------------------------


def test_a_projects_settings_are_set_shown_and_unset(home: Path, alpha: Path) -> None:
    assert projects("add", "alpha", alpha, home=home).exit_code == 0
    result = projects("show", "alpha", home=home)
    assert result.stdout == "alpha: no settings of its own (serve's options decide)\n"
    result = projects("set", "alpha", "alert-silent", "90", home=home)
    assert (result.exit_code, result.stdout) == (0, "alpha: alert-silent = 90s\n")
    assert projects("set", "alpha", "alerts", "off", home=home).exit_code == 0
    result = projects("show", "alpha", "--json", home=home)
    assert json.loads(result.stdout) == {"alerts": "off", "alert-silent": "90s"}
    result = projects("unset", "alpha", "alerts", home=home)
    assert result.stdout == "alpha: alerts unset\n"
    result = projects("unset", "alpha", "alerts", home=home)
    assert result.stdout == "alpha: alerts was not set\n"
    assert projects("show", "alpha", home=home).stdout == "alpha: alert-silent = 90s\n"


def test_a_bad_setting_is_a_usage_error_naming_the_key(home: Path, alpha: Path) -> None:
    assert projects("add", "alpha", alpha, home=home).exit_code == 0
    assert_refused(projects("set", "alpha", "alert_silent", "1m", home=home), 2, "alert_silent:")
    assert_refused(
        projects("set", "alpha", "alert-silent", "soon", home=home), 2, "is not a duration"
    )
    assert_refused(projects("set", "beta", "alerts", "on", home=home), 1, "no project 'beta'")
    assert_refused(projects("show", "beta", home=home), 1, "no project 'beta'")


def test_the_set_help_lists_every_project_key() -> None:
    from trio_ws.core.project_settings import PROJECT_KEYS

    result = run("projects", "set", "--help")
    assert all(key in result.stdout for key in PROJECT_KEYS)


def test_a_projects_retention_is_set_and_shown(home: Path, alpha: Path) -> None:
    assert projects("add", "alpha", alpha, home=home).exit_code == 0
    result = projects("set", "alpha", "keep-runs", "5", home=home)
    assert (result.exit_code, result.stdout) == (0, "alpha: keep-runs = 5\n")
    assert projects("set", "alpha", "archive-bytes", "1048576", home=home).exit_code == 0
    result = projects("show", "alpha", home=home)
    assert result.stdout == "alpha: archive-bytes = 1048576\nalpha: keep-runs = 5\n"
    assert json.loads(projects("show", "alpha", "--json", home=home).stdout) == {
        "archive-bytes": "1048576",
        "keep-runs": "5",
    }
    assert_refused(projects("set", "alpha", "keep-runs", "2.5", home=home), 2, "keep-runs:")
    assert_refused(
        projects("set", "alpha", "archive-bytes", "1GiB", home=home), 2, "not a whole number"
    )
