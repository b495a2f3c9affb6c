"""The overview's client state, pure: the first list, updates, removals, the order."""

from __future__ import annotations

from typing import Any

from trio_ws.clients.overview_view import OverviewView
from trio_ws.core.project_summary import entry, summarise


def project(name: str, *events: dict[str, Any]) -> dict[str, Any]:
    return entry(name, summarise(events), path=f"/p/{name}", exists=True, loaded=True)


RUNNING = {"type": "agent_status", "status": "running"}
CRASHED = {"type": "agent_status", "status": "crashed"}


def test_the_first_list_then_updates_and_removals() -> None:
    view = OverviewView()
    assert view.connection == "connecting"
    view.apply(
        {"type": "overview", "projects": [project("a"), project("b")], "registry_error": None}
    )
    assert view.connection == "live" and view.lists == 1
    assert [p["name"] for p in view.ordered()] == ["a", "b"]
    view.apply({"type": "overview_update", "projects": [project("b", CRASHED)], "removed": ["a"]})
    assert [p["name"] for p in view.ordered()] == ["b"]
    assert view.projects["b"]["agent_status"] == "crashed"
    assert view.needing == 1


def test_the_order_puts_what_needs_the_user_first() -> None:
    view = OverviewView()
    listed = [project("a"), project("b", RUNNING), project("c", CRASHED)]
    view.apply({"type": "overview", "projects": listed, "registry_error": "locked"})
    assert [p["name"] for p in view.ordered()] == ["c", "b", "a"]
    assert view.registry_error == "locked"


def test_a_new_list_replaces_the_old_and_garbage_is_ignored() -> None:
    view = OverviewView()
    view.apply({"type": "overview", "projects": [project("a")], "registry_error": None})
    view.apply({"type": "overview", "projects": [project("b"), {"no": "name"}, 3]})
    assert list(view.projects) == ["b"]
    view.apply({"type": "overview_update", "projects": "nonsense", "removed": None})
    view.apply({"type": "something_new"})
    assert list(view.projects) == ["b"] and view.lists == 2
