"""Who may do what, decided from a request's head: read, control, produce.

One place reads the token from a request (`offered_tokens`): the
``Authorization: Bearer`` header, the dashboard's cookie and, for reads only,
``?token=``. Control is never taken from a URL (a log might keep it), and a
producer never from a browser. The rules are PROTOCOL.md's (1, 3.4, 4).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from trio_ws.core.security import control_origin_allowed, origin_trusted, token_matches
from trio_ws.net.httpio import RequestHead

TOKEN_COOKIE: Final = "trio_ws_token"
"""The dashboard's cookie holding the server token (HttpOnly, SameSite=Strict)."""


def bearer_token(head: RequestHead) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    scheme, _, token = (head.header("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def offered_tokens(head: RequestHead, *, from_url: bool) -> tuple[str | None, ...]:
    """Every token the request offers: the Bearer header, the dashboard's cookie, and
    ``?token=`` when ``from_url`` (reads only)."""
    found = (bearer_token(head), head.cookie(TOKEN_COOKIE))
    return (*found, head.query.get("token")) if from_url else found


def carries_token(head: RequestHead, token: str) -> bool:
    """Does the request carry the server token, in any place a reader may put it?"""
    return _any_matches(offered_tokens(head, from_url=True), token)


def producer_refusal(head: RequestHead, token: str) -> tuple[int, str] | None:
    """Producers: never from a browser (any Origin), always with the Bearer token."""
    if head.header("origin") is not None:
        return 403, "producers must not send an Origin header"
    if not _any_matches((bearer_token(head),), token):
        return 401, "producer needs Authorization: Bearer <token>"
    return None


def project_api_refusal(
    head: RequestHead,
    *,
    token: str,
    allow_origins: frozenset[str],
    trust_origins: frozenset[str] = frozenset(),
    readers_need_token: bool,
    control_action: bool,
) -> tuple[int, str] | None:
    """Reads follow ``/api/projects`` (the token whenever subscribers need it); a control
    action follows the websocket ``control`` rules (PROTOCOL.md 3.4): the server's own
    origin or an allowed one, and the token, as a Bearer header or the dashboard's
    cookie (never in a URL a log might keep), unless the page's origin is trusted."""
    if not control_action:
        if readers_need_token and not carries_token(head, token):
            return 401, "Unauthorized"
        return None
    origin = head.header("origin")
    if origin_trusted(origin, trust_origins):
        return None
    if not control_origin_allowed(origin, head.header("host"), allow_origins | trust_origins):
        return 403, "control is accepted only from the server's own origin or an allowed one"
    if not _any_matches(offered_tokens(head, from_url=False), token):
        return 401, "control needs the server token (Authorization: Bearer, or the dashboard)"
    return None


def may_control_without_token(head: RequestHead, trust_origins: frozenset[str]) -> bool:
    """A page from a trusted origin (``serve --trust-origin``) controls without the token."""
    return origin_trusted(head.header("origin"), trust_origins)


def _any_matches(offered: Iterable[str | None], token: str) -> bool:
    return any(token_matches(candidate, token) for candidate in offered)
