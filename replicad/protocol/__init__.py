"""The replicad wire protocol, as pure code (protocol-spec/ is normative).

- :mod:`.frames`: length-prefixed msgpack frames, :class:`FrameDecoder`.
- :mod:`.text`: the one-line text form and its parser.
- :mod:`.commands`: one typed record per verb and reply payload.
- :mod:`.connection`: the sans-I/O link state machine (start here).
- :mod:`.forwarding`: reply matching for commands proxied to the master.
"""

from replicad.protocol.commands import (
    COMMANDS,
    PROTOCOL_VERSION,
    UNTAGGED_RECORDS,
    Command,
    CommandFrame,
    Record,
    ReplyFrame,
    Status,
    Untagged,
    UntaggedFrame,
    decode,
)
from replicad.protocol.connection import (
    CommandReceived,
    CompressionStarted,
    Connection,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    LinkConfig,
    LinkStateError,
    ReplyReceived,
    State,
    UntaggedReceived,
    WindowFullError,
)
from replicad.protocol.forwarding import ForwardTable, Origin
from replicad.protocol.frames import DEFAULT_MAX_FRAME, FrameDecoder, FrameEncoder, encode_frame
from replicad.protocol.text import parse, parse_stream, render

__all__ = [
    "COMMANDS",
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "UNTAGGED_RECORDS",
    "Command",
    "CommandFrame",
    "CommandReceived",
    "CompressionStarted",
    "Connection",
    "ConnectionClosed",
    "Event",
    "ForwardTable",
    "FrameDecoder",
    "FrameEncoder",
    "HandshakeComplete",
    "LinkConfig",
    "LinkStateError",
    "Origin",
    "Record",
    "ReplyFrame",
    "ReplyReceived",
    "State",
    "Status",
    "Untagged",
    "UntaggedFrame",
    "UntaggedReceived",
    "WindowFullError",
    "decode",
    "encode_frame",
    "parse",
    "parse_stream",
    "render",
]
