"""Sans-IO pieces of the benchmark's websocket client, and the bench line format.

The load generator must cost far less per message than the server it
measures, or a 2-core machine measures the client. So subscribers are not a
full websocket library: they do the RFC 6455 upgrade, read unmasked server
frames with `FrameReader` (one pass over a bytearray, no per-frame objects),
answer pings and closes, and find the bench marker in each text frame
without decoding the JSON. Both servers send the same JSON shape, so the
same bytes are found in both.

A bench line is ``bench <counter:08d> <send time:%.6f> xxx...``: the counter
is the producer's item number (gaps mean missed events), the send time is
the producer's ``time.time()`` just before the batch went out.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MARK: Final = b'"line":"bench '
"""What precedes the counter in a bench ``log`` event encoded as compact JSON."""
COUNTER_DIGITS: Final = 8
BENCH_COUNTER: Final = re.compile(rb'"line":"bench (\d{8}) ')
"""The counter of each bench line in a run of encoded events, found in C, not per frame."""
STAMP_DIGITS: Final = 17  # "%.6f" of time.time() until the year 2286
LINE_HEAD: Final = len("bench ") + COUNTER_DIGITS + 1 + STAMP_DIGITS

OP_TEXT: Final = 0x1
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


class ProtocolViolation(Exception):
    """The server sent something this client does not accept (masked or fragmented frames)."""


def make_line(counter: int, stamp: float, size: int) -> str:
    """One bench line of exactly ``size`` characters (at least the fixed head)."""
    head = f"bench {counter:0{COUNTER_DIGITS}d} {stamp:.6f}"
    if len(head) != LINE_HEAD:
        raise ValueError(f"counter {counter} or stamp {stamp} does not fit the line format")
    return head + " " + "x" * max(0, size - LINE_HEAD - 1)


def find_line(buf: bytes | bytearray, start: int, end: int) -> tuple[int, float] | None:
    """(counter, send time) of the bench line in ``buf[start:end]``; None if it has none."""
    at = buf.find(MARK, start, end)
    if at < 0:
        return None
    at += len(MARK)
    counter = int(buf[at : at + COUNTER_DIGITS])
    at += COUNTER_DIGITS + 1
    return counter, float(buf[at : at + STAMP_DIGITS])


def upgrade_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """(request bytes, expected Sec-WebSocket-Accept) for a plain RFC 6455 upgrade."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept_key(key)


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # RFC 6455 names SHA-1


def check_upgrade(head: bytes, accept: bytes) -> None:
    """Raise `ProtocolViolation` unless ``head`` (up to the blank line) is our 101."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise ProtocolViolation(f"upgrade refused: {lines[0].decode(errors='replace')}")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip() != accept:
                raise ProtocolViolation("wrong Sec-WebSocket-Accept")
            return
    raise ProtocolViolation("no Sec-WebSocket-Accept in the 101 answer")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (RFC 6455 5.3); payloads here are small control frames."""
    if len(payload) > 125:
        raise ValueError("control frame payloads are at most 125 bytes")
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


class FrameReader:
    """Splits the server's byte stream into frames; text frames go to ``on_text``.

    ``on_text(buf, start, end)`` sees the payload in place (no copy);
    ``on_control(opcode, payload)`` gets ping, pong and close frames. Anything
    else (masked, fragmented, binary) raises `ProtocolViolation`: neither
    server sends it, so seeing it means the measurement is wrong.
    """

    def __init__(
        self,
        on_text: Callable[[bytearray, int, int], None],
        on_control: Callable[[int, bytes], None],
    ) -> None:
        self.on_text = on_text
        self.on_control = on_control
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            if second & 0x80:
                raise ProtocolViolation("server frames must not be masked")
            opcode = first & 0x0F
            if opcode == OP_TEXT and first & 0x80:
                self.on_text(buf, pos + head, end)
            elif opcode in (OP_PING, OP_PONG, OP_CLOSE):
                self.on_control(opcode, bytes(buf[pos + head : end]))
            else:
                raise ProtocolViolation(f"unexpected frame: opcode {opcode}, first byte {first}")
            pos = end
        if pos:
            del buf[:pos]


@dataclass(frozen=True)
class Slice:
    """What one read of a watcher read in slices held: its bench events, checked cheaply."""

    events: int
    first: int
    """Counters of the first and last bench event (0 when there were none)."""
    last: int
    increasing: bool
    """Every counter greater than the one before it."""
    payload_bytes: int


class SliceReader:
    """The cheap reader of a watcher that reads once a slice instead of live.

    ``feed`` walks the frame headers only (so every byte must belong to a whole
    unmasked frame, else `ProtocolViolation`), keeps a partial last frame for the
    next slice, and finds every bench counter of the whole frames with one regex
    pass. Frames that are not bench events (control frames, other messages) go to
    ``on_other(opcode, payload)``. The caller checks the counters against the last
    one it saw: together they catch a lost, repeated or reordered event.
    """

    def __init__(self, on_other: Callable[[int, bytes], None], buf: bytearray) -> None:
        self.on_other = on_other
        self.buf = buf

    def feed(self, data: bytes) -> Slice:
        buf = self.buf
        buf += data
        size = len(buf)
        pos = 0
        texts = 0
        payload = 0
        others: list[tuple[int, int, int]] = []
        while size - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1]
            if length < 126:
                head = 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            else:
                raise ProtocolViolation("server frames must not be masked")
            end = pos + head + length
            if end > size:
                break
            if first == 0x81:  # FIN and text
                texts += 1
                payload += length
            else:
                others.append((first, pos + head, end))
            pos = end
        counters = BENCH_COUNTER.findall(buf, 0, pos)
        if len(counters) != texts:
            others += self._texts_without_counter(pos)
        for first, start, end in others:
            self._other(first, bytes(buf[start:end]))
        del buf[:pos]
        if not counters:
            return Slice(0, 0, 0, True, 0)
        return Slice(
            len(counters),
            int(counters[0]),
            int(counters[-1]),
            all(map(bytes.__lt__, counters, counters[1:])),
            payload,
        )

    def _texts_without_counter(self, stop: int) -> list[tuple[int, int, int]]:
        """The text frames before ``stop`` that hold no bench line (a second, rare pass)."""
        found = []
        reader = FrameReader(lambda buf, start, end: None, lambda opcode, payload: None)
        spans: list[tuple[int, int]] = []
        reader.on_text = lambda buf, start, end: spans.append((start, end))
        reader.feed(bytes(self.buf[:stop]))
        for start, end in spans:
            if BENCH_COUNTER.search(self.buf, start, end) is None:
                found.append((0x81, start, end))
        return found

    def _other(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if not first & 0x80 or opcode not in (OP_TEXT, OP_PING, OP_PONG, OP_CLOSE):
            raise ProtocolViolation(f"unexpected frame: opcode {opcode}, first byte {first}")
        self.on_other(opcode, payload)
