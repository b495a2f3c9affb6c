"""`Overview`: every project's summary, for the overview's watchers, coalesced and
bounded.

A hub tells the overview only *that* its summary may have changed (`changed`: a
set insertion, once per committed batch, whatever the number of watchers); the
overview's one task (`run`) looks at most every `COALESCE` seconds, summarises
each changed project once (`core.project_summary`, from the hub's committed snapshot),
encodes it once and hands the text to every watcher. A watcher keeps only the
latest text per project (`OverviewWatcher`), so a slow client skips summaries in
between and its backlog is bounded by the number of projects, never by time.

Projects are the registered ones (re-read every `REGISTRY_EVERY` seconds) and any
open here (with a broker, one whose directory is elsewhere). Hubs open lazily as
today: a project no one fed or watched since the server started is not opened for
the overview (200 journals would be); it is listed with ``loaded`` false and no
status. One that was open and closed idle keeps the summary it had when it closed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import trio

from trio_ws.core.project_summary import RunSummary, entry, summarise
from trio_ws.core.protocol import JsonObject, encode
from trio_ws.data.registry import Registry, RegistryError, RegistryMissing
from trio_ws.journal.interface import JournalError
from trio_ws.runtime.streak import FailureStreak
from trio_ws.state.hub import ProjectHub
from trio_ws.state.snapshot import Snapshot

log = logging.getLogger("trio_ws.state.overview")

COALESCE: Final = 0.5
"""Seconds between two looks at the changed projects: at most two summaries per
second per project, however fast its events come."""
REGISTRY_EVERY: Final = 5.0
"""Seconds between reads of the registry (projects added or removed meanwhile)."""


class OverviewWatcher:
    """One overview client's summaries not yet sent: the latest text per project, and
    the projects gone from the list. Bounded by the number of projects."""

    __slots__ = ("pending", "removed", "shown", "wake")

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        self.removed: set[str] = set()
        self.shown: dict[str, str] = {}
        """The text this client was last given per project (the same object every
        watcher holds: no copy), so it is never sent the same summary twice."""
        self.wake = trio.Event()
        """Set when something is pending; replaced by `take`."""

    def given(self, names: list[str], texts: list[str]) -> None:
        """The first list sent these."""
        self.shown.update(zip(names, texts, strict=True))

    def offer(self, name: str, text: str) -> bool:
        """``name``'s newest summary, replacing one not yet sent; True when it did
        (that one is dropped: the client never sees it)."""
        self.removed.discard(name)
        if self.shown.get(name) == text:
            return self.pending.pop(name, None) is not None  # back to what the client has
        replaced = name in self.pending
        self.pending[name] = text
        self.wake.set()
        return replaced

    def gone(self, name: str) -> None:
        self.pending.pop(name, None)
        if self.shown.pop(name, None) is not None:
            self.removed.add(name)
            self.wake.set()

    def take(self) -> tuple[list[str], list[str]]:
        """Everything pending (summary texts, removed names), now no longer pending."""
        pending, self.pending = self.pending, {}
        self.shown.update(pending)
        removed, self.removed = sorted(self.removed), set()
        self.wake = trio.Event()
        return list(pending.values()), removed


class Overview:
    """The summaries of every project this server lists, and who watches them."""

    def __init__(self, coalesce: float = COALESCE) -> None:
        self.coalesce = coalesce
        self._hubs: dict[str, ProjectHub] = {}
        """The open projects' hubs."""
        self._closed: dict[str, RunSummary] = {}
        """The summary each project had when its hub last closed."""
        self._registered: dict[str, tuple[str, bool]] = {}
        """Each registered project's directory and whether it exists here."""
        self._texts: dict[str, str] = {}
        """Each listed project's summary as last handed to the watchers."""
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._watchers: set[OverviewWatcher] = set()
        self._registry_trouble = FailureStreak()
        self.registry_error: str | None = None
        """Why the registry could not be read last time (None: it was)."""
        self.summaries_made = 0
        """Summaries computed by the coalescing task (for tests and the benchmarks)."""
        self.summaries_sent = 0
        """Summaries written to watchers, first lists included (``/metrics``)."""
        self.summaries_dropped = 0
        """Summaries a slow watcher never got: a newer one of the project replaced them."""
        self.watchers_dropped = 0
        """Watchers cut for not reading or not answering a ping (``/metrics``)."""
        self.last_state: Callable[[str], Awaitable[JsonObject | None]] | None = None
        """Reads a project's journalled state without opening it (the journal backend's
        `last_state`); set by the server. None: a project not open here is unknown."""
        self._glanced: set[str] = set()
        """The projects whose journal was looked at (`_glance_cold`)."""

    # -- from the hubs and the manager -------------------------------------------

    def changed(self, name: str) -> None:
        """``name``'s summary may have changed (a hub's commit): looked at within
        `coalesce` seconds. O(1); nothing per watcher."""
        self._dirty.add(name)
        self._wake.set()

    def opened(self, hub: ProjectHub) -> None:
        """A project's hub is open: its commits now tell the overview."""
        self._hubs[hub.name] = hub
        hub.on_summary = self.changed
        self.changed(hub.name)

    def closed(self, hub: ProjectHub) -> None:
        """A project's hub closed (idle, or at shutdown): it keeps its last summary."""
        hub.on_summary = None
        if self._hubs.get(hub.name) is hub:
            del self._hubs[hub.name]
            self._closed[hub.name] = summarise(hub.summary_events())
            self.changed(hub.name)

    # -- the registry --------------------------------------------------------------

    async def read_registry(self, path: Path) -> None:
        """Read the registered projects (in a thread); the ones added, removed or moved
        are looked at again. A registry that cannot be read is said once per streak
        and the projects last read stand; a missing one holds no project."""
        try:
            projects = await trio.to_thread.run_sync(_registered, path)
        except RegistryError as exc:
            if self._registry_trouble.failed():
                log.error("overview: registry unreadable: %s", exc)
            self.registry_error = str(exc)
            return
        if self._registry_trouble.succeeded():
            log.info("overview: registry readable again")
        self.registry_error = None
        before, self._registered = self._registered, projects
        for name in before.keys() | projects.keys():
            if before.get(name) != projects.get(name):
                self.changed(name)
        await self._glance_cold()

    async def _glance_cold(self) -> None:
        """A registered project not open here, and not since this server started, is
        shown as its journal last left it (read, not opened), not as unknown: after a
        restart the overview lists what every project was doing. Each is read once."""
        if self.last_state is None:
            return
        cold = self._registered.keys() - self._hubs.keys() - self._closed.keys() - self._glanced
        for name in sorted(cold):
            self._glanced.add(name)
            try:
                state = await self.last_state(name)
                events = [] if state is None else glance_events(state)
            except JournalError as exc:
                log.warning("overview: project %s: journal unreadable: %s", name, exc)
                continue
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("overview: project %s: journalled state unreadable: %s", name, exc)
                continue
            if events and name not in self._hubs and name not in self._closed:
                self._closed[name] = summarise(events)
                self.changed(name)

    # -- the watchers ----------------------------------------------------------------

    def watch(self) -> OverviewWatcher:
        """A new watcher: it is offered every change from now on (`first_list` is
        what there is now)."""
        watcher = OverviewWatcher()
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: OverviewWatcher) -> None:
        self._watchers.discard(watcher)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    @property
    def pending_summaries(self) -> int:
        """Summaries waiting for their watchers' sends, over all watchers: at most the
        number of projects per watcher, however slow (``/metrics``, the tests)."""
        return sum(len(watcher.pending) for watcher in self._watchers)

    def first_list(self, watcher: OverviewWatcher) -> list[str]:
        """Every listed project's summary text now, given to ``watcher``: the one last
        handed out, or for a project changed since, a fresh one (not cached: the other
        watchers get it at the next look)."""
        names = sorted(self._listed())
        texts = []
        for name in names:
            text = None if name in self._dirty else self._texts.get(name)
            texts.append(text if text is not None else encode(self.entry_of(name)))
        watcher.given(names, texts)
        return texts

    def entry_of(self, name: str) -> JsonObject:
        """``name``'s summary object (`core.project_summary.entry`)."""
        hub = self._hubs.get(name)
        path, exists = self._registered.get(name, (None, False))
        if hub is not None:
            summary: RunSummary | None = summarise(hub.summary_events())
        else:
            summary = self._closed.get(name)
        return entry(name, summary, path=path, exists=exists, loaded=hub is not None)

    # -- the one task ------------------------------------------------------------------

    async def run(self, registry: Path, registry_every: float = REGISTRY_EVERY) -> None:
        """Hand out the changed summaries, at most every `coalesce` seconds, and re-read
        the registry every ``registry_every`` seconds; until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reread_registry, registry, registry_every)
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                self.publish()
                await trio.sleep(self.coalesce)

    async def _reread_registry(self, registry: Path, every: float) -> None:
        while True:
            await self.read_registry(registry)
            await trio.sleep(every)

    def publish(self) -> None:
        """Summarise each changed project once and offer the text to every watcher;
        a summary that did not change is not offered again."""
        names, self._dirty = self._dirty, set()
        listed = self._listed()
        for name in sorted(names):
            if name not in listed:
                self._closed.pop(name, None)
                self._glanced.discard(name)
                self._texts.pop(name, None)
                for watcher in self._watchers:  # also one a first list named just now
                    watcher.gone(name)
                continue
            text = encode(self.entry_of(name))
            self.summaries_made += 1
            if self._texts.get(name) == text:
                continue
            self._texts[name] = text
            for watcher in self._watchers:
                if watcher.offer(name, text):
                    self.summaries_dropped += 1

    def _listed(self) -> set[str]:
        return self._registered.keys() | self._hubs.keys()


def _registered(path: Path) -> dict[str, tuple[str, bool]]:
    """Each registered project's directory and whether it exists (blocking); none
    when there is no registry yet."""
    try:
        projects = Registry(path).list()
    except RegistryMissing:
        return {}
    return {project.name: (project.path.as_posix(), project.path.is_dir()) for project in projects}


def glance_events(state: JsonObject) -> list[JsonObject]:
    """The events a project's summary is made of, from the state its journal last
    committed (none when it holds no snapshot); KeyError, TypeError or ValueError if
    that state is not one."""
    if "snapshot" not in state:
        return []
    return [json.loads(item.text) for item in Snapshot.from_state(state["snapshot"]).glance()]


def left_live(state: JsonObject) -> bool:
    """Did the journal's last state leave a stream live (its agent or dev server
    neither stopped nor crashed)? Then its producer may have died with the server."""
    return any(
        event["type"] in ("agent_status", "dev_server_status")
        and event["status"] not in ("stopped", "crashed")
        for event in glance_events(state)
    )
