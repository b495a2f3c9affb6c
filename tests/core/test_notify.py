"""Notify targets, presets, bodies, signatures and outcomes (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from trio_ws.core.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    alert_text,
    command_target,
    http_outcome,
    signature,
    verify_signature,
    webhook_request,
    webhook_target,
)

ALERT = {
    "type": "alert",
    "id": "run_crashed:run:7",
    "kind": "run_crashed",
    "severity": "error",
    "state": "raised",
    "project": "demo",
    "agent": None,
    "feature": None,
    "message": "the run crashed (exit code 3)",
    "timestamp": "2026-12-05T21:00:00.000000Z",
    "seq": 8,
}
TEXT = json.dumps(ALERT, separators=(",", ":"))


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://hooks.slack.com/services/T0/B0/XYZ", "slack"),
        ("https://discord.com/api/webhooks/1/abc", "discord"),
        ("https://discordapp.com/api/webhooks/1/abc", "discord"),
        ("https://discord.com/channels/1", "json"),  # not a webhook: as is
        ("https://ntfy.sh/my-alerts", "ntfy"),
        ("ntfy+https://ntfy.example.org/topic", "ntfy"),
        ("NTFY+http://127.0.0.1:8080/topic", "ntfy"),
        ("https://example.org/hooks/trio", "json"),
        ("http://127.0.0.1:9000/", "json"),
    ],
)
def test_the_url_tells_the_preset(url: str, kind: str) -> None:
    assert webhook_target(url).kind == kind


def test_a_ntfy_mark_is_not_part_of_the_url_posted_to() -> None:
    target = webhook_target("ntfy+https://ntfy.example.org/topic")
    assert target.address == "https://ntfy.example.org/topic"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.org/x", "http:// or https://"),
        ("https:///path", "with a host"),
        ("example.org/hook", "http:// or https://"),
        ("https://example.org:port/x", "not a URL"),
        ("https://ntfy.sh/", "names its topic"),
        ("https://example.org/" + "x" * 3000, "at most 2048"),
    ],
)
def test_a_bad_url_is_refused_saying_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        webhook_target(url)
    assert str(caught.value).startswith("--notify:")


def test_the_label_keeps_no_path_query_or_token_and_keys_differ() -> None:
    slack = webhook_target("https://hooks.slack.com/services/T0/B0/SECRET?x=TOKEN")
    other = webhook_target("https://hooks.slack.com/services/T0/B0/OTHER")
    assert "SECRET" not in slack.label and "TOKEN" not in slack.label
    assert "SECRET" not in repr(slack)
    assert slack.label.startswith("slack webhook https://hooks.slack.com/")
    assert slack.key.startswith("notify:") and slack.key != other.key
    assert slack.key == webhook_target("https://hooks.slack.com/services/T0/B0/SECRET?x=TOKEN").key


def test_a_command_is_split_like_a_shell_and_labelled_by_its_program() -> None:
    target = command_target("/usr/bin/notify-send --urgency 'very low' --token=abc")
    assert target.argv == ("/usr/bin/notify-send", "--urgency", "very low", "--token=abc")
    assert target.label.startswith("command notify-send (notify:")
    assert "abc" not in target.label
    assert target.key != webhook_target("https://example.org/").key


@pytest.mark.parametrize(("command", "says"), [("", "a command to run"), ("say 'x", "quotation")])
def test_a_bad_command_is_refused(command: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        command_target(command)


def test_a_plain_target_gets_the_event_json_as_is() -> None:
    request = webhook_request(
        webhook_target("https://example.org/in"), TEXT, delivery="demo:e:8", now=1.0
    )
    assert request.body == TEXT.encode()
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[DELIVERY_HEADER] == "demo:e:8"
    assert SIGNATURE_HEADER not in request.headers


def test_slack_and_discord_get_the_message_in_their_field() -> None:
    slack = webhook_request(
        webhook_target("https://hooks.slack.com/services/A/B/C"), TEXT, delivery="d", now=1
    )
    discord = webhook_request(
        webhook_target("https://discord.com/api/webhooks/1/x"), TEXT, delivery="d", now=1
    )
    assert json.loads(slack.body) == {"text": "[demo] error: the run crashed (exit code 3)"}
    assert json.loads(discord.body) == {"content": "[demo] error: the run crashed (exit code 3)"}


def test_ntfy_gets_the_text_and_its_title_priority_and_tags() -> None:
    target = webhook_target("https://ntfy.sh/alerts")
    raised = webhook_request(target, TEXT, delivery="d", now=1)
    resolved = webhook_request(
        target, json.dumps({**ALERT, "state": "resolved"}), delivery="d", now=1
    )
    warning = webhook_request(
        target, json.dumps({**ALERT, "severity": "warning"}), delivery="d", now=1
    )
    assert raised.body == b"[demo] error: the run crashed (exit code 3)"
    assert (raised.headers["Title"], raised.headers["Priority"], raised.headers["Tags"]) == (
        "trio-ws demo: run_crashed",
        "high",
        "rotating_light",
    )
    assert resolved.body == b"[demo] resolved: the run crashed (exit code 3)"
    assert (resolved.headers["Priority"], resolved.headers["Tags"]) == ("low", "white_check_mark")
    assert (warning.headers["Priority"], warning.headers["Tags"]) == ("default", "warning")


def test_a_header_never_carries_a_line_break_or_non_ascii() -> None:
    target = webhook_target("https://ntfy.sh/alerts")
    request = webhook_request(
        target, json.dumps({**ALERT, "kind": "x\r\nInjected: 1é"}), delivery="a\nb", now=1
    )
    for value in request.headers.values():
        assert value.isascii() and "\n" not in value and "\r" not in value


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    request = webhook_request(
        webhook_target("https://example.org/in"),
        TEXT,
        delivery="d",
        now=1_765_000_000.7,
        secret="s3cret",
    )
    assert request.headers[TIMESTAMP_HEADER] == "1765000000"
    expected = hmac.new(b"s3cret", b"1765000000." + TEXT.encode(), hashlib.sha256).hexdigest()
    assert request.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert "s3cret" not in "".join(request.headers.values())


def test_a_receiver_refuses_a_changed_body_another_key_and_a_replay() -> None:
    body, now = TEXT.encode(), 1_765_000_000.0
    header = signature("k", "1765000000", body)
    assert verify_signature("k", "1765000000", body, header, now=now + 299)
    assert not verify_signature("k", "1765000000", body + b"x", header, now=now)
    assert not verify_signature("k2", "1765000000", body, header, now=now)
    assert not verify_signature("k", "1765000001", body, header, now=now)  # time is signed
    assert not verify_signature("k", "1765000000", body, header, now=now + 301)  # a replay
    assert not verify_signature("k", "soon", body, header, now=now)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (410, "permanent"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
    ],
)
def test_what_a_status_means(status: int, kind: str) -> None:
    outcome = http_outcome(status)
    assert outcome.kind == kind and outcome.detail == f"HTTP {status}"


@pytest.mark.parametrize(
    ("header", "after"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("100000", 300.0),  # bounded
        ("Wed, 21 Oct 2026 07:28:00 GMT", 0.0),  # a date: the backoff stands
        ("-1", 0.0),
        ("nan", 0.0),
        (None, 0.0),
    ],
)
def test_a_retry_after_header_sets_the_least_wait(header: str | None, after: float) -> None:
    outcome = http_outcome(429, header)
    assert (outcome.kind, outcome.after) == ("retry", after)
    assert outcome.detail == (f"HTTP 429, Retry-After {after:g} s" if after else "HTTP 429")


def test_a_redirect_is_refused_for_good_saying_it_is_not_followed() -> None:
    outcome = http_outcome(301)
    assert (outcome.kind, outcome.detail) == ("permanent", "HTTP 301: redirects are not followed")


def test_alert_text_says_project_severity_or_resolved_and_message() -> None:
    assert alert_text(ALERT) == "[demo] error: the run crashed (exit code 3)"
    assert alert_text({**ALERT, "state": "resolved"}).startswith("[demo] resolved: ")
