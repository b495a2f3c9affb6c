"""The errors ``../shared/spec/PROTOCOL.md`` defines, as exceptions that carry their code.

A refusal knows its close code and the ``error`` content the client is told
first (section 2, 4.2); a limit knows its close code (section 3.4); a producer
whose first message is no ``hello`` knows its ``error`` and close (4.1); a bad
client message knows the ``warning`` it earns (the connection stays). So the
code and the words live here once, not as literals where a connection ends.
"""

from __future__ import annotations

from typing import ClassVar, Final

from trio_ws.core.messages import ErrorMessage, WarningMessage

DO_NOT_RETRY: Final = range(4000, 5000)
"""Close codes that tell a client not to reconnect (PROTOCOL.md 2); any other may."""


class ProtocolError(Exception):
    """An error the protocol names; ``str()`` is what the peer is told."""

    code: ClassVar[int | None] = None
    """The websocket close code it ends the connection with; None when it does not."""


class Refusal(ProtocolError):
    """A websocket accepted only to be told ``error`` and closed with ``code`` (4xxx:
    do not retry; 1008, 1011 and 1013: retry later) and ``reason``."""

    code: ClassVar[int]
    content: ClassVar[str]
    reason: ClassVar[str | None] = None
    """The close frame's reason when it is not the content."""

    def __init__(self, content: str | None = None) -> None:
        super().__init__(self.content if content is None else content)

    def message(self) -> ErrorMessage:
        """The ``error`` message sent just before the close."""
        return {"type": "error", "content": str(self)}

    @property
    def close_reason(self) -> str:
        return self.reason if self.reason is not None else str(self)


class InvalidProjectName(Refusal):
    """The path's project name is not ``^[A-Za-z0-9_-]{1,50}$``."""

    code = 4000
    content = "Invalid project name"


class Unauthorized(Refusal):
    """A subscriber without the token where one is required."""

    code = 4001
    content = "Unauthorized"


class ProjectNotFound(Refusal):
    """The name is not registered."""

    code = 4004
    content = "Project not found in registry"


class ProjectDirectoryNotFound(Refusal):
    """The name is registered but its directory is gone."""

    code = 4004
    content = "Project directory not found"


class StreamTaken(Refusal):
    """A second producer for a stream that has one (PROTOCOL.md 4.2)."""

    code = 4009
    content = "stream already has a producer"


class LimitExceeded(ProtocolError):
    """A client went past one of the inbound limits of PROTOCOL.md 3.4."""

    code: ClassVar[int]


class MessageTooBig(LimitExceeded):
    """An inbound frame over the size limit."""

    code = 1009


class TooManyMessages(LimitExceeded):
    """More inbound messages in a window than the rate limit allows."""

    code = 1008


class ExpectedHello(Refusal):
    """A producer whose first message is not a valid ``hello`` (PROTOCOL.md 4.1): told
    ``error`` and closed 1008, a policy close it may retry after (fixed)."""

    code = 1008
    content = 'first message must be {"type":"hello","producer":..,"stream":..}'
    reason = "expected hello"


class JournalUnavailable(Refusal):
    """The project's journal cannot be opened or read now: retry later (1011)."""

    code = 1011
    content = "project journal unavailable"


class ServerBusy(Refusal):
    """The server holds as many projects as it may: retry later (1013); the content
    says which limit."""

    code = 1013
    content = "server busy"


class BadClientMessage(ProtocolError):
    """A frame that is not a JSON object: answered with a ``warning``, the connection stays."""

    source: ClassVar[str] = "protocol"

    def warning(self) -> WarningMessage:
        """The ``warning`` the sender is given."""
        return {"type": "warning", "source": self.source, "content": str(self)}
