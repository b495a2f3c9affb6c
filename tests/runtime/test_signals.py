"""trio_ws.runtime.signals: the one SIGINT/SIGTERM rule, with real signals to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.lowlevel

from trio_ws.runtime.signals import on_stop_signals, until_signalled

TIMEOUT = 10


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)


async def test_first_signal_calls_first_and_the_block_goes_on() -> None:
    firsts: list[int] = []
    agains: list[int] = []
    arrived = trio.Event()

    def first(signum: int) -> None:
        firsts.append(signum)
        arrived.set()

    with trio.fail_after(TIMEOUT):
        async with on_stop_signals(first, agains.append):
            send(signal.SIGTERM)
            await arrived.wait()
            await trio.lowlevel.checkpoint()  # still running: only ``first`` decides what stops
    assert (firsts, agains) == ([signal.SIGTERM], [])


async def test_later_signals_call_again_each_time() -> None:
    seen: list[str] = []
    count = trio.Event()

    def record(kind: str, signum: int) -> None:
        seen.append(f"{kind} {signum}")
        if len(seen) == 3:
            count.set()

    with trio.fail_after(TIMEOUT):
        async with on_stop_signals(
            lambda signum: record("first", signum), lambda signum: record("again", signum)
        ):
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
                send(signum)
                await trio.sleep(0.01)  # one at a time: the kernel may merge pending ones
            await count.wait()
    assert seen == [
        f"first {signal.SIGINT}",
        f"again {signal.SIGTERM}",
        f"again {signal.SIGINT}",
    ]


async def test_an_error_in_the_block_leaves_as_itself() -> None:
    with pytest.raises(LookupError, match="the block's own"):
        async with on_stop_signals(lambda signum: None):
            raise LookupError("the block's own")


async def test_until_signalled_returns_false_when_the_work_ends() -> None:
    async def work() -> None:
        await trio.lowlevel.checkpoint()

    with trio.fail_after(TIMEOUT):
        assert await until_signalled(work) is False


async def test_until_signalled_cancels_the_work_on_the_first_signal() -> None:
    unwound: list[str] = []

    async def work() -> None:
        send(signal.SIGINT)
        try:
            await trio.sleep_forever()
        finally:
            unwound.append("cancelled")

    with trio.fail_after(TIMEOUT):
        assert await until_signalled(work) is True
    assert unwound == ["cancelled"]


async def test_until_signalled_ignores_a_second_signal_while_the_work_unwinds() -> None:
    async def work() -> None:
        send(signal.SIGINT)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                send(signal.SIGTERM)
                await trio.sleep(0.05)  # a slow close, as watch's websocket close may be

    with trio.fail_after(TIMEOUT):
        assert await until_signalled(work) is True


SCRIPT = textwrap.dedent(
    """
    import sys, trio
    from trio_ws.runtime.signals import on_stop_signals

    async def main():
        async with on_stop_signals(lambda signum: print("graceful", signum, flush=True)):
            print("ready", flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_second_signal_exits_now_with_128_plus_n(signum: int) -> None:
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            output = b""
            while b"ready\n" not in output:
                output += await process.stdout.receive_some()
            process.send_signal(signum)
            while not output.endswith(b"\n") or b"graceful" not in output:
                output += await process.stdout.receive_some()
            process.send_signal(signum)
            assert await process.wait() == 128 + signum
            stderr = b""
            while chunk := await process.stderr.receive_some():
                stderr += chunk
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert output == f"ready\ngraceful {signum}\n".encode()
    assert stderr == f"signal {signum} again: exiting now\n".encode()
