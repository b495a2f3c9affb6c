"""TLS on the server's port (`trio_ws.net.tls`), with real certificates from trustme:
HTTPS and wss:// on one port, a client that fails its handshake (plain HTTP, a
wrong CA, silence) costs the server nothing, and unusable files are refused at start."""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from serving import NETWORK_TIMEOUT, TOKEN, make_config
from tls_certs import TlsFiles, make_tls_files
from trio_websocket import open_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve
from trio_ws.net.tls import TlsSetupError, server_tls


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


async def start_tls(nursery: trio.Nursery, registry: Registry, files: TlsFiles) -> Server:
    config = make_config(registry, certfile=files.certfile, keyfile=files.keyfile)
    server: Server = await nursery.start(serve, config)
    return server


async def https_get(
    port: int, path: str, context: ssl.SSLContext, headers: str = ""
) -> tuple[int, bytes]:
    """One GET over TLS (the server closes after it): the status and the body."""
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=context, https_compatible=True
    )
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_https_and_wss_share_the_port(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, tls_files: TlsFiles
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_tls(nursery, registry, tls_files)
        assert server.url.startswith("https://127.0.0.1:")
        status, body = await https_get(server.port, "/healthz", tls_files.client_context())
        assert status == 200
        health = json.loads(body)
        assert health["tls"]["not_after"] == "3000-01-01T00:00:00Z"  # trustme's default
        status, page = await https_get(server.port, "/", tls_files.client_context())
        assert status == 200 and b"<html" in page.lower()
        url = f"wss://127.0.0.1:{server.port}/ws/projects/demo"
        async with open_websocket_url(url, ssl_context=tls_files.client_context()) as ws:
            hello = json.loads(await ws.get_message())
            assert hello["type"] == "hello" and hello["project"] == "demo"


async def test_lines_published_over_wss_reach_a_wss_subscriber(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, tls_files: TlsFiles
) -> None:
    """The fan-out's writes go through TLS (no direct socket path there), big and small."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_tls(nursery, registry, tls_files)
        base = f"wss://127.0.0.1:{server.port}/ws/projects/demo"
        context = tls_files.client_context()
        async with (
            open_websocket_url(base, ssl_context=context) as watcher,
            open_websocket_url(
                f"{base}/publish",
                ssl_context=context,
                extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
            ) as producer,
        ):
            await producer.send_message('{"type":"hello","producer":"p","stream":"agent"}')
            welcome = json.loads(await producer.get_message())
            assert welcome["type"] == "welcome"
            lines = [f"line {n} " + "x" * 3000 for n in range(200)]  # ~600 KB: many records
            message: dict[str, Any] = {"type": "lines", "first": 1, "lines": lines}
            await producer.send_message(json.dumps(message))
            seen: list[str] = []
            while len(seen) < len(lines):
                received = json.loads(await watcher.get_message())
                if received.get("type") == "log":
                    seen.append(received["line"])
            assert seen == lines


async def test_a_plain_http_client_fails_cleanly_and_the_server_keeps_serving(
    nursery: trio.Nursery,
    registry: Registry,
    tls_files: TlsFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="trio_ws"), trio.fail_after(NETWORK_TIMEOUT):
        server = await start_tls(nursery, registry, tls_files)
        plain = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with plain:
            await plain.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            try:
                while chunk := await plain.receive_some(65536):
                    answer += chunk
            except trio.BrokenResourceError:
                pass  # a reset is a clean refusal too
        assert b"HTTP/1.1 200" not in answer  # no plain answer leaks from the TLS port
        status, _ = await https_get(server.port, "/healthz", tls_files.client_context())
        assert status == 200
    said = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(said) == 1
    assert "plain HTTP sent to the TLS port" in said[0].getMessage()
    assert said[0].levelno == logging.INFO and said[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_with_another_ca_is_refused_and_the_server_keeps_serving(
    nursery: trio.Nursery,
    registry: Registry,
    tls_files: TlsFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = make_tls_files(tmp_path / "other")
    with caplog.at_level(logging.INFO, logger="trio_ws"), trio.fail_after(NETWORK_TIMEOUT):
        server = await start_tls(nursery, registry, tls_files)
        with pytest.raises(trio.BrokenResourceError) as failed:
            await https_get(server.port, "/healthz", other.client_context())
        assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
        status, _ = await https_get(server.port, "/healthz", tls_files.client_context())
        assert status == 200
    assert not [r for r in caplog.records if r.exc_info is not None]


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery, registry: Registry, tls_files: TlsFiles
) -> None:
    config = make_config(
        registry, certfile=tls_files.certfile, keyfile=tls_files.keyfile, handshake_timeout=0.3
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, config)
        silent = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with silent:
            assert await silent.receive_some(100) == b""  # closed by the server, unasked


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    one = make_tls_files(tmp_path / "one")
    two = make_tls_files(tmp_path / "two")
    with pytest.raises(TlsSetupError, match="is the key the certificate's"):
        server_tls(one.certfile, two.keyfile)


def test_a_file_that_is_no_certificate_is_refused(tmp_path: Path, tls_files: TlsFiles) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsSetupError, match=f"--certfile {junk}: not a PEM certificate"):
        server_tls(junk, tls_files.keyfile)
    with pytest.raises(TlsSetupError, match="cannot read"):
        server_tls(tmp_path / "missing.pem", tls_files.keyfile)


async def test_a_bad_certificate_stops_the_start_before_listening(
    nursery: trio.Nursery, registry: Registry, tmp_path: Path, tls_files: TlsFiles
) -> None:
    other = make_tls_files(tmp_path / "other")
    config = make_config(registry, certfile=tls_files.certfile, keyfile=other.keyfile)
    with pytest.raises(TlsSetupError):
        await nursery.start(serve, config)
