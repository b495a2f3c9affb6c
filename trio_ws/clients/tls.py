"""TLS for every client: which certificates a ``wss://``/``https://`` server may show
(the system's trust, or only ``--cafile``'s CA), and a failed handshake said in one line.

A handshake is checked on its own before trio-websocket connects (`check_tls`):
trio-websocket waits for its opening handshake for ever once TLS failed under it, so
a certificate the client does not trust would look like a server that never answers.
An untrusted certificate is refused for good (retrying cannot fix it); any other TLS
failure is retried as a network failure is.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

import trio

from trio_ws.clients.common import websocket_base


class TlsFailure(Exception):
    """A TLS handshake failed; the message says why in one line."""

    def __init__(self, message: str, *, for_good: bool) -> None:
        super().__init__(message)
        self.for_good = for_good
        """The server's certificate is not trusted: do not retry."""


def client_tls(server: str, cafile: Path | None = None) -> ssl.SSLContext | None:
    """The TLS context for ``server`` (None when it is plain ``http``/``ws``); ValueError
    for a ``--cafile`` with a plain server or one that cannot be read."""
    secure = websocket_base(server).startswith("wss:")
    if not secure:
        if cafile is not None:
            raise ValueError(f"--cafile needs an https:// or wss:// server, not {server!r}")
        return None
    try:
        return ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--cafile {cafile}: {getattr(exc, 'strerror', None) or exc}") from None


def for_url(url: str, tls: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """What trio-websocket takes as ``ssl_context`` for ``url``: none for ``ws://``."""
    return tls if url.startswith("wss:") else None


async def check_tls(url: str, tls: ssl.SSLContext | None) -> None:
    """For a ``wss://`` URL: one TLS handshake with the server, closed at once; raises
    `TlsFailure` when it fails. Network failures (OSError) pass through as they are; the
    caller bounds the time."""
    parts = urlsplit(url)
    if parts.scheme != "wss" or parts.hostname is None:
        return
    context = tls if tls is not None else ssl.create_default_context()
    stream = await trio.open_ssl_over_tcp_stream(
        parts.hostname, parts.port or 443, ssl_context=context, https_compatible=True
    )
    async with stream:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            raise tls_failure(parts.netloc, exc.__cause__) from None


def tls_failure(where: str, cause: BaseException | None) -> TlsFailure:
    """The one-line failure for a handshake with ``where`` that failed with ``cause``."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = cause.verify_message or cause.reason or str(cause)
        return TlsFailure(
            f"{where}: the server's TLS certificate is not trusted ({why}); "
            "give --cafile with the CA that signed it",
            for_good=True,
        )
    if isinstance(cause, ssl.SSLError):
        return TlsFailure(
            f"{where}: TLS handshake failed ({cause.reason or cause}); does the server serve "
            "TLS (serve --certfile)?",
            for_good=False,
        )
    return TlsFailure(
        f"{where}: TLS handshake failed ({cause or 'connection lost'})", for_good=False
    )
