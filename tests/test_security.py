"""Redaction (LINES.md 1, step 5): secrets go, their names and the rest of the line stay."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ws.security import REDACTED, redact

DATA = Path(__file__).parent / "data"

# (input, the secret, expected output): one case per pattern of LINES.md 1.5.
PATTERN_CASES = [
    pytest.param(
        "key is sk-ant-api03-AbCdEfGhIjKlMnOpQrSt_-xyz, ok",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt_-xyz",
        "key is [REDACTED], ok",
        id="sk-",
    ),
    pytest.param(
        "export ANTHROPIC_API_KEY=abc123plainvalue && run",
        "abc123plainvalue",
        "export ANTHROPIC_API_KEY=[REDACTED] && run",
        id="ANTHROPIC_API_KEY",
    ),
    pytest.param(
        "config api-key: 12345abcde done",
        "12345abcde",
        "config api-key: [REDACTED] done",
        id="api-key",
    ),
    pytest.param(
        "GITHUB_TOKEN = abcdef0123 then",
        "abcdef0123",
        "GITHUB_TOKEN = [REDACTED] then",
        id="token",
    ),
    pytest.param(
        "login password=hunter2 user=bob",
        "hunter2",
        "login password=[REDACTED] user=bob",
        id="password",
    ),
    pytest.param(
        "client_secret: s3cr3t!! end",
        "s3cr3t!!",
        "client_secret: [REDACTED] end",
        id="secret",
    ),
    pytest.param(
        "push with ghp_" + "a1B2c3D4e5" * 4 + " now",
        "ghp_" + "a1B2c3D4e5" * 4,
        "push with [REDACTED] now",
        id="ghp_",
    ),
    pytest.param(
        "gho_" + "Z9" * 18 + " is the oauth token",
        "gho_" + "Z9" * 18,
        "[REDACTED] is the oauth token",
        id="gho_",
    ),
    pytest.param(
        "using github_pat_11ABCDEFG0123456789_abcdefghij here",
        "github_pat_11ABCDEFG0123456789_abcdefghij",
        "using [REDACTED] here",
        id="github_pat_",
    ),
    pytest.param(
        "Authorization: Bearer abc.def-ghi_jkl~mno+p/q= trailing",
        "abc.def-ghi_jkl~mno+p/q=",
        "Authorization: Bearer [REDACTED] trailing",
        id="Bearer",
    ),
    pytest.param(
        "key AKIAIOSFODNN7EXAMPLE in log",
        "AKIAIOSFODNN7EXAMPLE",
        "key [REDACTED] in log",
        id="AKIA",
    ),
    pytest.param(
        "AWS_ACCESS_KEY_ID=ZZZZEXAMPLE0123 next",
        "ZZZZEXAMPLE0123",
        "AWS_ACCESS_KEY_ID=[REDACTED] next",
        id="AWS_ACCESS_KEY_ID",
    ),
    pytest.param(
        "AWS_SESSION_TOKEN=FwoGZXIvYXdzEJr//////////wEaDOK end",
        "FwoGZXIvYXdzEJr//////////wEaDOK",
        "AWS_SESSION_TOKEN=[REDACTED] end",
        id="AWS_SESSION_TOKEN",
    ),
    pytest.param(
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = [REDACTED]",
        id="aws_secret_access_key",
    ),
    pytest.param(
        "aws-access-key-id: ABCDEFGHIJ0123456789 (profile dev)",
        "ABCDEFGHIJ0123456789",
        "aws-access-key-id: [REDACTED] (profile dev)",
        id="aws-access-key",
    ),
    pytest.param(
        "slack xoxb-1234567890-abcdefghij done",
        "xoxb-1234567890-abcdefghij",
        "slack [REDACTED] done",
        id="xox",
    ),
    pytest.param(
        "DATABASE_URL=postgres://app:hunter2@db.local:5432/app",
        "hunter2",
        "DATABASE_URL=postgres://app:[REDACTED]@db.local:5432/app",
        id="url-password",
    ),
]


@pytest.mark.parametrize(("text", "secret", "expected"), PATTERN_CASES)
def test_each_pattern_hides_the_secret_and_keeps_the_context(
    text: str, secret: str, expected: str
) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert redacted == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ", "[REDACTED]"),
        ("anthropic_api_key=xyz", "anthropic_api_key=[REDACTED]"),
        ("API_KEY=xyz", "API_KEY=[REDACTED]"),
        ("PASSWORD: xyz", "PASSWORD: [REDACTED]"),
        ("bearer xyz", "bearer [REDACTED]"),
        ("akiaiosfodnn7example", "[REDACTED]"),
        ("GHP_" + "a" * 36, "[REDACTED]"),
        ("XOXP-1234567890", "[REDACTED]"),
        ("aws_secret_access_key=xyz", "aws_secret_access_key=[REDACTED]"),
    ],
)
def test_patterns_are_case_insensitive(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://alice:pw@example.com/x", "https://alice:[REDACTED]@example.com/x"),
        ("redis://:pw@localhost:6379/0", "redis://:[REDACTED]@localhost:6379/0"),
        # An unescaped '@' or ':' in the password does not leave a tail behind.
        ("ftp://bob:p@ss:w0rd@files.example.org", "ftp://bob:[REDACTED]@files.example.org"),
    ],
)
def test_url_password_keeps_scheme_user_and_host(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://localhost:5173/@vite/client",
        "https://example.com:8443/path?q=1",
        "git@github.com:org/repo.git",
        "  ➜  Local:   http://localhost:5173/",
    ],
)
def test_urls_without_credentials_are_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_secret_inside_another_patterns_match_is_still_hidden() -> None:
    # The Bearer value swallows "secret", whose own value must not survive.
    assert redact("Bearer secret:xyz") == "Bearer [REDACTED]:[REDACTED]"


def test_aws_value_after_a_long_name_is_hidden() -> None:
    text = "aws_secret" + "_x" * 100 + "=the-value"
    assert redact(text) == "aws_secret" + "_x" * 100 + "=[REDACTED]"


def test_aws_value_after_the_last_separator_is_hidden() -> None:
    # The spec pattern's greedy name ends at the last separator; nothing after
    # the first one may survive.
    assert redact("aws_secret=a: hunter2") == "aws_secret=[REDACTED]"


def test_every_secret_in_the_edge_cases_is_gone() -> None:
    text = redact((DATA / "edge-cases.txt").read_text(encoding="utf-8"))
    for secret in (
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJzdWIiOiIxIn0",
        "hunter2",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ):
        assert secret not in text
    assert text.count(REDACTED) == 5


def test_edge_case_secret_lines_keep_their_names_and_hosts() -> None:
    lines = [redact(line) for line in (DATA / "edge-cases.txt").read_text().splitlines()]
    assert lines[2:7] == [
        "[Feature #7] export ANTHROPIC_API_KEY=[REDACTED]",
        '[Feature #7] curl -H "Authorization: Bearer [REDACTED]" http://localhost:3000',
        "[Feature #7] DATABASE_URL=postgres://app:[REDACTED]@db.local:5432/app",
        "[Feature #7] password: [REDACTED]",
        "[Feature #7] AWS_SECRET_ACCESS_KEY=[REDACTED]",
    ]


def test_ordinary_lines_are_unchanged() -> None:
    text = (DATA / "autoforge-run.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        assert redact(line) == line


def test_empty_text_is_unchanged() -> None:
    assert redact("") == ""


ADVERSARIAL = {
    "aws prefixes without separator": "aws_secret" * 1640,
    "aws prefixes then separator": "aws_access_key" * 1170 + "=",
    "sk prefixes": "sk-" * 5460,
    "short sk keys": ("sk-" + "a" * 19 + " ") * 712,
    "token and spaces": "token" + " " * 16_380,
    "token separator and spaces": "token=" + " " * 16_380,
    "long scheme-like word": "a" * 16_384,
    "url without @": "a://b:" + "c" * 16_378,
    "many url starts": "a://b:c" * 2340,
    "separators": "password:" * 1820,
    "bearer words": "Bearer " * 2340,
    "redacted tokens": REDACTED * 1638,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_long_adversarial_lines_are_redacted_quickly(text: str) -> None:
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 1.0


def test_redaction_is_linear_on_failing_aws_prefixes() -> None:
    # A naive finditer is quadratic here: minutes at 1 MiB.
    start = time.perf_counter()
    assert redact("aws_secret" * 100_000) == "aws_secret" * 100_000
    assert time.perf_counter() - start < 2.0


FRAGMENTS = [
    "sk-",
    "ant-",
    "A" * 20,
    "token",
    "password",
    "secret",
    "api_key",
    "ANTHROPIC_API_KEY",
    "AWS_SESSION_TOKEN",
    "aws_",
    "access_key",
    "=",
    ":",
    " ",
    "\t",
    "Bearer ",
    "ghp_",
    "x" * 36,
    "github_pat_",
    "AKIA",
    "ABCDEFGHIJKLMNOP",
    "xoxb-",
    "://",
    "@",
    "u",
    "/",
    REDACTED,
    "[",
    "]",
]
secretish_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=25
).map("".join)

# The spec's patterns, written out independently of the implementation: the
# whole match is a secret, or (for named ones) the ``value`` group is.
WHOLE_SECRETS = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"sk-[A-Za-z0-9_-]{20,}",
        r"gh[pousr]_[A-Za-z0-9]{36,}",
        r"github_pat_[A-Za-z0-9_]{20,}",
        r"Bearer\s+[A-Za-z0-9._~+/=-]+",
        r"AKIA[0-9A-Z]{16}",
        r"xox[abprs]-[A-Za-z0-9-]{10,}",
    )
]
NAMED_SECRETS = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"ANTHROPIC_API_KEY=(?P<value>\S+)",
        r"api[_-]?key\s*[=:]\s*(?P<value>\S+)",
        r"token\s*[=:]\s*(?P<value>\S+)",
        r"password\s*[=:]\s*(?P<value>\S+)",
        r"secret\s*[=:]\s*(?P<value>\S+)",
        r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)\s*=\s*(?P<value>\S+)",
        r"aws[_-]?(access[_-]?key|secret)\S*\s*[=:]\s*(?P<value>\S+)",
        r"://[^\s:/@]*:(?P<value>[^\s/@]+)@",
    )
]


def leaked_secrets(text: str) -> list[str]:
    """What the spec patterns still find in ``text`` other than ``[REDACTED]``.

    A named value may be a prefix of ``[REDACTED]``: a consumer that shortens
    a redacted line (a thought is ``content[:100]``) may cut the marker.
    """
    leaks = [m[0] for pattern in WHOLE_SECRETS for m in pattern.finditer(text)]
    leaks += [
        m["value"]
        for pattern in NAMED_SECRETS
        for m in pattern.finditer(text)
        if not REDACTED.startswith(m["value"])
    ]
    return leaks


@settings(max_examples=400)
@given(secretish_text)
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@settings(max_examples=400)
@given(secretish_text)
def test_no_spec_pattern_finds_a_secret_after_redaction(text: str) -> None:
    assert leaked_secrets(redact(text)) == []


@given(st.text(max_size=200))
def test_arbitrary_text_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
