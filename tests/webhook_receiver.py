"""A real webhook receiver on 127.0.0.1 for the notify tests: an h11 HTTP/1.1 server
(keep-alive, one request at a time per connection) that records every request it
read and answers each as told: a status, after a delay, or never (it hangs)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import h11
import trio


@dataclass(frozen=True)
class Answer:
    """How to answer one request: ``status`` after ``delay`` seconds (inf: never)."""

    status: int = 200
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


HANG = Answer(200, math.inf)


@dataclass
class Received:
    """One request as read, and the status it was answered (None: it never was)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    at: float = 0.0
    """When it was read (trio clock)."""


@dataclass
class WebhookReceiver:
    """Answers the queued `Answer`s in order, then ``default``; ``received`` keeps every
    request in arrival order."""

    default: Answer = field(default_factory=Answer)
    answers: deque[Answer] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def delivered(self) -> list[Received]:
        """The requests answered 2xx: the alerts that count as delivered."""
        return [r for r in self.received if r.status is not None and 200 <= r.status < 300]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``port`` (0: any free one) until cancelled; reports the port."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def wait_for(self, count: int, *, delivered: bool = True) -> list[Received]:
        """Return once ``count`` requests were delivered (or only received)."""
        while True:
            seen = self.delivered if delivered else self.received
            if len(seen) >= count:
                return seen
            changed = self._changed
            await changed.wait()

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await self._read_request(connection, stream)
                if request is None:
                    return
                answer = self.answers.popleft() if self.answers else self.default
                self._changed_now()
                await trio.sleep(answer.delay)  # inf: hangs until the client gives up
                response = h11.Response(
                    status_code=answer.status, headers=[("content-length", "2"), *answer.headers]
                )
                try:
                    await stream.send_all(connection.send(response))
                    await stream.send_all(connection.send(h11.Data(data=b"ok")))
                    await stream.send_all(connection.send(h11.EndOfMessage()))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                request.status = answer.status
                self._changed_now()
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()

    async def _read_request(
        self, connection: h11.Connection, stream: trio.SocketStream
    ) -> Received | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                connection.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                received = Received(
                    head.method.decode(),
                    head.target.decode(),
                    {name.decode().lower(): value.decode() for name, value in head.headers},
                    body,
                    at=trio.current_time(),
                )
                self.received.append(received)
                return received
            elif isinstance(event, h11.ConnectionClosed):
                return None
