"""The protocol's errors carry the codes and words of PROTOCOL.md 2, 3.4 and 4.2."""

from __future__ import annotations

import pytest

from trio_ws.core.errors import (
    DO_NOT_RETRY,
    BadClientMessage,
    ExpectedHello,
    InvalidProjectName,
    JournalUnavailable,
    MessageTooBig,
    ProjectDirectoryNotFound,
    ProjectNotFound,
    ProtocolError,
    Refusal,
    ServerBusy,
    StreamTaken,
    TooManyMessages,
    Unauthorized,
)
from trio_ws.core.protocol import encode


@pytest.mark.parametrize(
    ("refusal", "code", "text"),
    [
        (InvalidProjectName, 4000, '{"type":"error","content":"Invalid project name"}'),
        (Unauthorized, 4001, '{"type":"error","content":"Unauthorized"}'),
        (ProjectNotFound, 4004, '{"type":"error","content":"Project not found in registry"}'),
        (
            ProjectDirectoryNotFound,
            4004,
            '{"type":"error","content":"Project directory not found"}',
        ),
        (StreamTaken, 4009, '{"type":"error","content":"stream already has a producer"}'),
    ],
)
def test_a_refusal_closes_with_its_code_after_the_error_the_spec_names(
    refusal: type[Refusal], code: int, text: str
) -> None:
    error = refusal()
    assert (error.code, encode(error.message())) == (code, text)
    assert error.code in DO_NOT_RETRY
    assert str(error) == error.content


@pytest.mark.parametrize(("limit", "code"), [(MessageTooBig, 1009), (TooManyMessages, 1008)])
def test_a_limit_closes_with_a_code_a_client_may_retry_after(
    limit: type[ProtocolError], code: int
) -> None:
    assert limit.code == code
    assert code not in DO_NOT_RETRY


def test_a_bad_client_message_is_answered_with_a_protocol_warning_and_no_close() -> None:
    error = BadClientMessage("message is not valid JSON")
    assert error.code is None
    assert encode(error.warning()) == (
        '{"type":"warning","source":"protocol","content":"message is not valid JSON"}'
    )


def test_a_producer_without_hello_is_told_what_to_send_and_closed_by_policy() -> None:
    error = ExpectedHello()
    assert (error.code, error.reason) == (1008, "expected hello")
    assert error.code not in DO_NOT_RETRY
    assert encode(error.message()) == (
        '{"type":"error","content":"first message must be'
        ' {\\"type\\":\\"hello\\",\\"producer\\":..,\\"stream\\":..}"}'
    )


@pytest.mark.parametrize(
    ("refusal", "code", "content"),
    [
        (JournalUnavailable(), 1011, "project journal unavailable"),
        (ServerBusy("too many projects open (64)"), 1013, "too many projects open (64)"),
    ],
)
def test_a_refusal_to_retry_later_closes_with_a_code_that_allows_it(
    refusal: Refusal, code: int, content: str
) -> None:
    assert (refusal.code, refusal.close_reason) == (code, content)
    assert refusal.code not in DO_NOT_RETRY
    assert refusal.message() == {"type": "error", "content": content}
