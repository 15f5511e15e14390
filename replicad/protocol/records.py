"""Records: the base of every wire record, its decoder, and records shared by several families.

A record knows its fields' wire types (its ``SCHEMA``, aligned with its
dataclass fields) and converts with :meth:`Record.to_fields` /
:meth:`Record.from_fields`.  ``from_fields`` checks every field's exact
type and range -- it is the *only* validation a received frame's fields
get (see :class:`~replicad.protocol.frames.FrameDecoder`), so anything
it lets through is safe for the engine (I9).  :class:`Nested` and
:class:`OneOf` are the field types whose values are records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, cast

from replicad.errors import BadInputError, ProtocolError
from replicad.protocol.fields import (
    GUID,
    UID,
    Check,
    FieldType,
    slot_setter,
)
from replicad.protocol.frames import Value

R = TypeVar("R", bound="Record")

# --- records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """A list of typed fields.  Subclasses set ``VERB`` and ``SCHEMA``.

    Subclasses are frozen dataclasses whose fields are all ``__init__``
    fields, aligned with ``SCHEMA``; cross-field rules go in
    ``__post_init__`` and raise ValueError (see :func:`record_decoder`).
    """

    VERB: ClassVar[str] = ""
    SCHEMA: ClassVar[tuple[FieldType, ...]] = ()
    #: Names of fields holding a session-local mailbox id (checked by the link).
    MBOX_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_fields(self) -> list[Value]:
        return [
            kind.encode(getattr(self, name))
            for kind, name in zip(self.SCHEMA, _field_names(type(self)), strict=True)
        ]

    @classmethod
    def from_fields(cls, fields: Sequence[Value]) -> Self:
        """The record whose wire fields are ``fields``; ProtocolError if any is invalid."""
        decode = _DECODERS.get(cls) or record_decoder(cls)
        return cast(Self, decode(fields))


_NAMES: dict[type, tuple[str, ...]] = {}
_DECODERS: dict[type, Callable[[Sequence[Value]], Record]] = {}


def _field_names(cls: type[Record]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        if len(names) != len(cls.SCHEMA):
            raise TypeError(f"{cls.__name__}: SCHEMA does not match its fields")
        _NAMES[cls] = names
    return names


def record_decoder(cls: type[R]) -> Callable[[Sequence[Value]], R]:
    """The function behind ``cls.from_fields``, built once per record class.

    It checks the field count and every field with its type's checker, then
    fills a new instance directly and runs ``__post_init__`` -- the same
    result as ``cls(*values)`` without the generic ``__init__`` (measurably
    the larger part of decoding a small frame, tools/bench/bench_protocol.py).
    A ValueError or BadInputError from ``__post_init__`` (a cross-field
    rule) becomes a ProtocolError.
    """
    cached = _DECODERS.get(cls)
    if cached is not None:
        return cast(Callable[[Sequence[Value]], R], cached)
    names = _field_names(cls)
    if not all(f.init for f in dataclasses.fields(cls)):
        raise TypeError(f"{cls.__name__}: every field of a record must be an __init__ field")
    checks = tuple(kind.checker(name) for kind, name in zip(cls.SCHEMA, names, strict=True))
    steps = tuple(zip(checks, (slot_setter(cls, name) for name in names), strict=True))
    post_init: Callable[[R], None] | None = getattr(cls, "__post_init__", None)
    label = cls.VERB or cls.__name__
    count = len(names)
    new = object.__new__

    def decode(fields: Sequence[Value]) -> R:
        if len(fields) != count:
            raise ProtocolError(f"{label}: expected {count} fields, got {len(fields)}")
        record = new(cls)
        for (check, set_field), value in zip(steps, fields, strict=True):
            set_field(record, check(value))
        if post_init is not None:
            try:
                post_init(record)
            except (ValueError, BadInputError) as exc:
                raise ProtocolError(f"{label}: {exc}") from None
        return record

    _DECODERS[cls] = decode
    return decode


@dataclass(frozen=True, slots=True)
class Empty(Record):
    """The payload of an OK that carries nothing."""


@dataclass(frozen=True, slots=True)
class Command(Record):
    """A tagged request; ``REPLY`` is the record type of its OK payload."""

    REPLY: ClassVar[type[Record]] = Empty


@dataclass(frozen=True, slots=True)
class Untagged(Record):
    """Untagged data: not a request, never answered."""


@dataclass(frozen=True, slots=True)
class Change(Untagged):
    """A record of the master's change stream; ``seq`` is per peer, ACKed cumulatively."""

    seq: int


class Nested(FieldType):
    """A record inlined as a list of its fields."""

    def __init__(self, record: type[Record]) -> None:
        self.record = record

    def encode(self, value: Any) -> Value:
        return value.to_fields()  # type: ignore[no-any-return]

    def checker(self, name: str) -> Check:
        decode = record_decoder(self.record)
        reason = f"{name}: expected a list"

        def check(value: Value) -> Record:
            if type(value) is not list:
                raise ProtocolError(reason)
            return decode(value)

        return check


class OneOf(FieldType):
    """A record chosen by the atom in its first position (UPDATE operations)."""

    def __init__(self, *records: type[Record]) -> None:
        self.records = {r.VERB: r for r in records}

    def encode(self, value: Any) -> Value:
        return [value.VERB, *value.to_fields()]

    def checker(self, name: str) -> Check:
        decoders = {verb: record_decoder(record) for verb, record in self.records.items()}

        def check(value: Value) -> Record:
            if type(value) is not list or not value or type(value[0]) is not str:
                raise ProtocolError(f"{name}: expected (KIND fields...)")
            decode = decoders.get(value[0])
            if decode is None:
                raise ProtocolError(f"{name}: unknown kind {value[0]!r}")
            return decode(value[1:])

        return check


@dataclass(frozen=True, slots=True)
class UidGuid(Record):
    SCHEMA = (UID, GUID)
    uid: int
    guid: bytes
