"""What the fixtures of real services (redis-server, nginx, caddy) share: a free port,
and the rule for a missing binary (a skip on a developer's machine, a failure in CI, which
installs them)."""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(binary: str | None, package: str) -> str:
    """``binary`` when installed; otherwise skip, or fail when ``CI`` is set."""
    if binary is not None:
        return binary
    missing = f"{package} is not installed (Debian package {package})"
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)
