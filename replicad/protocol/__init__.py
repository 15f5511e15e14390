"""The replicad wire protocol, as pure code (protocol-spec/ is normative).

- :mod:`.frames`: length-prefixed msgpack frames, :class:`FrameDecoder`.
- :mod:`.text`: the one-line text form and its parser.
- :mod:`.commands`: one typed record per verb and reply payload (the public
  entry, ``from replicad.protocol import commands as c``), kept by family in
  :mod:`.session`, :mod:`.cluster`, :mod:`.writes`, :mod:`.changes` and
  :mod:`.resync` over :mod:`.fields` and :mod:`.records`; :mod:`.registry`
  holds the table of permanent wire names (verbs) and types frames by it.
- :mod:`.connection`: the sans-I/O link state machine (start here).
- :mod:`.forwarding`: reply matching for commands proxied to the master.
"""

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
from replicad.protocol.records import Command, Record, Untagged
from replicad.protocol.registry import (
    COMMANDS,
    UNTAGGED_RECORDS,
    CommandFrame,
    ReplyFrame,
    Status,
    UntaggedFrame,
    decode,
)
from replicad.protocol.session import PROTOCOL_VERSION
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
