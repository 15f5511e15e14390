"""Shared helpers for the protocol tests: the spec's vectors and record strategies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from replicad.blob import Blob
from replicad.flags import SYSTEM_FLAGS, sorted_flags
from replicad.protocol import commands as c
from replicad.uidset import UidSet

VECTORS_DIR = Path(__file__).resolve().parents[3] / "protocol-spec" / "vectors"


def load_vectors() -> list[tuple[str, dict[str, str]]]:
    out = []
    for path in sorted(VECTORS_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out.extend((doc["verb"], vector) for vector in doc["vectors"])
    return out


_KEYWORDS = ("$Junk", "$Forwarded", "Work", "todo")


def _flags() -> st.SearchStrategy[tuple[str, ...]]:
    return st.sets(st.sampled_from(SYSTEM_FLAGS + _KEYWORDS), max_size=4).map(
        lambda s: tuple(sorted_flags(s))
    )


def _uids(allow_star: bool) -> st.SearchStrategy[UidSet]:
    plain = st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=6).map(UidSet.of)
    if not allow_star:
        return plain
    star = st.integers(1, 2**32 - 1).map(lambda n: UidSet.parse(f"{n}:*"))
    return st.one_of(plain, star)


_NAME_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def strategy_for(kind: c.FieldType) -> st.SearchStrategy[Any]:
    if isinstance(kind, c.UInt):
        return st.integers(kind.low, kind.high)
    if isinstance(kind, c.Text):
        return st.text(_NAME_TEXT, min_size=kind.min_len, max_size=min(kind.max_len, 20))
    if isinstance(kind, c.Pattern):
        if kind.pattern.pattern == "META|BODY":
            return st.sampled_from(["META", "BODY"])
        return st.from_regex(kind.pattern, fullmatch=True)
    if isinstance(kind, c.Octets):
        return st.binary(min_size=kind.min_len, max_size=min(kind.max_len, 80))
    if isinstance(kind, c.BlobField):
        # Both codecs: text compresses (zstd), short or random octets do not (raw).
        return st.one_of(
            st.binary(max_size=80).map(Blob.raw),
            st.text(max_size=200).map(lambda t: Blob.compress(t.encode() * 20)),
        )
    if isinstance(kind, c.Uids):
        return _uids(kind.allow_star)
    if isinstance(kind, c.FlagList):
        return _flags()
    if isinstance(kind, c.MarkList):
        register = st.tuples(st.integers(0, c.MAX_STAMP), st.booleans())
        return st.dictionaries(st.sampled_from(SYSTEM_FLAGS + _KEYWORDS), register, max_size=4).map(
            lambda d: tuple((f, s, p) for f, (s, p) in sorted(d.items()))
        )
    if isinstance(kind, c.Optional):
        return st.none() | strategy_for(kind.inner)
    if isinstance(kind, c.ListOf):
        return st.lists(strategy_for(kind.item), max_size=4).map(tuple)
    if isinstance(kind, c.Nested):
        return record_strategy(kind.record)
    if isinstance(kind, c.OneOf):
        return st.one_of(*(record_strategy(r) for r in kind.records.values()))
    raise AssertionError(f"no strategy for {kind!r}")


def record_strategy(record: type[c.Record]) -> st.SearchStrategy[Any]:
    names = c._field_names(record)
    fields = {n: strategy_for(k) for n, k in zip(names, record.SCHEMA, strict=True)}
    strategy = st.fixed_dictionaries(fields)
    if record in (c.ExpungeChange, c.StoreChange):
        # One GUID per UID: draw the UIDs, then that many GUIDs.
        uids = st.sets(st.integers(1, 2**32 - 1), min_size=1, max_size=6)
        strategy = st.fixed_dictionaries({**fields, "uids": uids}).map(
            lambda d: {
                **d,
                "uids": UidSet.of(d["uids"]),
                "guids": tuple(
                    bytes([i]) * (8 if record is c.StoreChange else 16)
                    for i in range(len(d["uids"]))
                ),
            }
        )
    if "size" in fields and "body" in fields:
        # A carried body declares the size field's value (verbs.md, "Bodies").
        strategy = strategy.map(lambda d: d if d["body"] is None else {**d, "size": d["body"].size})
    if "add" in fields and "remove" in fields:
        strategy = strategy.filter(lambda d: not set(d["add"]) & set(d["remove"]))
    return strategy.map(lambda d: record(**d))


_TAG = st.from_regex(re.compile(r"[A-Za-z0-9.]{1,16}"), fullmatch=True)


def vector_text(vector: dict[str, str]) -> bytes:
    """A vector's text form: ``text`` (UTF-8), or ``text_hex`` when it holds
    octets that are not UTF-8 (a zstd body in a binary literal)."""
    if "text_hex" in vector:
        return bytes.fromhex(vector["text_hex"])
    return vector["text"].encode("utf-8")


@pytest.fixture(scope="session")
def vectors() -> list[tuple[str, dict[str, str]]]:
    return load_vectors()


@pytest.fixture(scope="session")
def tags() -> st.SearchStrategy[str]:
    return _TAG
