"""The project registry against real SQLite files (DATA.md section 2)."""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trio_ws.core.project_settings import ProjectSettings, SettingError
from trio_ws.data.registry import (
    CREATE_TABLE,
    InvalidProjectName,
    NotADirectory,
    PathAlreadyRegistered,
    Project,
    ProjectExists,
    ProjectNotFound,
    Registry,
    RegistryCorrupt,
    RegistryLocked,
    RegistryMissing,
    registry_path,
    resolve_home,
)

FIXED_NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "registry.db"


@pytest.fixture
def registry(db: Path) -> Registry:
    return Registry(db, clock=FIXED_NOW.timestamp)


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "projects" / "alpha"
    directory.mkdir(parents=True)
    return directory


def at(path: Path) -> str:
    """``path`` as a literal inside a ``match=`` pattern."""
    return re.escape(str(path))


def make_dir(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / "projects" / name
    directory.mkdir(parents=True)
    return directory


def raw_rows(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT * FROM projects ORDER BY name").fetchall()


def autoforge_registry(db: Path, rows: list[tuple[str, str, object, int]]) -> None:
    """A registry written the way AutoForge's SQLAlchemy model leaves it."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(CREATE_TABLE)
        conn.executemany("INSERT INTO projects VALUES (?, ?, ?, ?)", rows)
        conn.commit()


@pytest.fixture
def exclusive_lock(db: Path, registry: Registry, project_dir: Path) -> Iterator[None]:
    """Another connection holding ``BEGIN EXCLUSIVE`` on an existing registry."""
    registry.add("alpha", project_dir)
    with closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("ROLLBACK")


# -- the round trip ---------------------------------------------------------


def test_add_get_list_remove_roundtrip(
    registry: Registry, tmp_path: Path, project_dir: Path
) -> None:
    added = registry.add("alpha", project_dir)
    other = registry.add("beta", make_dir(tmp_path, "beta"))
    assert registry.get("alpha") == added
    assert registry.list() == [added, other]
    assert registry.remove("alpha") == added
    assert registry.get("alpha") is None
    assert registry.list() == [other]


def test_add_returns_what_it_stored(registry: Registry, project_dir: Path) -> None:
    added = registry.add("alpha", project_dir)
    assert added == Project("alpha", project_dir.resolve(), FIXED_NOW, 3)


def test_created_at_is_stored_as_autoforge_does(
    registry: Registry, db: Path, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    assert raw_rows(db) == [
        ("alpha", project_dir.resolve().as_posix(), "2026-03-04 05:06:07.890123", 3)
    ]


def test_add_creates_home_directory_and_registry(
    registry: Registry, db: Path, project_dir: Path
) -> None:
    assert not db.parent.exists()
    registry.add("alpha", project_dir)
    assert db.is_file()


def test_add_makes_the_table_in_an_empty_file(db: Path, project_dir: Path) -> None:
    db.parent.mkdir()
    db.touch()
    Registry(db).add("alpha", project_dir)
    assert [row[0] for row in raw_rows(db)] == ["alpha"]


def test_list_is_sorted_by_name(registry: Registry, tmp_path: Path) -> None:
    for name in ("delta", "Bravo", "alpha", "charlie"):
        registry.add(name, make_dir(tmp_path, name))
    assert [p.name for p in registry.list()] == ["Bravo", "alpha", "charlie", "delta"]


def test_empty_registry_lists_nothing(registry: Registry, project_dir: Path) -> None:
    registry.add("alpha", project_dir)
    registry.remove("alpha")
    assert registry.list() == []


def test_names_are_case_sensitive(registry: Registry, tmp_path: Path) -> None:
    registry.add("Foo", make_dir(tmp_path, "upper"))
    registry.add("foo", make_dir(tmp_path, "lower"))
    assert registry.get("FOO") is None
    assert [p.name for p in registry.list()] == ["Foo", "foo"]


def test_concurrent_adds_from_threads_all_land(registry: Registry, tmp_path: Path) -> None:
    names = [f"p{index}" for index in range(8)]
    directories = [make_dir(tmp_path, name) for name in names]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        added = list(pool.map(registry.add, names, directories))
    assert [p.name for p in added] == names
    assert [p.name for p in registry.list()] == names


# -- names ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "x" * 50, "A-b_9", "-", "_", "123"])
def test_valid_names_are_accepted(registry: Registry, project_dir: Path, name: str) -> None:
    assert registry.add(name, project_dir).name == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 51, "a b", "a/b", "a.b", "../up", "a\n", "\na", "é", "名前", "a\x00"],
)
def test_invalid_names_are_refused_before_touching_disk(
    registry: Registry, db: Path, project_dir: Path, name: str
) -> None:
    with pytest.raises(InvalidProjectName, match="invalid project name"):
        registry.add(name, project_dir)
    assert not db.exists()


def test_get_with_invalid_name_is_refused(registry: Registry, project_dir: Path) -> None:
    registry.add("alpha", project_dir)
    with pytest.raises(InvalidProjectName):
        registry.get("alpha\n")


def test_remove_with_invalid_name_is_refused(registry: Registry, project_dir: Path) -> None:
    registry.add("alpha", project_dir)
    with pytest.raises(InvalidProjectName):
        registry.remove("al pha")


# -- paths ------------------------------------------------------------------


def test_relative_path_is_stored_absolute_and_resolved(
    registry: Registry, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dir(tmp_path, "alpha")
    monkeypatch.chdir(tmp_path)
    added = registry.add("alpha", "projects/./alpha")
    expected = (tmp_path / "projects" / "alpha").resolve()
    assert added.path == expected
    assert raw_rows(db)[0][1] == expected.as_posix()


def test_symlink_is_resolved(registry: Registry, tmp_path: Path, project_dir: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(project_dir, target_is_directory=True)
    assert registry.add("alpha", link).path == project_dir.resolve()


def test_missing_directory_is_refused(registry: Registry, tmp_path: Path, db: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(NotADirectory, match=f"{at(missing)}.*does not exist"):
        registry.add("alpha", missing)
    assert not db.exists()


def test_file_instead_of_directory_is_refused(registry: Registry, tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    with pytest.raises(NotADirectory, match=f"{at(a_file)}.*not a directory"):
        registry.add("alpha", a_file)


# -- duplicates -------------------------------------------------------------


def test_duplicate_name_is_refused(
    registry: Registry, db: Path, tmp_path: Path, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    with pytest.raises(ProjectExists, match=f"'alpha' is already registered in {at(db)}"):
        registry.add("alpha", make_dir(tmp_path, "other"))


def test_same_directory_spelt_differently_is_refused(
    registry: Registry, db: Path, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    spelling = project_dir / ".." / project_dir.name
    with pytest.raises(PathAlreadyRegistered, match=f"as project 'alpha' in {at(db)}"):
        registry.add("beta", spelling)
    assert [p.name for p in registry.list()] == ["alpha"]


def test_unresolved_autoforge_path_still_counts_as_registered(db: Path, project_dir: Path) -> None:
    unresolved = f"{project_dir}/../{project_dir.name}"
    db.parent.mkdir()
    autoforge_registry(db, [("alpha", unresolved, "2025-01-15 10:30:00", 3)])
    with pytest.raises(PathAlreadyRegistered):
        Registry(db).add("beta", project_dir)


# -- unusable registries ----------------------------------------------------


@pytest.mark.parametrize("operation", ["get", "list", "remove"])
def test_reading_a_missing_registry_says_where_and_how_to_fix(
    registry: Registry, db: Path, operation: str
) -> None:
    with pytest.raises(RegistryMissing, match=f"no registry at {at(db)}.*trio-ws projects add"):
        if operation == "list":
            registry.list()
        else:
            getattr(registry, operation)("alpha")
    assert not db.exists()


def test_random_bytes_are_a_corrupt_registry(db: Path, project_dir: Path) -> None:
    db.parent.mkdir()
    db.write_bytes(random.Random(7).randbytes(4096))
    with pytest.raises(RegistryCorrupt, match=at(db)):
        Registry(db).list()
    with pytest.raises(RegistryCorrupt, match=at(db)):
        Registry(db).add("alpha", project_dir)


def test_sqlite_file_without_projects_table_is_not_a_registry(db: Path, project_dir: Path) -> None:
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE features (id INTEGER PRIMARY KEY)")
    with pytest.raises(RegistryCorrupt, match=f"{at(db)} is not a registry: it has no projects"):
        Registry(db).list()
    with pytest.raises(RegistryCorrupt, match="no projects table"):
        Registry(db).add("alpha", project_dir)


def test_projects_table_of_another_shape_is_not_a_registry(db: Path) -> None:
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE projects (name TEXT PRIMARY KEY, dir TEXT)")
    with pytest.raises(RegistryCorrupt, match="lacks created_at, default_concurrency, path"):
        Registry(db).list()


def test_directory_in_place_of_the_registry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryCorrupt, match=f"{at(tmp_path)} is a directory"):
        Registry(tmp_path).list()


def test_locked_registry_fails_fast_on_read(db: Path, exclusive_lock: None) -> None:
    started = time.monotonic()
    with pytest.raises(RegistryLocked, match=f"registry {at(db)} is locked"):
        Registry(db, timeout=0.05).list()
    assert time.monotonic() - started < 1.5


def test_locked_registry_fails_fast_on_write(
    db: Path, tmp_path: Path, exclusive_lock: None
) -> None:
    started = time.monotonic()
    with pytest.raises(RegistryLocked, match=r"gave up after 0\.05 s"):
        Registry(db, timeout=0.05).add("beta", make_dir(tmp_path, "beta"))
    assert time.monotonic() - started < 1.5


def test_remove_of_unknown_project_names_the_registry(
    registry: Registry, db: Path, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    with pytest.raises(ProjectNotFound, match=f"no project 'beta' in registry {at(db)}"):
        registry.remove("beta")


# -- AutoForge's rows -------------------------------------------------------


def test_reads_an_autoforge_registry_with_naive_datetimes(db: Path, tmp_path: Path) -> None:
    db.parent.mkdir()
    autoforge_registry(
        db,
        [
            ("web", "/srv/web", "2025-01-15 10:30:00.123456", 3),
            ("api", "/srv/api", "2025-02-01 08:00:00", 5),
        ],
    )
    assert Registry(db).list() == [
        Project("api", Path("/srv/api"), datetime(2025, 2, 1, 8, 0, tzinfo=UTC), 5),
        Project("web", Path("/srv/web"), datetime(2025, 1, 15, 10, 30, 0, 123456, UTC), 3),
    ]


def test_datetime_with_offset_is_converted_to_utc(db: Path) -> None:
    db.parent.mkdir()
    autoforge_registry(db, [("web", "/srv/web", "2025-01-15T12:30:00+02:00", 3)])
    project = Registry(db).get("web")
    assert project is not None
    assert project.created_at == datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
    assert project.created_at.utcoffset() is not None


@pytest.mark.parametrize("created_at", ["yesterday", "", 1736937000])
def test_unparseable_created_at_is_corrupt_and_names_the_row(db: Path, created_at: object) -> None:
    db.parent.mkdir()
    autoforge_registry(db, [("web", "/srv/web", created_at, 3)])
    with pytest.raises(RegistryCorrupt, match=f"registry {at(db)}, project 'web': created_at"):
        Registry(db).list()


def test_row_with_invalid_name_is_corrupt(db: Path) -> None:
    db.parent.mkdir()
    autoforge_registry(db, [("no good", "/srv/web", "2025-01-15 10:30:00", 3)])
    with pytest.raises(RegistryCorrupt, match="invalid name 'no good'"):
        Registry(db).list()


def test_writes_into_an_autoforge_registry(db: Path, project_dir: Path) -> None:
    db.parent.mkdir()
    autoforge_registry(db, [("web", "/srv/web", "2025-01-15 10:30:00", 3)])
    Registry(db).add("alpha", project_dir)
    assert [p.name for p in Registry(db).list()] == ["alpha", "web"]


# -- existence and JSON -----------------------------------------------------


def test_exists_turns_false_when_the_directory_goes_away(
    registry: Registry, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    project_dir.rmdir()
    [project] = registry.list()
    assert project.exists() is False
    assert project.to_json()["exists"] is False


def test_to_json_shape(registry: Registry, project_dir: Path) -> None:
    assert registry.add("alpha", project_dir).to_json() == {
        "name": "alpha",
        "path": project_dir.resolve().as_posix(),
        "exists": True,
        "created_at": "2026-03-04T05:06:07.890123Z",
        "default_concurrency": 3,
    }


# -- where the registry is --------------------------------------------------


def test_home_option_wins_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_WS_HOME", str(tmp_path / "from-env"))
    assert resolve_home(tmp_path / "from-option") == tmp_path / "from-option"


def test_environment_gives_home_without_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_WS_HOME", str(tmp_path / "from-env"))
    assert resolve_home(None) == tmp_path / "from-env"


@pytest.mark.parametrize("env_value", [None, ""])
def test_home_defaults_to_dot_trio_ws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_value: str | None
) -> None:
    if env_value is None:
        monkeypatch.delenv("TRIO_WS_HOME", raising=False)
    else:
        monkeypatch.setenv("TRIO_WS_HOME", env_value)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home(None) == tmp_path / ".trio-ws"


def test_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_home("rel") == tmp_path.resolve() / "rel"


def test_registry_path_defaults_into_home(tmp_path: Path) -> None:
    assert registry_path(tmp_path, None) == tmp_path / "registry.db"


def test_registry_option_replaces_the_home_file(tmp_path: Path) -> None:
    other = tmp_path / "autoforge" / "registry.db"
    assert registry_path(tmp_path / "home", other) == other


def test_env_home_is_where_projects_are_registered(
    tmp_path: Path, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_WS_HOME", os.fspath(tmp_path / "env-home"))
    Registry(registry_path(resolve_home(None), None)).add("alpha", project_dir)
    assert [row[0] for row in raw_rows(tmp_path / "env-home" / "registry.db")] == ["alpha"]


# -- per-project settings ------------------------------------------------------------


def test_a_projects_settings_are_kept_beside_autoforges_table_which_stays_as_it_was(
    registry: Registry, db: Path, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    before = raw_rows(db)
    assert registry.settings("alpha") == ProjectSettings()
    assert registry.set_setting("alpha", "alert-silent", "1m") == 60.0
    assert registry.set_setting("alpha", "alerts", "off") is False
    assert registry.set_setting("alpha", "alert-silent", "90s") == 90.0  # replaced
    assert registry.settings("alpha") == ProjectSettings(alerts=False, alert_silent=90.0)
    assert raw_rows(db) == before
    with closing(sqlite3.connect(db)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(projects)")]
    assert columns == ["name", "path", "created_at", "default_concurrency"]
    assert registry.unset_setting("alpha", "alerts") is True
    assert registry.unset_setting("alpha", "alerts") is False
    assert registry.all_settings() == {"alpha": ProjectSettings(alert_silent=90.0)}


def test_settings_of_an_unknown_project_or_key_are_refused(
    registry: Registry, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    with pytest.raises(ProjectNotFound, match="no project 'beta'"):
        registry.set_setting("beta", "alerts", "on")
    with pytest.raises(SettingError, match="unknown project setting"):
        registry.set_setting("alpha", "colour", "red")
    with pytest.raises(SettingError, match="not on or off"):
        registry.set_setting("alpha", "alerts", "maybe")
    with pytest.raises(SettingError, match="unknown project setting"):
        registry.unset_setting("alpha", "colour")
    assert registry.all_settings() == {}


def test_removing_a_project_forgets_its_settings(registry: Registry, project_dir: Path) -> None:
    registry.add("alpha", project_dir)
    registry.set_setting("alpha", "alert-stalled", "1h")
    registry.remove("alpha")
    registry.add("alpha", project_dir)
    assert registry.settings("alpha") == ProjectSettings()


def test_an_autoforge_registry_without_the_settings_table_has_no_settings(
    db: Path, project_dir: Path
) -> None:
    db.parent.mkdir(parents=True)
    autoforge_registry(db, [("alpha", project_dir.as_posix(), "2026-01-02 03:04:05.000000", 3)])
    registry = Registry(db)
    assert registry.settings("alpha") == ProjectSettings()
    assert registry.remove("alpha").name == "alpha"


def test_a_stored_setting_that_does_not_read_back_is_corrupt(
    registry: Registry, db: Path, project_dir: Path
) -> None:
    registry.add("alpha", project_dir)
    registry.set_setting("alpha", "alerts", "on")
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE trio_ws_project_settings SET value = '\"soon\"'")
        conn.commit()
    with pytest.raises(RegistryCorrupt, match=f"registry {at(db)}, project 'alpha': alerts"):
        registry.settings("alpha")
