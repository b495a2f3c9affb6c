"""The commands over TLS as real subprocesses, with real certificates from trustme:
`serve --certfile/--keyfile`, and `publish`, `run`, `watch`, `runs`, `export` and
`replay` reaching it at an https:// or wss:// ``--server`` with ``--cafile``;
a wrong CA is one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from serving import NETWORK_TIMEOUT, TRIO_WS, serve_subprocess
from tls_certs import TlsFiles, make_tls_files

HTTPS_URL = re.compile(r"(https://127\.0\.0\.1:\d+/)\?token=\S+")


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@asynccontextmanager
async def serving_tls(home: Path, files: TlsFiles) -> AsyncIterator[str]:
    """`trio-ws serve` with the certificate; yields the https URL it printed, without
    the token it carries."""
    tls = ("--certfile", str(files.certfile), "--keyfile", str(files.keyfile))
    async with serve_subprocess(home, *tls) as (_, _, url):
        match = HTTPS_URL.fullmatch(url)
        assert match, url
        yield match.group(1)


async def trio_ws(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [TRIO_WS, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single ``trio-ws: error:`` line a refusal prints; never a traceback."""
    [line] = result.stderr.decode().strip().splitlines()
    assert line.startswith("trio-ws: error: "), line
    return line


async def test_publish_run_watch_and_runs_over_tls(served_home: Path, tls_files: TlsFiles) -> None:
    cafile = ("--cafile", str(tls_files.cafile))
    home = ("--home", str(served_home))
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        async with serving_tls(served_home, tls_files) as url:
            wss = url.replace("https://", "wss://")
            published = await trio_ws(
                "publish", "demo", "--server", url, *cafile, *home, stdin=b"first over tls\n"
            )
            assert published.returncode == 0, published.stderr
            ran = await trio_ws(
                "run", "demo", "--server", wss, *cafile, *home, "--quiet", "--",
                sys.executable, "-c", "print('second over tls')",
            )  # fmt: skip
            assert ran.returncode == 0, ran.stderr
            watched = await trio_ws(
                "watch", "demo", "--once", "--json", "--server", wss, *cafile, *home
            )
            assert watched.returncode == 0, watched.stderr
            text = watched.stdout.decode()
            assert "first over tls" in text and "second over tls" in text
            runs = await trio_ws("runs", "demo", "--json", "--server", url, *cafile, *home)
            assert runs.returncode == 0, runs.stderr
            recorded = json.loads(runs.stdout)  # the run recorded, read over HTTPS
            run_id = recorded[0]["id"]
            exported = await trio_ws("export", "demo", run_id, "--server", url, *cafile, *home)
            assert exported.returncode == 0, exported.stderr
            assert b"second over tls" in exported.stdout
            replayed = await trio_ws(
                "replay", "demo", run_id, "--json", "--speed", "max", "--server", url,
                *cafile, *home,
            )  # fmt: skip
            assert replayed.returncode == 0, replayed.stderr
            assert b"second over tls" in replayed.stdout
            overview = await trio_ws(
                "watch", "--once", "--json", "--server", wss, *cafile, *home
            )  # no project: every project's summary over wss
            assert overview.returncode == 0, overview.stderr
            assert b'"demo"' in overview.stdout


async def test_a_wrong_ca_is_one_clear_line_for_every_client(
    served_home: Path, tls_files: TlsFiles, tmp_path: Path
) -> None:
    other = ("--cafile", str(make_tls_files(tmp_path / "other").cafile))
    home = ("--home", str(served_home))
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        async with serving_tls(served_home, tls_files) as url:
            published = await trio_ws("publish", "demo", "--server", url, *other, *home)
            watched = await trio_ws("watch", "demo", "--once", "--server", url, *other, *home)
            followed = await trio_ws("watch", "demo", "--json", "--server", url, *other, *home)
            ran = await trio_ws(
                "run", "demo", "--server", url, *other, *home, "--", sys.executable, "-c", "1"
            )
            listed = await trio_ws("runs", "demo", "--server", url, *other, *home)
            exported = await trio_ws("export", "demo", "r", "--server", url, *other, *home)
            replayed = await trio_ws("replay", "demo", "r", "--server", url, *other, *home)
            overview = await trio_ws("watch", "--once", "--server", url, *other, *home)
            live = await trio_ws("watch", "--json", "--server", url, *other, *home)
    results = (published, watched, followed, ran, listed, exported, replayed, overview, live)
    for result in results:
        assert result.returncode == 1, result.stderr
        line = one_line(result)
        assert "certificate is not trusted" in line and "--cafile" in line, line


async def test_cafile_with_a_plain_server_is_a_usage_error(
    served_home: Path, tls_files: TlsFiles
) -> None:
    result = await trio_ws(
        "watch", "demo", "--once", "--server", "http://127.0.0.1:1", "--cafile",
        str(tls_files.cafile),
    )  # fmt: skip
    assert result.returncode == 2
    assert "--cafile needs an https:// or wss:// server" in one_line(result)


async def test_plain_http_off_loopback_is_refused_at_start(tmp_path: Path) -> None:
    result = await trio_ws("serve", "--home", str(tmp_path), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    line = one_line(result)
    assert "not loopback" in line and "--certfile" in line and "--insecure-remote" in line


async def test_a_key_that_does_not_match_is_refused_at_start(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    other = make_tls_files(tmp_path / "other")
    result = await trio_ws(
        "serve", "--home", str(tmp_path), "--port", "0",
        "--certfile", str(tls_files.certfile), "--keyfile", str(other.keyfile),
    )  # fmt: skip
    assert result.returncode == 1
    assert "is the key the certificate's" in one_line(result)
