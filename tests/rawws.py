"""A websocket client made of raw bytes, for tests that need what real clients never
send (bad frames, a frame in the handshake's packet) or never do (stop reading)."""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any, Final

import trio

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
TCP_ESTABLISHED: Final = 1
TCP_CLOSE: Final = 7
"""``tcpi_state`` (first byte of ``TCP_INFO``) of a connection ended by a reset."""


def upgrade_request(path: str, *headers: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """One client frame; masked as RFC 6455 requires unless told otherwise."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def text(message: dict[str, Any]) -> bytes:
    return client_frame(OP_TEXT, json.dumps(message).encode())


def tcp_state(stream: trio.SocketStream) -> int:
    """The kernel's state of this end of the connection (Linux ``TCP_INFO``)."""
    return stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


async def open_socket(port: int, rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP connection to the server, with a small receive buffer if asked (set
    before connecting, so the window is small from the start)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


class RawClient:
    """One websocket connection driven byte by byte."""

    def __init__(self, stream: trio.SocketStream, status: int, head: bytes, rest: bytes) -> None:
        self.stream = stream
        self.status = status
        self.head = head
        self.buffer = bytearray(rest)

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        *headers: str,
        first: bytes = b"",
        rcvbuf: int | None = None,
    ) -> RawClient:
        """Upgrade, sending ``first`` in the same write as the request."""
        stream = await open_socket(port, rcvbuf)
        await stream.send_all(upgrade_request(path, *headers) + first)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, f"connection closed during the handshake: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return cls(stream, int(head.split()[1]), head, rest)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def frame(self) -> tuple[int, bytes] | None:
        """The next whole server frame (opcode, payload); None at the end of the stream."""
        if not await self._fill(2):
            return None
        size = self.buffer[1] & 0x7F
        offset = 2
        if size == 126:
            if not await self._fill(4):
                return None
            size = struct.unpack("!H", self.buffer[2:4])[0]
            offset = 4
        elif size == 127:
            if not await self._fill(10):
                return None
            size = struct.unpack("!Q", self.buffer[2:10])[0]
            offset = 10
        assert not self.buffer[1] & 0x80, "server frames are not masked"
        if not await self._fill(offset + size):
            return None
        opcode = self.buffer[0] & 0x0F
        payload = bytes(self.buffer[offset : offset + size])
        del self.buffer[: offset + size]
        return opcode, payload

    async def until(self, opcode: int) -> bytes:
        """The payload of the next frame with ``opcode``; fails at the end of the stream."""
        while True:
            frame = await self.frame()
            assert frame is not None, f"stream ended before a frame with opcode {opcode:#x}"
            if frame[0] == opcode:
                return frame[1]

    async def message(self, kind: str) -> dict[str, Any]:
        """The next text message of type ``kind``."""
        while True:
            decoded = json.loads(await self.until(OP_TEXT))
            if decoded["type"] == kind:
                assert isinstance(decoded, dict)
                return decoded

    async def close_code(self) -> int:
        payload = await self.until(OP_CLOSE)
        code: int = struct.unpack("!H", payload[:2])[0]
        return code
