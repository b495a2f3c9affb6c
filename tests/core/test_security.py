"""`trio_ws.core.security`: redaction (LINES.md 1, step 5: secrets go, their names and
the rest of the line stay) and the access rules (PROTOCOL.md 2, 6: Origin, loopback,
tokens), pure functions, so every rule is a row in a table; the token file tests use a
real home directory under tmp_path."""

from __future__ import annotations

import os
import re
import stat
import time
import unittest.mock
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ws.core.security import (
    REDACTED,
    TOKEN_ENV,
    TOKEN_FILE,
    TokenError,
    control_origin_allowed,
    host_refusal,
    is_loopback_host,
    load_token,
    origin_allowed,
    redact,
    redact_line,
    token_matches,
)

DATA = Path(__file__).parent.parent / "corpus"

# (input, the secret, expected output): one case per shape of LINES.md 1.4.
GHP = "ghp_" + "a1B2c3D4e5" * 4
PATTERN_CASES = [
    pytest.param(
        "key is sk-ant-api03-AbCdEfGhIjKlMnOpQrSt_-xyz, ok",
        "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt_-xyz",
        "key is [REDACTED], ok",
        id="sk-",
    ),
    pytest.param(
        "stripe sk_live_51HqLyjWDarjtT1zdp7dc then",
        "sk_live_51HqLyjWDarjtT1zdp7dc",
        "stripe [REDACTED] then",
        id="sk_live_",
    ),
    pytest.param(
        "restricted rk_live_51HqLyjWDarjtT1zdp7dc.",
        "rk_live_51HqLyjWDarjtT1zdp7dc",
        "restricted [REDACTED].",
        id="rk_live_",
    ),
    pytest.param(
        "maps key AIzaSyA-1234567890abcdefghijklmnopqrstu here",
        "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        "maps key [REDACTED] here",
        id="AIza",
    ),
    pytest.param(
        "git remote glpat-xYz12_34-AbCdEfGhIjKl used",
        "glpat-xYz12_34-AbCdEfGhIjKl",
        "git remote [REDACTED] used",
        id="glpat-",
    ),
    pytest.param("push with " + GHP + " now", GHP, "push with [REDACTED] now", id="ghp_"),
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
        "//registry/:_authToken npm_" + "a1B2c3" * 6 + " x",
        "npm_" + "a1B2c3" * 6,
        "//registry/:_authToken [REDACTED] x",
        id="npm_",
    ),
    pytest.param(
        "hub hf_" + "AbCdEfGhIj" * 3 + " ok",
        "hf_" + "AbCdEfGhIj" * 3,
        "hub [REDACTED] ok",
        id="hf_",
    ),
    pytest.param(
        "slack xoxb-1234567890-abcdefghij done",
        "xoxb-1234567890-abcdefghij",
        "slack [REDACTED] done",
        id="xox",
    ),
    pytest.param(
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "[REDACTED]",
        id="PEM-body-line-alone",
    ),
    pytest.param(
        "key AKIAIOSFODNN7EXAMPLE in log",
        "AKIAIOSFODNN7EXAMPLE",
        "key [REDACTED] in log",
        id="AKIA",
    ),
    pytest.param(
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk ok",
        "eyJzdWIiOiIxIn0",
        "jwt [REDACTED] ok",
        id="JWT",
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
    pytest.param("apikey=k3y!", "k3y!", "apikey=[REDACTED]", id="apikey"),
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
    pytest.param("DB_PASSWD=Pa55wd", "Pa55wd", "DB_PASSWD=[REDACTED]", id="passwd"),
    pytest.param("MYSQL_PWD=Pa55wd", "Pa55wd", "MYSQL_PWD=[REDACTED]", id="pwd"),
    pytest.param(
        "client_secret: s3cr3t!! end",
        "s3cr3t!!",
        "client_secret: [REDACTED] end",
        id="client_secret",
    ),
    pytest.param(
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "AWS_SECRET_ACCESS_KEY=[REDACTED]",
        id="AWS_SECRET_ACCESS_KEY",
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
        "aws-access-key-id: ABCDEFGHIJ0123456789 (profile dev)",
        "ABCDEFGHIJ0123456789",
        "aws-access-key-id: [REDACTED] (profile dev)",
        id="aws-access-key-id",
    ),
    pytest.param(
        "ssh private_key: abcDEF123",
        "abcDEF123",
        "ssh private_key: [REDACTED]",
        id="private_key",
    ),
    pytest.param(
        "GOOGLE_CREDENTIALS=base64blob==",
        "base64blob==",
        "GOOGLE_CREDENTIALS=[REDACTED]",
        id="credentials",
    ),
    pytest.param(
        '{"password": "JsonPass123", "user": "bob"}',
        "JsonPass123",
        '{"password": "[REDACTED]", "user": "bob"}',
        id="json",
    ),
    pytest.param(
        '{"api_key":"with \\"quote\\" inside"}',
        "quote",
        '{"api_key":"[REDACTED]"}',
        id="json-escaped-quote",
    ),
    pytest.param(
        "Input: {'api_key': 'PyDictKey456', 'n': 1}",
        "PyDictKey456",
        "Input: {'api_key': '[REDACTED]', 'n': 1}",
        id="python-dict",
    ),
    pytest.param(
        "mysql --password Flag5ecret -h db",
        "Flag5ecret",
        "mysql --password [REDACTED] -h db",
        id="flag-space",
    ),
    pytest.param(
        "gh auth --with-token=Flag5ecret",
        "Flag5ecret",
        "gh auth --with-token=[REDACTED]",
        id="flag-equals",
    ),
    pytest.param(
        'PASSWORD="two words" next',
        "two words",
        'PASSWORD="[REDACTED]" next',
        id="quoted-value",
    ),
    pytest.param(
        "Authorization: Bearer abc.def-ghi_jkl~mno+p/q= trailing",
        "abc.def-ghi_jkl~mno+p/q=",
        "Authorization: Bearer [REDACTED] trailing",
        id="Authorization-Bearer",
    ),
    pytest.param(
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "dXNlcjpwYXNzd29yZA==",
        "Authorization: Basic [REDACTED]",
        id="Authorization-Basic",
    ),
    pytest.param(
        "Authorization: Token 0123abcd",
        "0123abcd",
        "Authorization: Token [REDACTED]",
        id="Authorization-Token",
    ),
    pytest.param(
        "{'Authorization': 'ApiKeyOnly99'}",
        "ApiKeyOnly99",
        "{'Authorization': '[REDACTED]'}",
        id="Authorization-no-scheme",
    ),
    pytest.param(
        "sent Bearer xyz789 upstream",
        "xyz789",
        "sent Bearer [REDACTED] upstream",
        id="bare-Bearer",
    ),
    pytest.param(
        "DATABASE_URL=postgres://app:hunter2@db.local:5432/app",
        "hunter2",
        "DATABASE_URL=postgres://app:[REDACTED]@db.local:5432/app",
        id="url-password",
    ),
    pytest.param(
        "key -----BEGIN PRIVATE KEY-----MIIEvQIBADANBg-----END PRIVATE KEY----- ok",
        "MIIEvQIBADANBg",
        "key -----BEGIN PRIVATE KEY-----[REDACTED]-----END PRIVATE KEY----- ok",
        id="pem-one-line",
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


def test_a_value_runs_to_its_delimiter_so_no_tail_survives() -> None:
    # "secret:xyz" is also a named value; it is inside the Bearer value and goes with it.
    assert redact("Bearer secret:xyz") == "Bearer [REDACTED]"


@pytest.mark.parametrize(
    "text",
    [
        "the task-abcdefghijklmnopqrstuvwxyz is done",
        "Input tokens: 1234, output tokens: 56",
        "max_tokens=4096 temperature=0",
        "Progress: 3/24 tests passing (12.5%)",
        "[Tool: mcp__features__feature_mark_passing]",
        "the key idea: keep it simple",
        "Bearer",
        "password:",
        '{"password": ""}',
        "-----BEGIN PRIVATE KEY-----",
        "-----END PRIVATE KEY-----",
    ],
)
def test_ordinary_text_near_a_trigger_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_the_servers_own_token_is_hidden_wherever_it_appears() -> None:
    token = "Zq3-TRIOtokenVALUE_x"
    text = f"debug: {token} and again:{token}!"
    assert redact(text, secrets=(token,)) == "debug: [REDACTED] and again:[REDACTED]!"


def test_an_empty_extra_secret_hides_nothing() -> None:
    assert redact("plain line", secrets=("",)) == "plain line"


PEM_BLOCK = [
    "writing key.pem:",
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEpAIBAAKCAQEA7bq98pLqXw",
    "",
    "password=inside+the/block==",
    "-----END RSA PRIVATE KEY-----",
    "done, password=after",
]


def redact_stream(lines: list[str]) -> tuple[list[str], bool]:
    out, inside = [], False
    for line in lines:
        clean, inside = redact_line(line, inside)
        out.append(clean)
    return out, inside


def test_a_private_key_block_is_redacted_line_by_line() -> None:
    assert redact_stream(PEM_BLOCK) == (
        [
            "writing key.pem:",
            "-----BEGIN RSA PRIVATE KEY-----",
            "[REDACTED]",
            "",
            "[REDACTED]",
            "-----END RSA PRIVATE KEY-----",
            "done, password=[REDACTED]",
        ],
        False,
    )


def test_a_private_key_block_stays_open_until_its_end_line() -> None:
    assert redact_line("-----BEGIN OPENSSH PRIVATE KEY-----", False) == (
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        True,
    )
    assert redact_line("b3BlbnNzaC1rZXktdjEAAAAA", True) == ("[REDACTED]", True)


def test_text_before_the_end_line_of_a_key_is_redacted() -> None:
    assert redact_line("tail==-----END PRIVATE KEY----- then", True) == (
        "[REDACTED]-----END PRIVATE KEY----- then",
        False,
    )


def test_a_key_that_opens_again_after_its_end_stays_open() -> None:
    line = "-----END PRIVATE KEY----- -----BEGIN EC PRIVATE KEY-----"
    assert redact_line(line, True) == (line, True)


def test_a_begin_marker_with_text_after_it_opens_no_block() -> None:
    line = 'grep -l "-----BEGIN RSA PRIVATE KEY-----" *.pem'
    assert redact_line(line, False) == (
        'grep -l "-----BEGIN RSA PRIVATE KEY-----[REDACTED]',
        False,
    )


def test_a_key_block_ends_at_a_line_that_cannot_be_part_of_a_key() -> None:
    lines = [
        "-----BEGIN PRIVATE KEY-----",
        "[Feature #3] MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        "Proc-Type: 4,ENCRYPTED",
        "[Feature #3] Reading the config next, password=x",
        "plain line",
    ]
    assert redact_stream(lines) == (
        [
            "-----BEGIN PRIVATE KEY-----",
            "[REDACTED]",
            "[REDACTED]",
            "[Feature #3] Reading the config next, password=[REDACTED]",
            "plain line",
        ],
        False,
    )


def test_a_public_key_block_is_not_a_secret() -> None:
    lines = ["-----BEGIN PUBLIC KEY-----", "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE", "x"]
    assert redact_stream(lines) == (lines, False)


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
    "pem starts": "-----BEGIN PRIVATE KEY-----" * 600,
    "json names": '"password": "' * 1260,
    "unclosed quoted values": "token='" * 2340,
    "flags": "--password " * 1630,
    "jwt starts": "eyJabcd.eyJabcd." * 1020,
    "authorization names": "Authorization: " * 1090,
    "long name without a suffix": "a_" * 8192,
    "long name with failing suffixes": "token_" * 2730,
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
    "sk_live_",
    "AIza",
    "glpat-",
    "ant-",
    "A" * 20,
    "token",
    "password",
    "passwd",
    "secret",
    "api_key",
    "credentials",
    "ANTHROPIC_API_KEY",
    "AWS_SESSION_TOKEN",
    "access_key",
    "--",
    "=",
    ":",
    '"',
    "'",
    "\\",
    " ",
    "\t",
    "Bearer ",
    "Authorization: ",
    "Basic ",
    "ghp_",
    "x" * 36,
    "github_pat_",
    "npm_",
    "hf_",
    "AKIA",
    "ABCDEFGHIJKLMNOP",
    "xoxb-",
    "eyJhbGci.",
    "://",
    "@",
    "u",
    "/",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    REDACTED,
    "[",
    "]",
]
secretish_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=25
).map("".join)

# The spec's shapes, written out one pattern at a time, independently of the
# combined implementation: a shape starts a word (``task-…`` holds no ``sk-``
# key); the whole match is the secret.
_SHAPE_START = r"(?<![\w-])"
WHOLE_SECRETS = [
    re.compile(_SHAPE_START + pattern, re.IGNORECASE | re.ASCII)
    for pattern in (
        r"sk-[A-Za-z0-9_-]{20,}",
        r"[sr]k_live_[A-Za-z0-9]{10,}",
        r"AIza[0-9A-Za-z_-]{35}",
        r"glpat-[0-9A-Za-z_-]{20,}",
        r"gh[pousr]_[A-Za-z0-9]{36,}",
        r"github_pat_[A-Za-z0-9_]{20,}",
        r"npm_[A-Za-z0-9]{36}",
        r"hf_[A-Za-z0-9]{30,}",
        r"xox[abprs]-[A-Za-z0-9-]{10,}",
        r"AKIA[0-9A-Z]{16}",
        r"eyJ[\w-]{4,}\.eyJ[\w-]{4,}\.",
        r"MII[0-9A-Za-z+/]{60,}",
    )
]
_NAME = (
    r"(?<![\w.-])[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|client_secret|credentials)"
)
# Named secrets: the ``value`` group is the secret.
NAMED_SECRETS = [
    re.compile(pattern, re.IGNORECASE | re.ASCII)
    for pattern in (
        _NAME + r"\s*[=:]\s*(?P<value>[^\s\"']+)",
        _NAME + r"[\"']\s*:\s*\"(?P<value>[^\"\\]+)",
        _NAME + r"[\"']\s*:\s*'(?P<value>[^'\\]+)",
        r"(?<![\w.-])--" + _NAME.removeprefix(r"(?<![\w.-])") + r"\s+(?P<value>[^-\s\"'][^\s\"']*)",
        r"\bAuthorization:\s*(?:Bearer|Basic|Token)\s+(?P<value>[^\s\"']+)",
        r"\bBearer\s+(?P<value>[^\s\"']+)",
        r"://[^\s:/@]*:(?P<value>[^\s/@]+)@",
        r"BEGIN[A-Z ]*PRIVATE KEY-----(?P<value>[^-]+)",
    )
]


def leaked_secrets(text: str) -> list[str]:
    """What the spec patterns still find in ``text`` other than ``[REDACTED]``.

    A named value may be a prefix of ``[REDACTED]``: a consumer that shortens
    a redacted line (a thought is ``content[:100]``) may cut the marker. A value
    that goes on from the marker with ``@`` is a URL's password redacted up to
    its host (``://TOKEN:[REDACTED]@host``): the URL rule ends the secret there.
    """
    leaks = [m[0] for pattern in WHOLE_SECRETS for m in pattern.finditer(text)]
    leaks += [
        m["value"]
        for pattern in NAMED_SECRETS
        for m in pattern.finditer(text)
        if not REDACTED.startswith(m["value"])
        and not m["value"].isspace()
        and not m["value"].startswith(REDACTED + "@")
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


# -- every shape, embedded in random text ---------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _run(alphabet: str, size: int, max_size: int | None = None) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=size, max_size=size if max_size is None else max_size)


_NAMES = st.sampled_from(
    [
        "password", "PASSWORD", "db_passwd", "pwd", "secret", "client_secret", "token",
        "GITHUB_TOKEN", "api_key", "api-key", "apikey", "ANTHROPIC_API_KEY", "access_key",
        "AWS_SECRET_ACCESS_KEY", "private_key", "credentials",
    ]
)  # fmt: skip
_VALUE = _run(_ALNUM + "!#$%^*+/=._~", 8, 24)


@st.composite
def _named(draw: st.DrawFn) -> tuple[str, str]:
    name, value = draw(_NAMES), draw(_VALUE)
    spelling = draw(
        st.sampled_from(
            ["{n}={v}", "{n}: {v}", '"{n}": "{v}"', "'{n}': '{v}'", "--{n} {v}", "--{n}={v}"]
        )
    )
    return spelling.format(n=name, v=value), value


def _shaped(prefix: str, body: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    return body.map(lambda rest: (prefix + rest, prefix + rest))


SECRET_SHAPES = {
    "sk-": _shaped("sk-ant-", _run(_ALNUM + "_-", 20, 60)),
    "sk_live_": _shaped("sk_live_", _run(_ALNUM, 10, 40)),
    "rk_live_": _shaped("rk_live_", _run(_ALNUM, 10, 40)),
    "AIza": _shaped("AIza", _run(_ALNUM + "_-", 35)),
    "glpat-": _shaped("glpat-", _run(_ALNUM + "_-", 20, 30)),
    "gh_": st.builds(
        lambda kind, rest: ("gh" + kind + "_" + rest,) * 2,
        st.sampled_from("pousr"),
        _run(_ALNUM, 36, 50),
    ),
    "github_pat_": _shaped("github_pat_", _run(_ALNUM + "_", 20, 60)),
    "npm_": _shaped("npm_", _run(_ALNUM, 36)),
    "hf_": _shaped("hf_", _run(_ALNUM, 30, 40)),
    "xox": st.builds(
        lambda kind, rest: ("xox" + kind + "-" + rest,) * 2,
        st.sampled_from("abprs"),
        _run(_ALNUM + "-", 10, 30),
    ),
    "AKIA": _shaped("AKIA", _run("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 16)),
    "PEM body": _shaped("MII", _run(_ALNUM + "+/", 60, 80)),
    "JWT": st.builds(
        lambda a, b, c: (f"eyJ{a}.eyJ{b}.{c}", f"eyJ{b}"),
        _run(_ALNUM, 4, 20),
        _run(_ALNUM, 4, 20),
        _run(_ALNUM + "_-", 0, 20),
    ),
    "named": _named(),
    "Authorization": st.builds(
        lambda scheme, value: (f"Authorization: {scheme}{value}", value),
        st.sampled_from(["Bearer ", "Basic ", "Token ", ""]),
        _VALUE,
    ),
    "Bearer": _VALUE.map(lambda value: ("Bearer " + value, value)),
    "url": st.builds(
        lambda user, password: (f"https://{user}:{password}@db.example:5432/x", password),
        _run(_ALNUM, 0, 8),
        _run(_ALNUM + "!$%*+=~", 8, 16),
    ),
}
# Surrounding text: any words, and words that introduce a secret themselves (a name, a
# scheme, a JSON key), joined to the secret by spaces so its shape stays itself.
_INTRODUCERS = (
    "--TOKEN", "--password", "password:", "password=", "token", "Authorization:", "Bearer",
    "Basic", '"password":', "'api_key':", "api_key", "secret", "Token", "=", ":", '"', "'",
    "-----BEGIN RSA PRIVATE KEY-----", "http://u:",
)  # fmt: skip
_WORDS = st.lists(
    st.one_of(st.sampled_from(_INTRODUCERS), st.text(st.characters(codec="utf-8"), max_size=12)),
    max_size=6,
)


@settings(max_examples=300)
@pytest.mark.parametrize("shape", SECRET_SHAPES.values(), ids=SECRET_SHAPES.keys())
@given(data=st.data())
def test_a_secret_of_every_shape_in_random_text_never_survives(
    shape: st.SearchStrategy[tuple[str, str]], data: st.DataObject
) -> None:
    text, secret = data.draw(shape)
    before, after = data.draw(_WORDS), data.draw(_WORDS)
    line = " ".join([*before, text, *after])
    # The surrounding words may hold copies of the secret; the embedded one must go.
    assert redact(line).replace(REDACTED, " ").count(secret) < line.count(secret)


@pytest.mark.parametrize(
    "line",
    [
        "--TOKEN Bearer 00000000",
        "token=Bearer 00000000",
        "--TOKEN Authorization: Basic 00000000",
        '--TOKEN "password": "00000000"',
        "--TOKEN password: 00000000",
        "Bearer Bearer 00000000",
    ],
)
def test_a_named_value_that_is_an_auth_scheme_takes_its_credential_along(line: str) -> None:
    """Found by the property test: one match's value was another secret's introducer,
    whose own match then could not start, and the credential after it survived."""
    assert "00000000" not in redact(line)


def test_a_url_password_after_a_secret_name_is_redacted_up_to_the_host() -> None:
    """Found by hypothesis: ``://TOKEN:0@`` reads as a URL whose user is TOKEN; its
    password is cut at ``@``, so the host stays readable."""
    assert redact("://TOKEN:0@") == "://TOKEN:[REDACTED]@"
    assert redact("https://TOKEN:abc@host/x") == "https://TOKEN:[REDACTED]@host/x"
    assert leaked_secrets(redact("https://TOKEN:abc@host/x")) == []


NO_PRE_CHECK = (("", ("",)),)
"""A trigger table every line holds: the regex runs on every line."""

_SHAPED_LINES = st.builds(
    lambda before, shaped, after: " ".join([*before, shaped[0], *after]),
    _WORDS,
    st.one_of(*SECRET_SHAPES.values()),
    _WORDS,
)


@settings(max_examples=1000)
@given(
    st.one_of(_SHAPED_LINES, secretish_text, st.text(max_size=200)).flatmap(
        lambda text: st.sampled_from([text, text.upper(), text.swapcase()])
    ),
    st.booleans(),
)
def test_the_pre_check_skips_only_lines_the_regex_leaves_alone(
    text: str, in_private_key: bool
) -> None:
    """The trigger pre-check is only a shortcut: without it every result is the same."""
    expected = redact_line(text, in_private_key)
    with unittest.mock.patch("trio_ws.core.security._TRIGGERS", NO_PRE_CHECK):
        assert redact_line(text, in_private_key) == expected


# -- access: Origin, Host, loopback, tokens (PROTOCOL.md 2, 6) ------------------------

# -- is_loopback_host ---------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "0:0:0:0:0:0:0:1"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "192.168.1.10",
        "10.0.0.1",
        "example.com",
        "localhost.example.com",
        "127.0.0.1.example.com",
        "mylocalhost",
        "",
    ],
)
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


# -- origin_allowed -----------------------------------------------------------

ALLOWED = frozenset({"https://dash.example.com"})


@pytest.mark.parametrize(
    ("origin", "host_header", "on_loopback"),
    [
        (None, "127.0.0.1:8888", True),
        (None, None, False),
        ("http://example.com:8888", "example.com:8888", False),
        ("http://EXAMPLE.com:8888", "example.COM:8888", False),
        ("http://example.com", "example.com:80", False),
        ("http://example.com:80", "example.com", False),
        ("https://example.com", "example.com", False),
        ("https://example.com:443", "example.com", False),
        ("http://[2001:db8::1]:8888", "[2001:db8::1]:8888", False),
        ("http://example.com:8888/", "example.com:8888", False),
        ("http://localhost:5173", "127.0.0.1:8888", True),
        ("http://127.0.0.1:3000", "127.0.0.1:8888", True),
        ("http://127.0.0.2", "127.0.0.1:8888", True),
        ("http://[::1]:8080", "[::1]:8888", True),
        ("https://localhost", "127.0.0.1:8888", True),
    ],
    ids=[
        "no-origin",
        "no-origin-no-host",
        "same-host-and-port",
        "same-host-any-case",
        "http-default-port-explicit-in-host",
        "http-default-port-explicit-in-origin",
        "https-default-port",
        "https-explicit-default-port",
        "same-ipv6-host",
        "trailing-slash",
        "localhost-any-port-on-loopback",
        "loopback-ip-other-port",
        "other-loopback-address",
        "ipv6-loopback",
        "https-loopback",
    ],
)
def test_origins_that_are_allowed(
    origin: str | None, host_header: str | None, on_loopback: bool
) -> None:
    assert origin_allowed(origin, host_header, on_loopback)


@pytest.mark.parametrize(
    ("origin", "host_header", "on_loopback"),
    [
        ("http://evil.example", "127.0.0.1:8888", True),
        ("http://example.com:9999", "example.com:8888", False),
        ("http://example.com", "example.com:8888", False),
        ("https://example.com", "example.com:80", False),
        ("http://example.com.evil.test:8888", "example.com:8888", False),
        ("http://localhost:5173", "example.com:8888", False),
        ("http://127.0.0.1:8888", "example.com:8888", False),
        ("http://localhost.evil.test", "127.0.0.1:8888", True),
        ("http://127.0.0.1.evil.test", "127.0.0.1:8888", True),
        ("http://localhost@evil.test", "127.0.0.1:8888", True),
        ("null", "127.0.0.1:8888", True),
        ("file://", "127.0.0.1:8888", True),
        ("chrome-extension://abcdef", "127.0.0.1:8888", True),
        ("ws://localhost:8888", "127.0.0.1:8888", True),
        ("http://example.com:notaport", "example.com:8888", False),
        ("http://example.com:8888", None, False),
        ("", "127.0.0.1:8888", True),
        ("http://[::1", "127.0.0.1:8888", True),
        ("http://[zz]:8888", "127.0.0.1:8888", True),
        ("http://a]b", "127.0.0.1:8888", True),
        ("http://example.com:8888", "[::1", False),
    ],
    ids=[
        "foreign-on-loopback",
        "same-host-other-port",
        "default-port-vs-explicit-other",
        "https-default-vs-http-port",
        "suffix-lookalike",
        "loopback-origin-off-loopback",
        "loopback-ip-off-loopback",
        "localhost-prefix-lookalike",
        "loopback-ip-prefix-lookalike",
        "userinfo-trick",
        "null-origin",
        "file-scheme",
        "extension-scheme",
        "ws-scheme",
        "bad-port",
        "no-host-header",
        "empty-origin",
        "unclosed-ipv6-bracket",
        "bracketed-non-address",
        "stray-bracket",
        "malformed-host-header",
    ],
)
def test_origins_that_are_refused(
    origin: str | None, host_header: str | None, on_loopback: bool
) -> None:
    assert not origin_allowed(origin, host_header, on_loopback)


@pytest.mark.parametrize(
    "origin",
    ["https://dash.example.com", "HTTPS://DASH.EXAMPLE.COM", "https://dash.example.com/"],
)
def test_a_listed_origin_is_allowed_off_loopback(origin: str) -> None:
    assert origin_allowed(origin, "10.1.2.3:8888", False, ALLOWED)


@pytest.mark.parametrize(
    "origin",
    ["http://dash.example.com", "https://dash.example.com:8443", "https://evil.example.com"],
)
def test_only_the_exact_listed_origin_is_allowed(origin: str) -> None:
    assert not origin_allowed(origin, "10.1.2.3:8888", False, ALLOWED)


def test_a_listed_entry_with_trailing_slash_matches() -> None:
    assert origin_allowed(
        "https://dash.example.com", None, False, frozenset({"https://dash.example.com/"})
    )


_ORIGIN_PIECES = st.sampled_from(
    [
        *("http://", "https://", "[", "]", "::1", "localhost", "127.0.0.1", ":", "8888"),
        *("@", "/", "a.example", "%", " ", "\x00", "é", "?", "#"),
    ]
)
_ORIGIN_TEXT = st.lists(_ORIGIN_PIECES, max_size=10).map("".join)


@settings(max_examples=300, deadline=None)
@given(_ORIGIN_TEXT, st.none() | _ORIGIN_TEXT, st.booleans())
def test_origin_allowed_never_raises(
    origin: str, host_header: str | None, on_loopback: bool
) -> None:
    """Whatever a client puts in Origin and Host, the answer is allowed or 403, never a crash."""
    assert origin_allowed(origin, host_header, on_loopback, ALLOWED) in (True, False)


# -- host_refusal (DNS rebinding, PROTOCOL.md 1) ----------------------------------


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8888", "LOCALHOST:1", "127.0.0.1", "127.0.0.1:8888", "[::1]:8888"],
)
def test_loopback_host_headers_are_served_on_loopback(host: str) -> None:
    assert host_refusal(host, True) is None


@pytest.mark.parametrize(
    "host",
    [
        "rebind.evil.example",
        "rebind.evil.example:8888",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "evil.example@127.0.0.1",
        "127.0.0.1/evil",
        "127.0.0.1:notaport",
        "[::1",
        "",
        "192.168.1.10:8888",
    ],
)
def test_other_host_headers_are_403_on_loopback(host: str) -> None:
    assert host_refusal(host, True) == 403


def test_a_missing_host_is_served_on_loopback() -> None:
    """Only HTTP/1.0 gets this far without one (h11 refuses HTTP/1.1): no name, no rebinding."""
    assert host_refusal(None, True) is None


@pytest.mark.parametrize("host", ["rebind.evil.example:8888", None])
def test_off_loopback_the_host_is_not_checked(host: str | None) -> None:
    assert host_refusal(host, False) is None


@pytest.mark.parametrize(
    ("entry", "host", "refusal"),
    [
        ("dash.example.test", "dash.example.test:8888", None),
        ("dash.example.test", "DASH.example.test", None),
        ("dash.example.test:8888", "dash.example.test:8888", None),
        ("dash.example.test:8888", "dash.example.test:9999", 403),
        ("dash.example.test", "evil.dash.example.test", 403),
    ],
)
def test_allow_host_entries(entry: str, host: str, refusal: int | None) -> None:
    assert host_refusal(host, True, frozenset({entry})) == refusal


# -- control_origin_allowed (PROTOCOL.md 3.4) ---------------------------------------


@pytest.mark.parametrize(
    ("origin", "host_header"),
    [
        (None, "127.0.0.1:8888"),
        ("http://127.0.0.1:8888", "127.0.0.1:8888"),
        ("http://localhost:8888", "localhost:8888"),
        ("https://dash.example.com", "dash.example.com"),
        ("https://dash.example.com", "10.0.0.1:8888"),  # listed
    ],
)
def test_control_is_allowed_from_the_own_or_a_listed_origin(
    origin: str | None, host_header: str
) -> None:
    assert control_origin_allowed(origin, host_header, ALLOWED)


@pytest.mark.parametrize(
    ("origin", "host_header"),
    [
        ("http://localhost:3000", "127.0.0.1:8888"),
        ("http://127.0.0.1:3000", "127.0.0.1:8888"),
        ("http://localhost:8888", "127.0.0.1:8888"),
        ("http://127.0.0.1:8888", None),
        ("null", "127.0.0.1:8888"),
    ],
)
def test_control_is_refused_from_other_origins(origin: str, host_header: str | None) -> None:
    assert not control_origin_allowed(origin, host_header, ALLOWED)


# -- token_matches ------------------------------------------------------------


def test_the_same_token_matches() -> None:
    assert token_matches("s3cret-token", "s3cret-token")


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("wrong", "s3cret-token"),
        ("s3cret", "s3cret-token"),
        ("s3cret-token-and-more", "s3cret-token"),
        ("S3CRET-TOKEN", "s3cret-token"),
        (None, "s3cret-token"),
        ("", "s3cret-token"),
        ("", ""),
        (None, ""),
    ],
    ids=["wrong", "prefix", "longer", "case", "missing", "empty", "both-empty", "none-vs-empty"],
)
def test_other_tokens_do_not_match(offered: str | None, expected: str) -> None:
    assert not token_matches(offered, expected)


def test_non_ascii_tokens_are_compared_not_rejected() -> None:
    assert token_matches("jeton-é", "jeton-é")
    assert not token_matches("jeton-é", "jeton-e")


# -- load_token ---------------------------------------------------------------


@pytest.fixture
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def test_an_explicit_token_wins_over_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    (tmp_path / TOKEN_FILE).write_text("from-file\n")
    assert load_token(tmp_path, "explicit") == "explicit"


def test_the_env_token_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    (tmp_path / TOKEN_FILE).write_text("from-file\n")
    assert load_token(tmp_path) == "from-env"


def test_an_empty_explicit_token_falls_back_to_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert load_token(tmp_path, "") == "from-env"


@pytest.mark.usefixtures("no_env_token")
def test_the_file_token_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("  from-file \n")
    assert load_token(tmp_path) == "from-file"


@pytest.mark.usefixtures("no_env_token")
def test_a_missing_file_without_create_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=str(tmp_path / TOKEN_FILE)):
        load_token(tmp_path)
    assert not (tmp_path / TOKEN_FILE).exists()


@pytest.mark.usefixtures("no_env_token")
def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        load_token(tmp_path, create=True)


@pytest.mark.usefixtures("no_env_token")
def test_create_makes_a_private_token_file(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    token = load_token(home, create=True)
    path = home / TOKEN_FILE
    assert len(token) >= 32
    assert path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.usefixtures("no_env_token")
def test_create_reuses_an_existing_token(tmp_path: Path) -> None:
    first = load_token(tmp_path, create=True)
    assert load_token(tmp_path, create=True) == first
    assert load_token(tmp_path) == first


@pytest.mark.usefixtures("no_env_token")
def test_each_created_token_is_new(tmp_path: Path) -> None:
    first = load_token(tmp_path / "a", create=True)
    second = load_token(tmp_path / "b", create=True)
    assert first != second
