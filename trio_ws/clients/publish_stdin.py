"""``trio-ws publish``: lines read from stdin, published through a `Producer`."""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from trio_ws.clients.outbox import DEFAULT_CAPACITY, LineSplitter, Outbox, Report, stderr_report
from trio_ws.clients.producer import Producer, new_producer_id
from trio_ws.clients.supervisor import CONNECT_WAIT, FAILURE, FLUSH_WITHIN, READ_SIZE, Outcome
from trio_ws.core.protocol import Stream
from trio_ws.runtime.signals import exit_now, on_stop_signals


async def read_stdin() -> bytes:
    """One chunk of stdin (b"" at EOF), read in a thread so the terminal stays blocking."""
    return await trio.to_thread.run_sync(os.read, 0, READ_SIZE, abandon_on_cancel=True)


async def publish_stream(
    url: str | Sequence[str],
    token: str,
    stream: Stream,
    read: Callable[[], Awaitable[bytes]] = read_stdin,
    *,
    report: Report = stderr_report,
    capacity: int = DEFAULT_CAPACITY,
    flush_within: float = FLUSH_WITHIN,
    connect_wait: float = CONNECT_WAIT,
    tls: ssl.SSLContext | None = None,
) -> Outcome:
    """Publish every line ``read`` yields until EOF (or SIGINT/SIGTERM): ``running``
    first, ``stopped`` last; exit 0 only when everything was delivered."""
    producer = Producer(
        url,
        token,
        stream,
        producer_id=new_producer_id("publish"),
        outbox=Outbox(capacity),
        report=report,
        tls=tls,
    )
    splitter = LineSplitter()
    reading_scope = trio.CancelScope()

    def end_input(signum: int) -> None:
        report(f"signal {signum}: ending the input here")
        reading_scope.cancel()

    def exit_early(signum: int) -> NoReturn:
        report(f"signal {signum} again: exiting now")
        exit_now(signum)

    async with on_stop_signals(end_input, exit_early), trio.open_nursery() as outer:
        outer.start_soon(producer.run)
        try:
            with trio.move_on_after(connect_wait):
                await producer.ready.wait()
            if producer.refused is not None:
                return Outcome(FAILURE, refused=str(producer.refused))
            producer.send_status("running")
            with reading_scope:
                async with trio.open_nursery() as reading:

                    async def read_all() -> None:
                        while chunk := await read():
                            for line in splitter.feed(chunk):
                                producer.send_line(line)
                        reading.cancel_scope.cancel()

                    async def stop_on_refusal() -> None:
                        await producer.finished.wait()
                        reading.cancel_scope.cancel()

                    reading.start_soon(read_all)
                    reading.start_soon(stop_on_refusal)
            for line in splitter.close():
                producer.send_line(line)
            producer.send_status("stopped")
            undelivered = await producer.flush(flush_within)
            refused = producer.refused
            if refused is not None:
                return Outcome(FAILURE, undelivered, str(refused))
            return Outcome(0 if undelivered == 0 else FAILURE, undelivered)
        finally:
            with trio.CancelScope(shield=True):
                await producer.close()
