"""Access rules in `trio_ws.core.security` (PROTOCOL.md 2, 6): Origin, loopback, tokens.

Pure functions, so every rule is a row in a table; the token file tests use
a real home directory under tmp_path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ws.core.security import (
    TOKEN_ENV,
    TOKEN_FILE,
    TokenError,
    control_origin_allowed,
    host_refusal,
    is_loopback_host,
    load_token,
    origin_allowed,
    token_matches,
)

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
