"""The dashboard in real headless Chromium, against a real ``trio-ws serve`` process.

A test producer feeds a scripted run (``tests/corpus/autoforge-run.txt``)
through the real publish endpoint, the features database moves the progress,
and selenium reads what the page shows. Run with ``nox -s browser`` (needs
``/usr/bin/chromium`` and ``/usr/bin/chromedriver``); the default test run
does not collect this folder. ``TRIO_WS_SCREENSHOT=docs/dashboard.png``
refreshes the committed screenshot; otherwise it goes to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, closing, suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest
from features_db import Row, create_db, db_path
from selenium import webdriver  # type: ignore[import-not-found,unused-ignore]
from selenium.common.exceptions import (  # type: ignore[import-not-found,unused-ignore]
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # type: ignore[import-not-found,unused-ignore]
from selenium.webdriver.support.wait import (  # type: ignore[import-not-found,unused-ignore]
    WebDriverWait,
)
from tls_certs import make_tls_files
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from trio_ws.data.registry import Registry
from trio_ws.faces.demo_orchestrator import FEATURES as DEMO_FEATURES

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token"
WAIT = 20.0
"""Upper bound, in seconds, for any one thing to show up."""
RUN = (Path(__file__).parents[1] / "corpus" / "autoforge-run.txt").read_text().splitlines()
FEATURES = len(DEMO_FEATURES)

T = TypeVar("T")


# -- the server, as a real process ------------------------------------------------


class ServerProcess:
    """``trio-ws serve`` on 127.0.0.1; ``port`` 0 picks a free one."""

    def __init__(self, home: Path, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        script = Path(sys.executable).with_name("trio-ws")
        self.log_path = home / "server.log"
        self.log = self.log_path.open("a")
        self.process = subprocess.Popen(
            [
                str(script),
                "serve",
                f"--home={home}",
                f"--port={port}",
                "--poll-interval=0.1",
                f"--token={TOKEN}",
                "--log-level=warning",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.port = self._announced_port()

    def _announced_port(self) -> int:
        lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        stdout = self.process.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=WAIT)
        except queue.Empty:
            line = ""
        if " serving http://127.0.0.1:" not in line and " serving https://127.0.0.1:" not in line:
            self.stop()
            log = self.log_path.read_text()
            raise AssertionError(f"trio-ws serve did not start: {line!r}; its log:\n{log}")
        url = urllib.parse.urlsplit(line.split(" serving ", 1)[1].strip())
        assert url.port is not None, line
        self.scheme = url.scheme
        return url.port

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """Die at once, as a crash would: no close frames, no goodbye."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT)
        self._close_files()

    def stop(self) -> None:
        """SIGTERM (the graceful way), SIGKILL if that takes more than 5 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)
        self._close_files()

    def _close_files(self) -> None:
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.log.close()


# -- a relay, so a test can cut the page's connections ----------------------------------


class Relay:
    """A TCP relay in front of the server: the page talks through it, the test cuts it."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.target_port = target_port
        self.accepting = True
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed
            if not self.accepting:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=WAIT)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            return  # cut by the test, or one side went away

    def cut(self, *, accept_new: bool) -> None:
        """Drop every relayed connection at once; refuse new ones unless ``accept_new``."""
        self.accepting = accept_new
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut(accept_new=False)


# -- a producer, as a plain websocket client ----------------------------------------


class Producer:
    """One producer connection: numbers its items, collects what the server sends."""

    def __init__(self, ws: ClientConnection, producer_id: str, stream: str) -> None:
        self.ws = ws
        self.ws.send(json.dumps({"type": "hello", "producer": producer_id, "stream": stream}))
        welcome = json.loads(self.ws.recv(timeout=WAIT))
        assert welcome["type"] == "welcome", welcome
        self.pseq: int = welcome["acked"]
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.received.put(json.loads(message))
        except ConnectionClosed:
            return

    def lines(self, lines: list[str]) -> None:
        self.ws.send(json.dumps({"type": "lines", "first": self.pseq + 1, "lines": lines}))
        self.pseq += len(lines)

    def status(self, status: str) -> None:
        self.pseq += 1
        self.ws.send(json.dumps({"type": "status", "pseq": self.pseq, "status": status}))

    def progress(self, passing: int, total: int, needs_input: int = 0) -> None:
        """The features database as ``trio-ws run`` reads it on its machine."""
        self.pseq += 1
        item = {"type": "progress", "pseq": self.pseq, "passing": passing, "in_progress": 0}
        item.update(total=total, needs_human_input=needs_input)
        self.ws.send(json.dumps(item))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message matching ``predicate`` (within ``WAIT``)."""
        while True:
            try:
                message = self.received.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError("the producer got no matching message") from None
            if predicate(message):
                return message

    def acked(self) -> None:
        """Wait until everything sent so far is applied by the server."""
        target = self.pseq
        self.wait_for(lambda m: m["type"] in ("ack", "welcome") and m.get("pseq", 0) >= target)


# -- the features database ----------------------------------------------------------


def set_progress(path: Path, passing: int, in_progress: int, needs_input: int = 0) -> None:
    """Flag the first features passing, the next in progress, then needing input."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE features SET passes = id <= ?, in_progress = id > ? AND id <= ?,"
            " needs_human_input = id > ? AND id <= ?",
            (
                passing,
                passing,
                passing + in_progress,
                passing + in_progress,
                passing + in_progress + needs_input,
            ),
        )
        conn.execute("COMMIT")


def set_flags(
    path: Path,
    passing: Collection[int],
    in_progress: Collection[int] = (),
    needs_input: Collection[int] = (),
) -> None:
    """Set each feature's flags by id, in one ``BEGIN IMMEDIATE`` commit."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        for feature in range(1, FEATURES + 1):
            conn.execute(
                "UPDATE features SET passes = ?, in_progress = ?, needs_human_input = ?"
                " WHERE id = ?",
                (feature in passing, feature in in_progress, feature in needs_input, feature),
            )
        conn.execute("COMMIT")


def rename_table(path: Path, old: str, new: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, home: Path) -> Path:
    """Project ``demo`` with a real features database of the demo's 24 pending features."""
    directory = tmp_path / "todo-app"
    directory.mkdir()
    Registry(home / "registry.db").add("demo", directory)
    batch = [Row(category=category, name=name) for category, name in DEMO_FEATURES]
    return create_db(db_path(directory), batch)


@pytest.fixture
def served(home: Path, project: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(home)
    yield running
    running.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = chromium(tmp_path)
    yield driver
    driver.quit()


def chromium(tmp_path: Path, *extra: str) -> Any:
    """Headless Chromium with its own profile (and ``extra`` arguments)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1360,1180",
        f"--user-data-dir={tmp_path / 'chromium'}",
        *extra,
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


ProducerFactory = Callable[..., Producer]


@pytest.fixture
def producer() -> Iterator[ProducerFactory]:
    """``producer(port, producer_id, stream="agent")``: a connected producer, closed at the end."""
    with ExitStack() as stack:

        def connect(port: int, producer_id: str, stream: str = "agent") -> Producer:
            ws = stack.enter_context(
                ws_connect(
                    f"ws://127.0.0.1:{port}/ws/projects/demo/publish",
                    additional_headers={"Authorization": f"Bearer {TOKEN}"},
                    open_timeout=WAIT,
                )
            )
            return Producer(ws, producer_id, stream)

        yield connect


# -- reading the page -----------------------------------------------------------------


def wait(driver: Any, condition: Callable[[Any], T], what: str) -> T:
    """Poll ``condition`` until it is truthy; fail after ``WAIT`` saying ``what``."""
    waiter = WebDriverWait(
        driver, WAIT, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    result: T = waiter.until(condition, what)
    return result


def text(driver: Any, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return str(found[0].text) if found else ""


def wait_text(driver: Any, css: str, expected: str) -> None:
    wait(driver, lambda d: text(d, css) == expected, f"{css} to read {expected!r}")


def card_names(driver: Any) -> list[str]:
    return [
        card.get_attribute("data-name")
        for card in driver.find_elements(By.CSS_SELECTOR, "#agents .agent")
    ]


def log_tags(driver: Any) -> set[str]:
    return {tag.text for tag in driver.find_elements(By.CSS_SELECTOR, "#log .line .tag")}


def connection_state(driver: Any) -> str:
    return str(driver.find_element(By.ID, "connection").get_attribute("data-state"))


def open_live(driver: Any, served: ServerProcess, query: str = "") -> None:
    driver.get(f"{served.base}/projects/demo{query}")
    wait(driver, lambda d: connection_state(d) == "live", "the page to go live")


def wait_passing(driver: Any, passing: int) -> None:
    wait(driver, lambda d: progress_figures(d)[0] == str(passing), f"{passing} passing")


def progress_figures(driver: Any) -> tuple[str, ...]:
    return tuple(
        text(driver, f"#{name}")
        for name in ("passing", "in-progress", "needs-input", "total", "percentage")
    )


# -- the scripted run ----------------------------------------------------------------

BATCHES_STARTED = RUN.index("Started coding agent for features #1, #2, #3")
FIRST_COMPLETION = RUN.index("Features #1, #2, #3 completed")
EXTRA_LINES = [
    "[DEBUG] Spawning loop: 4 ready, 1 slots",
    "3 blocked by dependencies",
    "Started testing agent for features [7,8] (PID 4242)",
    "[Feature #7] Verifying the todo list keeps its order after a reload",
]
"""Real-format lines that put a third (testing) agent on screen and move the counters."""


def start_run(served: ServerProcess, producer: ProducerFactory) -> Producer:
    """A run in full swing: two coding agents mid-work, a testing agent, a dev server."""
    agent = producer(served.port, "agent-1")
    agent.status("running")
    agent.lines(RUN[:FIRST_COMPLETION] + EXTRA_LINES)
    dev = producer(served.port, "dev-1", "dev")
    dev.status("running")
    dev.lines(
        [
            "> todo-app@0.1.0 dev",
            "  VITE v5.4.0  ready in 312 ms",
            "  ➜  Local:   http://localhost:5173/",
        ]
    )
    agent.acked()
    dev.acked()
    return agent


# -- tests ------------------------------------------------------------------------------


def test_live_view_shows_the_run(
    served: ServerProcess,
    project: Path,
    browser: Any,
    producer: ProducerFactory,
    tmp_path: Path,
) -> None:
    browser.set_window_size(1360, 1720)  # the screenshot shows the board and the log too
    open_live(browser, served, f"?token={TOKEN}")  # the screenshot shows the controls
    start_run(served, producer)
    for passing in (1, 2):  # a few points for the chart
        set_progress(project, passing=passing, in_progress=5)
        wait_passing(browser, passing)
    set_progress(project, passing=3, in_progress=5, needs_input=1)
    wait(browser, lambda d: card_names(d) == ["Spark", "Fizz", "Octo"], "three agent cards")
    wait(browser, lambda d: progress_figures(d) == ("3", "5", "1", "24", "12.5%"), "progress")
    wait_text(browser, "#agent-status", "running")
    wait_text(browser, "#orch-coding", "2")
    wait_text(browser, "#orch-testing", "1")
    wait_text(browser, "#orch-blocked", "3")
    wait_text(browser, "#dev-link", "http://localhost:5173/")
    assert text(browser, '#agents .agent[data-name="Octo"] .agent-type') == "TESTING"
    last = EXTRA_LINES[-1]
    wait(browser, lambda d: last in text(d, "#log .line:last-child"), "the last log line")
    wait(browser, lambda d: column_ids(d, "done") == [1, 2, 3], "the board's last read")
    wait(browser, lambda d: feature_agents(d, 7) == ["Octo"], "the board with its agents")
    target = Path(os.environ.get("TRIO_WS_SCREENSHOT") or tmp_path / "dashboard.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))


def test_the_agent_count_tells_finished_cards_from_active_ones(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    """A finished agent's card stays a moment: "2 active" must not sit over three cards."""
    open_live(browser, served)
    agent = start_run(served, producer)
    wait_text(browser, "#agent-count", "3 active")
    agent.lines([RUN[FIRST_COMPLETION]])
    wait_text(browser, "#agent-count", "2 active · 1 just finished")
    assert len(card_names(browser)) == 3


def test_a_dev_line_with_its_own_clock_shows_one_time(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    dev = producer(served.port, "dev-1", "dev")
    dev.status("running")
    dev.lines(["12:00:01 PM [vite] hmr update /src/App.tsx", "  ready in 312 ms"])
    dev.acked()
    wait(browser, lambda d: "ready in 312 ms" in text(d, "#dev-log"), "the dev lines")
    stamped = browser.find_elements(By.CSS_SELECTOR, "#dev-log .line")[-2]
    assert [t.text for t in stamped.find_elements(By.TAG_NAME, "time")] == ["12:00:01 PM"]
    assert stamped.find_element(By.CSS_SELECTOR, ".text").text == "[vite] hmr update /src/App.tsx"


def test_feature_cards_keep_their_names_readable_at_900_pixels(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    browser.set_window_size(900, 1200)
    open_live(browser, served)
    set_flags(project, passing=set(), in_progress={1, 2, 3}, needs_input=set())
    start_run(served, producer)
    wait(browser, lambda d: feature_agents(d, 1) == ["Spark"], "Spark on #1")
    card = browser.find_element(By.CSS_SELECTOR, '#board .feature[data-id="1"]')
    assert card.rect["width"] >= 220, card.rect


def test_a_standing_alert_is_a_banner_until_it_is_resolved(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    """serve has alerts on: a feature needing a human raises one, answering it resolves it."""
    open_live(browser, served)
    start_run(served, producer)
    set_progress(project, passing=1, in_progress=2, needs_input=1)
    css = '#banners .banner[data-severity="warning"]'
    wait(browser, lambda d: "NEEDS_INPUT" in text(d, f"{css} .source").upper(), "the alert")
    assert "human" in text(browser, f"{css} .content").lower()
    set_progress(project, passing=1, in_progress=2, needs_input=0)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, css) == [], "the alert to go")


def test_page_resumes_after_a_kill_9_restart_of_a_journalled_server(
    home: Path, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    """The journal keeps epoch, history and trackers: the page resumes, keeps its cards."""
    first = ServerProcess(home)
    try:
        open_live(browser, first)
        start_run(first, producer)
        wait(browser, lambda d: "Fizz" in card_names(d), "Fizz's card")
        old_epoch = browser.find_element(By.TAG_NAME, "body").get_attribute("data-epoch")
    finally:
        first.kill()
    wait(browser, lambda d: connection_state(d) == "reconnecting", "the page to notice")
    second = ServerProcess(home, first.port)
    try:
        wait(browser, lambda d: connection_state(d) == "live", "the page to reconnect")
        body = browser.find_element(By.TAG_NAME, "body")
        assert body.get_attribute("data-epoch") == old_epoch
        assert body.get_attribute("data-sync") == "resumed"
        assert "Fizz" in card_names(browser)
        wait_text(browser, "#agent-status", "running")
    finally:
        second.stop()


def test_page_resyncs_after_a_restart_of_a_server_that_forgets(
    home: Path, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    """``--journal memory``: a restart is a new epoch, and the page starts over cleanly."""
    first = ServerProcess(home, extra=("--journal", "memory"))
    try:
        open_live(browser, first)
        start_run(first, producer)
        set_progress(project, passing=3, in_progress=5)
        wait(browser, lambda d: "Fizz" in card_names(d), "Fizz's card")
        old_epoch = browser.find_element(By.TAG_NAME, "body").get_attribute("data-epoch")
    finally:
        first.kill()
    wait(browser, lambda d: connection_state(d) == "reconnecting", "the page to notice")
    second = ServerProcess(home, first.port, extra=("--journal", "memory"))
    try:
        wait(browser, lambda d: connection_state(d) == "live", "the page to reconnect")
        body = browser.find_element(By.TAG_NAME, "body")
        assert body.get_attribute("data-epoch") != old_epoch
        assert body.get_attribute("data-resync-reason") == "epoch_changed"
        agent = producer(second.port, "agent-2")
        agent.status("running")
        agent.lines(["Started coding agent for feature #9", "[Feature #9] Creating the filter bar"])
        set_progress(project, passing=10, in_progress=1)
        wait(browser, lambda d: card_names(d) == ["Spark"], "only the new run's agent")
        wait_text(browser, '#agents .agent[data-name="Spark"] .agent-features', "Feature #9")
        wait(browser, lambda d: progress_figures(d)[:4] == ("10", "1", "0", "24"), "new progress")
        assert log_lines(browser) == [
            "Started coding agent for feature #9",
            "[Feature #9] Creating the filter bar",
        ]
    finally:
        second.stop()


def log_lines(driver: Any) -> list[str]:
    return [line.text for line in driver.find_elements(By.CSS_SELECTOR, "#log .line .text")]


def test_page_resumes_after_a_dropped_connection(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    """Events published while the page is away arrive once each, without a resync."""
    relay = Relay(served.port)
    try:
        browser.get(f"{relay.base}/projects/demo")
        wait(browser, lambda d: connection_state(d) == "live", "the page to go live")
        agent = producer(served.port, "agent-1")
        agent.lines(["before 1", "before 2"])
        wait(browser, lambda d: log_lines(d) == ["before 1", "before 2"], "the first lines")
        epoch = browser.find_element(By.TAG_NAME, "body").get_attribute("data-epoch")
        relay.cut(accept_new=False)
        wait(browser, lambda d: connection_state(d) == "reconnecting", "the page to notice")
        agent.lines(["while away 1", "while away 2"])
        agent.acked()
        relay.accepting = True
        wait(browser, lambda d: connection_state(d) == "live", "the page to come back")
        agent.lines(["after"])
        expected = ["before 1", "before 2", "while away 1", "while away 2", "after"]
        wait(browser, lambda d: log_lines(d) == expected, "every line once, in order")
        body = browser.find_element(By.TAG_NAME, "body")
        assert body.get_attribute("data-sync") == "resumed"
        assert body.get_attribute("data-epoch") == epoch
    finally:
        relay.close()


BURST = 3500
PAD = "x" * 4000


def test_page_continues_after_falling_behind_past_the_history(
    home: Path, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    """A mid-stream resync: the page rebuilds from the snapshot and goes on from the
    seq the resync names, on the same connection."""
    served = ServerProcess(home, extra=("--history=50",))
    try:
        open_live(browser, served)
        agent = producer(served.port, "agent-1")
        agent.lines(["before"])
        wait(browser, lambda d: log_lines(d) == ["before"], "the first line")
        # 3,500 lines of 4 KB in five commits: the first fills the page's socket (the
        # fan-out writes straight to it, the connection keeps the rest), the next four
        # queue past the page's 1,024, and the 50 held events no longer reach back.
        burst = [f"burst {n} {PAD}" for n in range(BURST)]
        for start in range(0, BURST, BURST // 5):
            agent.lines(burst[start : start + BURST // 5])
        agent.acked()
        with ws_connect(f"ws://127.0.0.1:{served.port}/ws/projects/demo") as probe:
            head = json.loads(probe.recv(timeout=WAIT))["seq"]
        body = browser.find_element(By.TAG_NAME, "body")
        wait(browser, lambda d: body.get_attribute("data-resyncs") == "1", "the resync")
        agent.lines(["after 1", "after 2"])
        wait(browser, lambda d: log_lines(d)[-1:] == ["after 2"], "the lines after it")
        lines = log_lines(browser)
        assert body.get_attribute("data-resync-reason") == "gap_evicted"
        assert body.get_attribute("data-sync-seq") == str(head)
        assert body.get_attribute("data-connects") == "1"
        assert connection_state(browser) == "live"
    finally:
        served.stop()
    assert lines[-2:] == ["after 1", "after 2"]
    snapshot = lines[:-2]  # the snapshot's log backlog: the burst's tail, nothing twice
    assert snapshot == [f"burst {n} {PAD}" for n in range(BURST - len(snapshot), BURST)]


def test_pause_button_reaches_the_producer(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served, f"?token={TOKEN}")
    assert "token" not in browser.current_url
    cookie = browser.get_cookie("trio_ws_token")
    assert cookie is not None and cookie["httpOnly"] and cookie["value"] == TOKEN
    assert "trio_ws_token" not in browser.execute_script("return document.cookie")
    agent = producer(served.port, "agent-1")
    agent.status("running")
    pause = browser.find_element(By.CSS_SELECTOR, 'button[data-action="pause"]')
    wait(browser, lambda d: pause.is_enabled(), "Pause to be enabled")
    assert not browser.find_element(By.CSS_SELECTOR, 'button[data-action="resume"]').is_enabled()
    pause.click()
    assert agent.wait_for(lambda m: m["type"] == "control") == {
        "type": "control",
        "action": "pause",
    }


def test_without_token_no_controls_are_shown(served: ServerProcess, browser: Any) -> None:
    open_live(browser, served)
    assert not browser.find_element(By.ID, "controls").is_displayed()


def test_an_unknown_project_gets_a_page_saying_so(served: ServerProcess, browser: Any) -> None:
    """Not a dashboard waiting on a socket that can only be refused: a clear page."""
    browser.get(f"{served.base}/projects/nobody")
    assert text(browser, "h1") == "No project nobody here"
    assert "Project not found in registry" in text(browser, "body")
    assert browser.find_elements(By.CSS_SELECTOR, "#connection-text") == []


def test_log_tail_keeps_up_with_a_fast_run_and_stays_capped(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    agent = producer(served.port, "agent-1")
    agent.status("running")
    for batch in range(10):
        agent.lines([f"line {batch * 500 + n}" for n in range(500)])
    wait_text(browser, "#log .line:last-child .text", "line 4999")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#log .line")) == 500
    assert text(browser, "#log .line:first-child .text") == "line 4500"


def test_log_filter_shows_one_agent(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    start_run(served, producer)
    wait(browser, lambda d: "Fizz" in card_names(d), "Fizz's card")
    wait(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#log-filter option")) == 4,
        "options",
    )
    browser.find_element(By.CSS_SELECTOR, '#log-filter option[value="1"]').click()
    wait(browser, lambda d: log_tags(d) == {"Fizz"}, "only Fizz's lines")
    lines = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#log .line .text")]
    expected = [
        line for line in RUN[BATCHES_STARTED:FIRST_COMPLETION] if line.startswith("[Feature #4]")
    ]
    assert len(expected) == 3
    assert lines == expected


def banner(driver: Any, source: str) -> str:
    return text(driver, f'#banners .banner[data-source="{source}"] .content')


def test_progress_warning_shows_until_the_next_progress(
    served: ServerProcess, project: Path, browser: Any
) -> None:
    open_live(browser, served)
    wait(browser, lambda d: progress_figures(d)[3] == "24", "the first progress")
    rename_table(project, "features", "features_away")
    wait(browser, lambda d: "features.db" in banner(d, "progress"), "the warning")
    assert progress_figures(browser)[3] == "24"  # the last good figures stand
    rename_table(project, "features_away", "features")
    set_progress(project, passing=2, in_progress=0)
    wait(browser, lambda d: progress_figures(d)[0] == "2", "the next progress")
    wait(browser, lambda d: banner(d, "progress") == "", "the warning to clear")


def test_project_list_links_to_the_live_view(served: ServerProcess, browser: Any) -> None:
    browser.get(f"{served.base}/")
    link = wait(browser, lambda d: d.find_element(By.LINK_TEXT, "demo"), "the project link")
    link.click()
    wait(browser, lambda d: connection_state(d) == "live", "the live view")
    assert browser.current_url == f"{served.base}/projects/demo"
    assert text(browser, "#project-name") == "demo"


def test_phone_width_stacks_the_panels(served: ServerProcess, browser: Any) -> None:
    browser.set_window_size(390, 900)
    open_live(browser, served)
    main = browser.find_element(By.CSS_SELECTOR, ".col-main").rect
    side = browser.find_element(By.CSS_SELECTOR, ".col-side").rect
    assert side["y"] >= main["y"] + main["height"]
    assert side["x"] == main["x"]
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browser.execute_script("return window.innerWidth")


# -- the features board and the chart ----------------------------------------------------


def column_ids(driver: Any, column: str) -> list[int]:
    return [
        int(card.get_attribute("data-id"))
        for card in driver.find_elements(By.CSS_SELECTOR, f"#col-{column} .feature")
    ]


def board(driver: Any) -> dict[str, list[int]]:
    return {column: column_ids(driver, column) for column in ("pending", "in-progress", "done")}


def feature_agents(driver: Any, feature: int) -> list[str]:
    css = f'#board .feature[data-id="{feature}"] .feature-agent'
    return [tag.text for tag in driver.find_elements(By.CSS_SELECTOR, css)]


def rect(driver: Any, css: str) -> tuple[int, int]:
    """(y, height) of the first element matching ``css``, in page coordinates."""
    box = driver.find_element(By.CSS_SELECTOR, css).rect
    return round(box["y"]), round(box["height"])


def test_board_holds_each_feature_in_its_column_with_its_agents(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    set_flags(project, passing={6, 7, 8}, in_progress={1, 2, 3, 4, 5}, needs_input={9})
    start_run(served, producer)  # Spark on #1-#3, Fizz on #4-#5, Octo testing #7-#8
    expected = {
        "pending": [9, *range(10, FEATURES + 1)],  # the one waiting for a human first
        "in-progress": [1, 2, 3, 4, 5],
        "done": [6, 7, 8],
    }
    wait(browser, lambda d: board(d) == expected, "the features in their columns")
    wait(browser, lambda d: feature_agents(d, 4) == ["Fizz"], "Fizz on #4")
    agents = {feature: feature_agents(browser, feature) for feature in range(1, 10)}
    assert agents == {
        1: ["Spark"],
        2: ["Spark"],
        3: ["Spark"],
        4: ["Fizz"],
        5: ["Fizz"],
        6: [],
        7: ["Octo"],
        8: ["Octo"],
        9: [],
    }
    assert text(browser, "#n-in-progress") == "5"
    card = '#board .feature[data-id="1"]'
    assert text(browser, f"{card} .feature-name") == DEMO_FEATURES[0][1]
    assert text(browser, f"{card} .feature-category") == DEMO_FEATURES[0][0]
    flagged = browser.find_element(By.CSS_SELECTOR, '#board .feature[data-id="9"]')
    assert "needs-input" in flagged.get_attribute("class").split()
    assert text(browser, '#board .feature[data-id="9"] .flag') == "NEEDS INPUT"


def test_board_agents_leave_when_the_run_stops(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    set_flags(project, passing=(), in_progress={1, 2, 3, 4, 5})
    agent = start_run(served, producer)
    wait(browser, lambda d: feature_agents(d, 1) == ["Spark"], "Spark on #1")
    agent.status("stopped")
    wait(browser, lambda d: feature_agents(d, 1) == [], "no agent on #1")
    assert all(feature_agents(browser, feature) == [] for feature in range(1, 9))


PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"
    "AAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def shot_sessions(driver: Any) -> list[str]:
    """The names of the cards that show a browser screenshot."""
    return [
        card.get_attribute("data-name")
        for card in driver.find_elements(By.CSS_SELECTOR, "#agents .agent")
        if card.find_elements(By.CSS_SELECTOR, "img.agent-shot")
    ]


def test_a_browser_screenshot_shows_on_its_agents_card_until_the_run_stops(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    agent = start_run(served, producer)
    wait(browser, lambda d: card_names(d) == ["Spark", "Fizz", "Octo"], "three agent cards")
    # The page asked for screenshots at its hello, before the run started.
    screenshot = {
        "type": "screenshot",
        "sessionName": "testing-0",
        "featureId": 7,
        "imageData": PNG_1X1,
        "timestamp": "2026-12-05T18:00:00Z",
    }
    agent.ws.send(json.dumps(screenshot))
    wait(browser, lambda d: shot_sessions(d) == ["Octo"], "the picture on Octo's card")
    agent.status("stopped")
    wait(browser, lambda d: shot_sessions(d) == [], "no picture once the run stopped")


def test_board_refreshes_at_the_next_progress_without_moving_the_page(
    served: ServerProcess, project: Path, browser: Any
) -> None:
    open_live(browser, served)
    wait(browser, lambda d: len(column_ids(d, "pending")) == FEATURES, "the first board")
    before = (rect(browser, "#board-panel"), rect(browser, ".log-panel"))
    set_flags(project, passing={1, 2}, in_progress={3})
    wait(browser, lambda d: column_ids(d, "done") == [1, 2], "the refreshed board")
    assert column_ids(browser, "in-progress") == [3]
    assert column_ids(browser, "pending") == list(range(4, FEATURES + 1))
    assert (rect(browser, "#board-panel"), rect(browser, ".log-panel")) == before


def test_board_shows_the_features_error_instead_of_the_board(
    served: ServerProcess, project: Path, browser: Any
) -> None:
    rename_table(project, "features", "features_away")
    open_live(browser, served)
    message = "#board-message"
    wait(browser, lambda d: "has no features table" in text(d, message), "the error")
    assert text(browser, message).startswith("Cannot show the features (HTTP 500): ")
    assert str(project) in text(browser, message)
    assert not browser.find_element(By.ID, "board").is_displayed()
    rename_table(project, "features_away", "features")
    set_flags(project, passing={1})
    wait(browser, lambda d: column_ids(d, "done") == [1], "the board once it reads again")
    assert not browser.find_element(By.ID, "board-message").is_displayed()


def progress_history(served: ServerProcess) -> dict[str, Any]:
    url = f"{served.base}/api/projects/demo/progress-history"
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        body: dict[str, Any] = json.load(response)
    return body


def chart_counts(driver: Any) -> tuple[int, int, int]:
    """(points the chart holds, dots drawn, status markers drawn)."""
    chart = driver.find_element(By.ID, "chart")
    return (
        int(chart.get_attribute("data-points")),
        len(driver.find_elements(By.CSS_SELECTOR, "#chart .pt")),
        len(driver.find_elements(By.CSS_SELECTOR, "#chart .marker")),
    )


def test_chart_has_a_point_per_progress_event_and_marks_status_changes(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    wait(browser, lambda d: chart_counts(d)[0] >= 1, "the first point")
    agent = producer(served.port, "agent-1")
    agent.status("running")
    for passing in (1, 2, 4):
        set_flags(project, passing=set(range(1, passing + 1)))
        wait_passing(browser, passing)
    history = progress_history(served)
    points, statuses = len(history["points"]), len(history["statuses"])
    assert points == 4  # the first read, then three changes
    assert [status["status"] for status in history["statuses"]][-1] == "running"
    wait(browser, lambda d: chart_counts(d) == (points, points, statuses), "the live chart")
    marker = '#chart .marker[data-status="running"]'
    assert browser.find_elements(By.CSS_SELECTOR, marker)
    browser.refresh()  # a fresh page draws the same chart from the history
    wait(browser, lambda d: connection_state(d) == "live", "the page to go live again")
    wait(browser, lambda d: chart_counts(d) == (points, points, statuses), "the chart again")


def test_phone_width_stacks_the_board_columns(served: ServerProcess, browser: Any) -> None:
    browser.set_window_size(390, 900)
    open_live(browser, served)
    wait(browser, lambda d: len(column_ids(d, "pending")) == FEATURES, "the board")
    columns = [
        browser.find_element(By.CSS_SELECTOR, f'.board-col[data-column="{name}"]').rect
        for name in ("pending", "in-progress", "done")
    ]
    assert len({column["x"] for column in columns}) == 1
    assert columns[0]["y"] + columns[0]["height"] <= columns[1]["y"]
    assert columns[1]["y"] + columns[1]["height"] <= columns[2]["y"]
    chart = browser.find_element(By.ID, "chart").rect
    panel = browser.find_element(By.ID, "progress-panel").rect
    assert chart["x"] >= panel["x"] and chart["x"] + chart["width"] <= panel["x"] + panel["width"]
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browser.execute_script("return window.innerWidth")


def test_the_dashboard_over_https_and_wss_with_the_test_ca_trusted(
    home: Path, project: Path, tmp_path: Path
) -> None:
    """`serve --certfile/--keyfile`: the page over HTTPS and its socket over wss://, in a
    Chromium that trusts exactly the test certificate's key (not every certificate)."""
    files = make_tls_files(tmp_path / "tls")
    tls = ("--certfile", str(files.certfile), "--keyfile", str(files.keyfile))
    served = ServerProcess(home, extra=tls)
    with ExitStack() as stack:
        stack.callback(served.stop)
        assert served.base.startswith("https://")
        driver = chromium(tmp_path, f"--ignore-certificate-errors-spki-list={files.spki_hash()}")
        stack.callback(driver.quit)
        open_live(driver, served, f"?token={TOKEN}")
        assert driver.current_url.startswith("https://")
        ws = stack.enter_context(
            ws_connect(
                f"wss://127.0.0.1:{served.port}/ws/projects/demo/publish",
                ssl=files.client_context(),
                additional_headers={"Authorization": f"Bearer {TOKEN}"},
                open_timeout=WAIT,
            )
        )
        agent = Producer(ws, "agent-tls", "agent")
        agent.status("running")
        agent.lines(RUN[: BATCHES_STARTED + 1])
        agent.acked()
        wait_text(driver, "#agent-status", "running")
        last = RUN[BATCHES_STARTED]
        wait(driver, lambda d: last in text(d, "#log .line:last-child"), "the line over wss")
        set_progress(project, passing=2, in_progress=3)
        wait_passing(driver, 2)


# -- the overview at "/", an alert on its agent's card, browser notifications --------------


def overview_rows(driver: Any) -> list[str]:
    """The overview's project names, top to bottom (one round trip, even for 200)."""
    rows: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#projects .project')].map(r => r.dataset.name)"
    )
    return rows


def overview_row(driver: Any, name: str, css: str) -> str:
    return text(driver, f'#projects .project[data-name="{name}"] {css}')


def overview_badge(driver: Any, name: str, which: str) -> str:
    """A row's ``status`` or ``attention`` badge, in capitals whatever the style says."""
    return overview_row(driver, name, f".badge.{which}").upper()


def register(home: Path, tmp_path: Path, *names: str) -> None:
    registry = Registry(home / "registry.db")
    for name in names:
        directory = tmp_path / "projects" / name
        directory.mkdir(parents=True)
        registry.add(name, directory)


def test_the_overview_lists_every_project_and_follows_it_live(
    home: Path, tmp_path: Path, served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    register(home, tmp_path, "other")
    browser.get(f"{served.base}/")
    wait(browser, lambda d: overview_rows(d) == ["demo", "other"], "both projects")
    assert overview_badge(browser, "other", "status") == "NOT OPEN HERE"
    agent = producer(served.port, "agent-1")
    agent.status("running")
    agent.lines(RUN[:FIRST_COMPLETION])
    agent.acked()
    wait(browser, lambda d: overview_badge(d, "demo", "status") == "RUNNING", "running")
    wait(browser, lambda d: overview_row(d, "demo", ".agents-text").startswith("2 "), "agents")
    assert "Spark" in overview_row(browser, "demo", ".agents-text")
    assert overview_row(browser, "demo", ".ago").startswith("active ")
    link = browser.find_element(By.LINK_TEXT, "demo")  # the project pages are where they were
    link.click()
    wait(browser, lambda d: connection_state(d) == "live", "the live view")
    assert browser.current_url == f"{served.base}/projects/demo"


def test_the_overview_puts_the_project_that_needs_you_first(
    home: Path,
    tmp_path: Path,
    served: ServerProcess,
    project: Path,
    browser: Any,
    producer: ProducerFactory,
) -> None:
    register(home, tmp_path, "aaa-quiet", "zzz-quiet")
    browser.get(f"{served.base}/")
    wait(browser, lambda d: overview_rows(d) == ["aaa-quiet", "demo", "zzz-quiet"], "by name")
    agent = producer(served.port, "agent-1")
    agent.status("running")
    agent.acked()
    wait(browser, lambda d: overview_rows(d)[0] == "demo", "the running project first")
    # Nobody watches demo's page, so the server polls no database: its producer reports
    # the progress, as `trio-ws run` does.
    agent.progress(passing=1, total=24, needs_input=1)
    wait(
        browser,
        lambda d: overview_badge(d, "demo", "attention") == "NEEDS INPUT",
        "the project needing input",
    )
    assert overview_rows(browser) == ["demo", "aaa-quiet", "zzz-quiet"]
    assert "human input" in overview_row(browser, "demo", ".project-alert")
    agent.status("crashed")  # an error alert: still first, now red
    wait(browser, lambda d: overview_badge(d, "demo", "attention") == "ERROR", "the error")
    assert overview_rows(browser)[0] == "demo"


def test_the_overview_stays_usable_with_200_projects(
    home: Path, tmp_path: Path, served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    names = [f"a-project-{n:03d}" for n in range(199)]  # all before "demo" by name
    register(home, tmp_path, *names)
    started = time.monotonic()
    browser.get(f"{served.base}/")
    wait(browser, lambda d: len(overview_rows(d)) == 200, "200 rows")
    rendered = time.monotonic() - started
    assert rendered < 3.0, f"200 projects took {rendered:.2f} s to show"
    agent = producer(served.port, "agent-1")
    agent.status("running")
    agent.acked()
    started = time.monotonic()
    wait(browser, lambda d: overview_rows(d)[0] == "demo", "the running project first")
    assert time.monotonic() - started < 2.0  # coalesced to 0.5 s, not held up by the rest
    assert overview_badge(browser, "demo", "status") == "RUNNING"
    assert overview_rows(browser)[1:] == names


@pytest.fixture
def quick_alerts(home: Path, project: Path) -> Iterator[ServerProcess]:
    """A server whose agents count as silent after one second without a line."""
    running = ServerProcess(home, extra=("--alert-silent=1s",))
    yield running
    running.stop()


def card_alert(driver: Any, name: str) -> str:
    return text(driver, f'#agents .agent[data-name="{name}"] .agent-alert')


def test_an_alert_about_an_agent_shows_on_its_card(
    quick_alerts: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, quick_alerts)
    agent = start_run(quick_alerts, producer)
    wait(browser, lambda d: "said nothing" in card_alert(d, "Spark"), "the alert on Spark's card")
    severity = browser.find_element(
        By.CSS_SELECTOR, '#agents .agent[data-name="Spark"] .agent-alert'
    ).get_attribute("data-severity")
    assert severity == "warning"
    agent.lines(["[Feature #1] Still writing the tests"])  # Spark speaks: resolved
    wait(browser, lambda d: card_alert(d, "Spark") == "", "Spark's alert to go")
    assert "said nothing" in card_alert(browser, "Fizz")  # Fizz is still quiet


NOTIFICATION_SPY = """
window.__asked = 0;
window.__shown = [];
const Original = window.Notification;
window.Notification = class extends Original {
  constructor(title, options) {
    super(title, options);
    window.__shown.push(title);
  }
  static requestPermission(...args) {
    window.__asked += 1;
    return Original.requestPermission(...args);
  }
};
"""
"""Counts the page's permission requests and the notifications it makes."""


def test_notifications_are_asked_from_a_click_and_tell_new_alerts_only(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    browser.execute_cdp_cmd(
        "Browser.grantPermissions", {"origin": served.base, "permissions": ["notifications"]}
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": NOTIFICATION_SPY})
    agent = start_run(served, producer)
    set_progress(project, passing=1, in_progress=2, needs_input=1)  # standing before load
    open_live(browser, served)
    wait(browser, lambda d: "NEEDS_INPUT" in text(d, "#banners .source").upper(), "the banner")
    assert text(browser, "#notify") == "Notify me"
    assert browser.execute_script("return window.__asked") == 0  # never asked on load
    browser.find_element(By.ID, "notify").click()
    wait_text(browser, "#notify", "Notifications on")
    assert browser.execute_script("return window.__asked") == 1
    assert browser.execute_script("return window.__shown") == []  # the standing one: no
    agent.status("crashed")
    wait(browser, lambda d: d.execute_script("return window.__shown").__len__() == 1, "one")
    assert browser.execute_script("return window.__shown") == ["demo: run_crashed"]
    browser.refresh()  # a later visit: the choice is kept, nothing is asked, nothing repeated
    wait(browser, lambda d: connection_state(d) == "live", "live again")
    wait_text(browser, "#notify", "Notifications on")
    assert browser.execute_script("return window.__asked") == 0
    assert browser.execute_script("return window.__shown") == []


# -- runs: the list and the replay ------------------------------------------------------


RUN_BATCH = 60
RUN_BATCHES = len(range(0, len(RUN), RUN_BATCH))
"""`record_run` feeds the corpus in batches, one more feature passing after each."""


def record_run(
    served: ServerProcess,
    project: Path,
    browser: Any,
    producer: ProducerFactory,
    end: str = "stopped",
) -> tuple[dict[str, Any], Producer]:
    """The corpus run, fed in batches with the progress moving between them (the live
    page open, so the server polls the features), then stopped; its summary."""
    open_live(browser, served)
    agent = producer(served.port, "agent-1")
    agent.status("running")
    for batch, start in enumerate(range(0, len(RUN), RUN_BATCH)):
        agent.lines(RUN[start : start + RUN_BATCH])
        agent.acked()
        set_progress(project, passing=batch + 1, in_progress=2)
        wait_passing(browser, batch + 1)
    agent.status(end)
    agent.acked()
    wait_text(browser, "#agent-status", end)
    runs = api_json(served, "/api/projects/demo/runs")["runs"]
    assert runs[0]["ended"] == end, runs
    summary: dict[str, Any] = runs[0]
    return summary, agent


def api_json(served: ServerProcess, path: str) -> Any:
    request = urllib.request.Request(
        f"{served.base}{path}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.loads(response.read())


def open_replay(driver: Any, served: ServerProcess, run_id: str) -> None:
    driver.get(f"{served.base}/projects/demo/runs/{urllib.parse.quote(run_id)}")
    wait(driver, lambda d: moment(d)[0] == "paused", "the replay to load")


def moment(driver: Any) -> tuple[str, int | None]:
    """The replay's state (paused, playing, seeking, ended...) and the seq it stands at."""
    node = driver.find_element(By.ID, "replay-moment")
    seq = node.get_attribute("data-seq")
    return str(node.get_attribute("data-state")), int(seq) if seq else None


def seq_of(served: ServerProcess, run_id: str, line: str) -> int:
    """The seq of the run's first log event holding ``line``."""
    query = urllib.parse.urlencode({"q": line, "type": "log", "limit": 1})
    found = api_json(served, f"/api/projects/demo/runs/{run_id}/events?{query}")["events"]
    assert found, line
    return int(found[0]["seq"])


def test_runs_list_shows_a_finished_run_and_links_the_open_one_to_the_live_view(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    finished, agent = record_run(served, project, browser, producer)
    agent.status("running")
    agent.acked()
    browser.find_element(By.ID, "runs-link").click()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tr.run")) == 2, "2 runs")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
    assert [row.get_attribute("data-ended") for row in rows] == ["live", "stopped"]
    cells = [cell.text for cell in rows[1].find_elements(By.TAG_NAME, "td")]
    final = f"{RUN_BATCHES}/24 ({round(RUN_BATCHES / 24 * 100, 1)}%)"
    assert cells[2] == "stopped" and cells[4] == final and cells[5] == "196"
    assert cells[6] == "2"  # Fizz's and Hoot's failed batches
    assert rows[0].find_element(By.CSS_SELECTOR, ".live-link").get_attribute("href") == (
        f"{served.base}/projects/demo"
    )
    assert not rows[1].find_elements(By.CSS_SELECTOR, ".live-link")
    rows[1].find_element(By.CSS_SELECTOR, "a.replay-link").click()
    wait(browser, lambda d: moment(d) == ("paused", finished["first_seq"]), "the run's start")
    assert browser.current_url.endswith(f"/projects/demo/runs/{finished['id']}")
    wait(browser, lambda d: "cannot be known" in text(d, "#board-message"), "no board")


def test_replay_shows_the_cards_and_progress_at_a_sought_moment(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    run, _ = record_run(served, project, browser, producer)
    open_replay(browser, served, run["id"])
    assert text(browser, "#agent-status") == "running"
    # The moment before the first completion, found by a search mark and sought by a click.
    browser.find_element(By.ID, "replay-search").send_keys("Features #1, #2, #3 completed\n")
    mark = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".mark.hit"), "a hit mark")
    sought = int(mark.get_attribute("data-seq"))
    mark.click()
    wait(browser, lambda d: moment(d) == ("paused", sought), "the sought moment")
    wait(browser, lambda d: "Spark" in card_names(d) and "Fizz" in card_names(d), "the cards")
    then = str(FIRST_COMPLETION // RUN_BATCH)  # the batches before it each passed one more
    wait(browser, lambda d: progress_figures(d)[0] == then, "the progress then")
    assert "Features #1, #2, #3 completed" in text(browser, "#log .line:last-child")
    # The board then: the features passing now, less those this run completed later
    # (Spark's #1-#3, Buzz's #6); in progress, those its agents were on then.
    later = {1, 2, 3, 6}
    done = [feature for feature in range(1, RUN_BATCHES + 1) if feature not in later]
    wait(browser, lambda d: column_ids(d, "done") == done, "the board at that moment")
    assert column_ids(browser, "in-progress") == [1, 2, 3, 5]
    assert "less this run's later completions" in text(browser, "#board-updated")
    # The end of the run, by the slider.
    browser.execute_script(
        "const s = document.getElementById('replay-scrub'); s.value = s.max;"
        "s.dispatchEvent(new Event('change'));"
    )
    wait(browser, lambda d: moment(d) == ("paused", run["last_seq"]), "the run's end")
    wait_text(browser, "#agent-status", "stopped")
    assert progress_figures(browser)[0] == str(RUN_BATCHES) and card_names(browser) == []


def test_replay_plays_forward_to_the_end(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    run, _ = record_run(served, project, browser, producer)
    open_replay(browser, served, run["id"])
    browser.find_element(By.CSS_SELECTOR, '#replay-speeds button[data-speed="100"]').click()
    browser.find_element(By.ID, "replay-play").click()
    wait(browser, lambda d: (moment(d)[1] or 0) > run["first_seq"], "the replay to advance")
    wait(browser, lambda d: moment(d) == ("ended", run["last_seq"]), "the end of the run")
    wait_text(browser, "#agent-status", "stopped")
    assert text(browser, "#replay-play") == "Play"
    points = int(browser.find_element(By.ID, "chart").get_attribute("data-points"))
    assert points >= RUN_BATCHES  # the run's progress, replayed onto the chart
    browser.find_element(By.CSS_SELECTOR, '#replay-speeds button[data-speed="1"]').click()
    browser.find_element(By.ID, "replay-play").click()  # at the end: again from the start
    wait(browser, lambda d: (moment(d)[1] or 0) < run["last_seq"], "playing from the start")
    assert moment(browser)[0] == "playing"
    wait(browser, lambda d: moment(d) == ("ended", run["last_seq"]), "the end again")


AFTER_COMPLETION = 5
"""Seconds of quiet lines `test_replay_cards_leave_by_the_replays_clock` records after
Spark's completion, one a second: longer than a finished card lingers (3 s)."""


def test_replay_cards_leave_by_the_replays_clock(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    """A finished agent's card stays while the replay is paused (however long), and
    leaves 3 s of the run's time after it finished once the replay plays."""
    agent = producer(served.port, "agent-1")
    agent.status("running")
    agent.lines(RUN[: FIRST_COMPLETION + 1])  # Spark completes features #1-#3 last
    agent.acked()
    for n in range(1, AFTER_COMPLETION + 1):
        time.sleep(1.0)
        agent.lines([f"quiet second {n}"])
    agent.acked()
    agent.status("stopped")
    agent.acked()
    run = api_json(served, "/api/projects/demo/runs")["runs"][0]
    assert run["ended"] == "stopped", run
    open_replay(browser, served, run["id"])
    browser.find_element(By.ID, "replay-search").send_keys("Features #1, #2, #3 completed\n")
    mark = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".mark.hit"), "a hit mark")
    sought = int(mark.get_attribute("data-seq"))
    mark.click()
    wait(browser, lambda d: moment(d) == ("paused", sought), "the completion")
    spark = '#agents .agent[data-name="Spark"]'

    def spark_state(driver: Any) -> str:
        found = driver.find_elements(By.CSS_SELECTOR, spark)
        return str(found[0].get_attribute("data-state")) if found else ""

    wait(browser, lambda d: spark_state(d) == "working", "Spark at work")
    play = browser.find_element(By.ID, "replay-play")
    play.click()  # at 1x, to Spark's completion (the update right after its line), then pause
    wait(browser, lambda d: spark_state(d) == "success", "Spark's completion")
    play.click()
    wait(browser, lambda d: moment(d)[0] == "paused", "the pause")
    time.sleep(4.0)  # paused: the run's clock stands still, and so does the card
    assert "Spark" in card_names(browser)
    assert "just finished" in text(browser, "#agent-count")
    play.click()

    def spark_gone(driver: Any) -> tuple[str, str] | None:
        if "Spark" in card_names(driver):
            return None
        return text(driver, "#log .line:last-child"), text(driver, "#agent-status")

    gone = wait(browser, spark_gone, "Spark's card to leave")
    assert gone is not None
    last_line, status = gone
    # It left about 3 s into the run after the completion: after the 2nd quiet second's
    # line, before the run stopped (which clears every card).
    assert status == "running"
    assert any(f"quiet second {n}" in last_line for n in (2, 3, 4)), last_line


def test_replay_jumps_to_the_next_error(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    run, _ = record_run(served, project, browser, producer, end="crashed")
    failed = seq_of(served, run["id"], "Features #4, #5 failed")
    open_replay(browser, served, run["id"])
    browser.find_element(By.ID, "replay-next-error").click()
    wait(browser, lambda d: "error: Fizz on Features #4, #5" in text(d, "#replay-note"), "Fizz's")
    wait(browser, lambda d: "Fizz" in card_names(d), "the failed agent's card")
    state = browser.find_element(By.CSS_SELECTOR, '#agents .agent[data-name="Fizz"]')
    assert state.get_attribute("data-state") == "error"
    first_error = moment(browser)[1]
    assert first_error is not None and first_error > failed  # the failed batch's update
    assert moment(browser)[0] == "paused"
    browser.find_element(By.ID, "replay-next-error").click()
    wait(browser, lambda d: "error: Hoot on Features #4, #5" in text(d, "#replay-note"), "Hoot's")
    assert (moment(browser)[1] or 0) > first_error
    browser.find_element(By.ID, "replay-next-error").click()
    wait(browser, lambda d: "the run crashed at" in text(d, "#replay-note"), "the crash")
    assert moment(browser)[1] == run["last_seq"]
    wait_text(browser, "#agent-status", "crashed")
    browser.find_element(By.ID, "replay-next-error").click()
    wait_text(browser, "#replay-note", "No error after this moment.")


def test_replay_search_marks_its_hits_on_the_timeline(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    run, _ = record_run(served, project, browser, producer)
    open_replay(browser, served, run["id"])
    search = browser.find_element(By.ID, "replay-search")
    search.send_keys("failed\n")
    wait(browser, lambda d: text(d, "#replay-note").endswith("hits for “failed”"), "the hits")
    marks = browser.find_elements(By.CSS_SELECTOR, "#timeline-marks .mark.hit")
    assert marks and all("failed" in (mark.get_attribute("title") or "") for mark in marks)
    search.clear()
    search.send_keys("no such line anywhere\n")
    wait_text(browser, "#replay-note", "0 hits for “no such line anywhere”")
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline-marks .mark.hit") == []


def test_replay_agent_filter_keeps_the_log_and_the_marks_to_one_agent(
    served: ServerProcess, project: Path, browser: Any, producer: ProducerFactory
) -> None:
    run, _ = record_run(served, project, browser, producer)
    open_replay(browser, served, run["id"])
    search = browser.find_element(By.ID, "replay-search")
    search.send_keys("Features #1, #2, #3 completed\n")  # a moment Fizz is busy at
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".mark.hit"), "a hit mark").click()
    wait(browser, lambda d: "Fizz" in card_names(d), "Fizz at work")
    assert len(log_tags(browser)) > 1
    browser.find_element(By.CSS_SELECTOR, '#replay-agent option[value="1"]').click()
    wait(browser, lambda d: log_tags(d) == {"Fizz"}, "only Fizz's lines")
    activity = wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline-marks .mark.activity"),
        "Fizz's activity on the timeline",
    )
    fizz = api_json(served, f"/api/projects/demo/runs/{run['id']}/events?agent=1&limit=1000")
    fizz_seqs = {event["seq"] for event in fizz["events"]}
    assert {int(mark.get_attribute("data-seq")) for mark in activity} <= fizz_seqs
    everything = api_json(served, f"/api/projects/demo/runs/{run['id']}/events?limit=1000")
    assert len(fizz_seqs) < len(everything["events"])
    search.clear()
    search.send_keys("Feature #\n")
    wait(browser, lambda d: "hits for" in text(d, "#replay-note"), "the hits")
    titles = [
        mark.get_attribute("title")
        for mark in browser.find_elements(By.CSS_SELECTOR, "#timeline-marks .mark.hit")
    ]
    assert titles and all("Feature #4" in title or "Feature #5" in title for title in titles)
    # The feature filter: Buzz's feature #6 alone.
    browser.find_element(By.CSS_SELECTOR, '#replay-agent option[value=""]').click()
    browser.find_element(By.ID, "replay-feature").send_keys("6\n")
    six = api_json(served, f"/api/projects/demo/runs/{run['id']}/events?feature=6&limit=1000")
    six_seqs = {event["seq"] for event in six["events"]}
    assert six_seqs and not six_seqs & fizz_seqs

    def feature_marks(driver: Any) -> set[int]:
        marks = driver.find_elements(By.CSS_SELECTOR, "#timeline-marks .mark.activity")
        return {int(mark.get_attribute("data-seq")) for mark in marks}

    wait(browser, lambda d: feature_marks(d) and feature_marks(d) <= six_seqs, "#6's marks")


def test_the_replay_of_an_unknown_run_says_so(served: ServerProcess, browser: Any) -> None:
    browser.get(f"{served.base}/projects/demo/runs/nope-1")
    wait(browser, lambda d: moment(d)[0] == "error", "the replay to fail")
    assert text(browser, "#replay-note").startswith("Cannot replay run nope-1: HTTP 404")


def test_a_replay_of_the_run_still_going_keeps_up_with_it(
    served: ServerProcess, browser: Any, producer: ProducerFactory
) -> None:
    open_live(browser, served)
    agent = producer(served.port, "agent-1")
    agent.status("running")
    agent.lines(RUN[:40])
    agent.acked()
    run = api_json(served, "/api/projects/demo/runs")["runs"][0]
    assert run["ended"] is None
    open_replay(browser, served, run["id"])
    assert browser.find_element(By.ID, "replay-live").get_attribute("href") == (
        f"{served.base}/projects/demo"
    )
    browser.find_element(By.CSS_SELECTOR, '#replay-speeds button[data-speed="100"]').click()
    browser.find_element(By.ID, "replay-play").click()
    wait(browser, lambda d: moment(d) == ("caught-up", run["last_seq"]), "caught up")
    agent.lines(RUN[40:50])
    agent.acked()
    head = api_json(served, f"/api/projects/demo/runs/{run['id']}")["last_seq"]
    assert head == run["last_seq"] + 10
    wait(browser, lambda d: moment(d) == ("caught-up", head), "the newer events replayed")
    assert RUN[49] in text(browser, "#log .line:last-child")
