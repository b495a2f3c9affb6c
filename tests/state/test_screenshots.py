"""The screenshot store of a hub: the latest per session, who gets them, what drops them.

Without sockets: the hub's producer side is fed directly, and what a subscriber
was handed is read off its queue (nothing drains it here)."""

from __future__ import annotations

import base64
import json
from typing import Any

from trio_ws.core.messages import ScreenshotMessage
from trio_ws.state.hub import ProjectHub
from trio_ws.state.screenshots import MAX_QUEUED
from trio_ws.state.subscriber import LIVE, Subscriber

PNG = "\x89PNG\r\n\x1a\n"


def shot(session: str, feature_id: int | None, image: bytes = b"one") -> ScreenshotMessage:
    data = base64.b64encode(PNG.encode("latin-1") + image).decode()
    return {
        "type": "screenshot",
        "sessionName": session,
        "featureId": feature_id,
        "imageData": data,
        "timestamp": "2026-12-05T18:00:00",
    }


def screenshots_of(subscriber: Subscriber) -> list[dict[str, Any]]:
    decoded = [json.loads(item.text) for item in subscriber.queue]
    return [m for m in decoded if m["type"] == "browser_screenshot"]


def running_hub(queue_size: int = 64) -> ProjectHub:
    """A hub with coding agent 0 on #5 and testing agent 1 on #5 and #6."""
    hub = ProjectHub("demo", queue_size=queue_size)
    hub.set_status("running")
    hub.feed_lines(
        [
            "Started coding agent for feature #5",
            "Started testing agent for features [5,6] (PID 9)",
        ]
    )
    return hub


def test_only_the_latest_screenshot_of_a_session_is_kept() -> None:
    hub = running_hub()
    assert hub.publish_screenshot(shot("coding-5", 5, b"first"))
    assert hub.publish_screenshot(shot("coding-5", 5, b"second"))
    assert hub.publish_screenshot(shot("testing-0", 6))
    assert hub.screenshots.sessions() == ["coding-5", "testing-0"]
    watcher = hub.subscribe()
    hub.watch_screenshots(watcher, True)
    latest = {m["sessionName"]: m for m in screenshots_of(watcher)}
    assert base64.b64decode(latest["coding-5"]["imageData"]).endswith(b"second")
    assert len(screenshots_of(watcher)) == 2


def test_a_screenshot_is_named_after_its_agent_and_is_no_event() -> None:
    hub = running_hub()
    watcher = hub.subscribe()
    hub.watch_screenshots(watcher, True)
    head = hub.seq
    hub.publish_screenshot(shot("coding-5", 5))
    hub.publish_screenshot(shot("testing-0", 5))
    coding, testing = screenshots_of(watcher)
    assert {k: coding[k] for k in ("agentIndex", "agentType", "featureName")} == {
        "agentIndex": 0,
        "agentType": "coding",
        "featureName": "Feature #5",
    }
    assert (testing["agentIndex"], testing["agentType"]) == (1, "testing")
    assert "seq" not in coding and hub.seq == head  # numbered nothing, staged nothing


def test_a_screenshot_of_no_active_agent_is_dropped() -> None:
    hub = running_hub()
    assert not hub.publish_screenshot(shot("coding-9", 9))
    assert not hub.publish_screenshot(shot("agent-demo-1", None))
    assert len(hub.screenshots) == 0


def test_every_screenshot_is_dropped_when_the_run_stops_or_crashes() -> None:
    for status in ("stopped", "crashed"):
        hub = running_hub()
        hub.publish_screenshot(shot("coding-5", 5))
        hub.publish_screenshot(shot("testing-0", 6))
        hub.set_status(status)
        assert len(hub.screenshots) == 0


def test_an_agents_screenshot_is_dropped_when_its_feature_completes() -> None:
    hub = running_hub()
    hub.publish_screenshot(shot("coding-5", 5))
    hub.publish_screenshot(shot("testing-0", 6))
    hub.feed_lines(["Feature #5 completed"])
    assert hub.screenshots.sessions() == ["testing-0"]
    # A capture that raced the completion does not bring the picture back.
    assert not hub.publish_screenshot(shot("coding-5", 5))
    assert hub.screenshots.sessions() == ["testing-0"]


def test_only_subscribers_that_asked_are_handed_screenshots() -> None:
    hub = running_hub()
    watcher, other = hub.subscribe(), hub.subscribe()
    assert hub.watch_screenshots(watcher, True)
    hub.publish_screenshot(shot("coding-5", 5))
    assert len(screenshots_of(watcher)) == 1
    assert screenshots_of(other) == []
    assert hub.watch_screenshots(watcher, False)
    hub.publish_screenshot(shot("coding-5", 5))
    assert len(screenshots_of(watcher)) == 1


def test_the_watchers_count_is_told_only_on_zero_to_one_and_one_to_zero() -> None:
    hub = running_hub()
    first, second = hub.subscribe(), hub.subscribe()
    assert hub.watch_screenshots(first, True)
    assert not hub.watch_screenshots(first, True)  # asked twice: one watcher
    assert not hub.watch_screenshots(second, True)
    assert not hub.watch_screenshots(first, False)
    hub.unsubscribe(second)  # leaving counts as unsubscribe
    assert not hub.screenshots.watching
    assert not hub.watch_screenshots(second, True)  # gone: cannot watch


def test_a_full_queue_misses_a_screenshot_without_falling_behind() -> None:
    hub = running_hub(queue_size=2)
    watcher = hub.subscribe()
    watcher.state = LIVE  # as if its initial messages were written
    hub.watch_screenshots(watcher, True)
    hub.publish_screenshot(shot("coding-5", 5))
    hub.publish_screenshot(shot("testing-0", 6))
    hub.publish_screenshot(shot("testing-0", 6))
    assert len(watcher.queue) == 2
    assert watcher.state is LIVE
    assert (hub.screenshots.relayed, hub.screenshots.dropped) == (2, 1)


def test_a_slow_reader_holds_at_most_a_few_screenshots_whatever_its_queue() -> None:
    """Its queue bounds messages, not bytes: a megabyte picture each would be gigabytes."""
    hub = running_hub(queue_size=1024)
    watcher = hub.subscribe()
    hub.watch_screenshots(watcher, True)
    for _ in range(MAX_QUEUED + 5):
        hub.publish_screenshot(shot("coding-5", 5))
    assert len(screenshots_of(watcher)) == MAX_QUEUED
    assert hub.screenshots.dropped == 5
