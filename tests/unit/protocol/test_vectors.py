"""The spec's test vectors (protocol-spec/vectors/) round-trip both ways, and type-check."""

from __future__ import annotations

import pytest

from replicad.errors import ProtocolError
from replicad.protocol import commands as c
from replicad.protocol.frames import pack_frame, unpack_frame
from replicad.protocol.text import parse, render

from .conftest import load_vectors, vector_text

VECTORS = load_vectors()
IDS = [f"{verb}:{v['name']}" for verb, v in VECTORS]


def test_every_verb_has_vectors() -> None:
    verbs = {verb for verb, _ in VECTORS}
    data_verbs = {"MAILBOX": "MAILBOXES"}  # * MAILBOX lives with its command
    expected = set(c.COMMANDS) | {data_verbs.get(v, v) for v in c.UNTAGGED_RECORDS}
    assert expected <= verbs


@pytest.mark.parametrize(("verb", "vector"), VECTORS, ids=IDS)
def test_text_to_msgpack(verb: str, vector: dict[str, str]) -> None:
    frame = parse(vector_text(vector))
    assert pack_frame(frame).hex() == vector["msgpack"]


@pytest.mark.parametrize(("verb", "vector"), VECTORS, ids=IDS)
def test_msgpack_to_text(verb: str, vector: dict[str, str]) -> None:
    frame = unpack_frame(bytes.fromhex(vector["msgpack"]))
    assert render(frame) == vector_text(vector)


@pytest.mark.parametrize(("verb", "vector"), VECTORS, ids=IDS)
def test_vector_is_a_valid_typed_frame(verb: str, vector: dict[str, str]) -> None:
    """Every vector types and re-encodes to itself, but those marked ``refused``:
    well-formed msgpack and text that a receiver refuses (ProtocolError)."""
    frame = unpack_frame(bytes.fromhex(vector["msgpack"]))
    if "refused" in vector:
        with pytest.raises(ProtocolError, match=vector["refused"]):
            c.decode(frame)
        return
    message = c.decode(frame)
    if isinstance(message, c.CommandFrame):
        assert verb == message.command.VERB
        again = c.encode_command(message.tag, message.command)
    elif isinstance(message, c.UntaggedFrame):
        again = c.encode_untagged(message.data)
    else:
        again = frame
        if message.status is c.Status.OK:
            payload = c.decode_ok(c.COMMANDS[verb], message)
            again = c.encode_ok(message.tag, payload)
    assert again == frame
