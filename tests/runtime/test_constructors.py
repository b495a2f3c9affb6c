"""Objects that cannot be half-made: only their factories build them."""

from __future__ import annotations

import pytest
import trio

from trio_ws.net.connection import WebSocket
from trio_ws.runtime.constructors import NoPublicConstructor


class Whole(metaclass=NoPublicConstructor):
    def __init__(self, value: int) -> None:
        self.value = value

    @classmethod
    def make(cls, value: int) -> Whole:
        return cls._create(value)


def test_calling_the_class_is_refused_and_names_it() -> None:
    with pytest.raises(TypeError, match="Whole has no public constructor"):
        Whole(1)


def test_the_factory_builds_one() -> None:
    assert Whole.make(7).value == 7


def test_a_websocket_is_made_only_by_accept() -> None:
    left, right = trio.socket.socketpair()
    with left, right, pytest.raises(TypeError, match="WebSocket has no public constructor"):
        WebSocket(left, None, max_message=1, stall_timeout=1.0)  # type: ignore[arg-type]
