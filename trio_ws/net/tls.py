"""TLS on the server's one port: the context ``serve --certfile/--keyfile`` makes, and
the wrapping of each accepted connection in it.

HTTPS and ``wss://`` share the port, as plain HTTP and ``ws://`` do: the handshake
comes first, then the same front door (`trio_ws.net.httpio`). A client whose
handshake fails (a plain-HTTP client, a wrong certificate, a scanner) is logged
once, without a traceback, and never reaches the server's nursery.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import trio

from trio_ws.core.certificates import CertificateError, Validity, validity

log = logging.getLogger("trio_ws.net.tls")


class TlsSetupError(Exception):
    """The certificate or key cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class ServerTls:
    """What serving TLS needs: the context, and the certificate's dates for /healthz."""

    context: ssl.SSLContext
    dates: Validity


def server_tls(certfile: Path, keyfile: Path) -> ServerTls:
    """Load the certificate chain and key; `TlsSetupError` saying what is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        pem = certfile.read_bytes()
        dates = validity(pem)
        context.load_cert_chain(certfile, keyfile)
    except CertificateError as exc:
        raise TlsSetupError(f"--certfile {certfile}: {exc}") from None
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"--certfile {certfile} / --keyfile {keyfile}: {exc.reason or exc} "
            "(is the key the certificate's?)"
        ) from None
    except OSError as exc:
        raise TlsSetupError(f"cannot read {exc.filename}: {exc.strerror}") from None
    return ServerTls(context, dates)


async def secure(
    stream: trio.SocketStream, tls: ServerTls, peer: str, within: float
) -> trio.SSLStream[trio.SocketStream] | None:
    """``stream`` with its TLS handshake done within ``within`` seconds; None (said once
    in the log) when the client did not complete one."""
    secured = trio.SSLStream(stream, tls.context, server_side=True, https_compatible=True)
    with trio.move_on_after(within):
        try:
            await secured.do_handshake()
        except trio.BrokenResourceError as exc:
            log.info("TLS handshake with %s failed: %s", peer, _reason(exc))
            return None
        return secured
    log.debug("no TLS handshake from %s within %g s", peer, within)
    return None


def _reason(exc: trio.BrokenResourceError) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason == "HTTP_REQUEST":
        return "plain HTTP sent to the TLS port"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause or exc) or "connection lost"
