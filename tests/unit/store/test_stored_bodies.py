"""Bodies in stored form (replicad.blob, verbs.md "Bodies"): what the store keeps
is what the wire carries, checked on receipt and kept as it came."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import zstandard

from replicad.blob import CODEC_RAW, CODEC_ZSTD, MAX_WINDOW, STREAM_COMPRESS_BYTES, Blob
from replicad.errors import ProtocolError, ReplicadError
from replicad.store.blobs import PreparedBody
from replicad.store.mailstore import MailStore
from replicad.store.replica import Outcome
from replicad.uidset import UidSet

TEXT = b"Subject: minutes\r\n\r\n" + b"The meeting is moved to Thursday.\r\n" * 400
NOISE = bytes(range(256)) * 3  # does not compress: kept raw


def test_compress_picks_the_codec_that_pays() -> None:
    text, noise = Blob.compress(TEXT), Blob.compress(hashlib.sha512(b"x").digest() * 1)
    assert text.codec == CODEC_ZSTD and text.size == len(TEXT)
    assert len(text.stored) < len(TEXT) // 4
    assert noise.codec == CODEC_RAW and noise.stored[1:] == hashlib.sha512(b"x").digest()
    assert text.decompress() == TEXT and noise.decompress() == noise.stored[1:]


def test_parse_reads_the_size_from_the_header_only() -> None:
    blob = Blob.compress(TEXT)
    assert Blob.parse(blob.stored, len(TEXT)) == blob
    # The header alone decides: a payload cut short still parses (decompression refuses it).
    cut = Blob.parse(blob.stored[:20], len(TEXT))
    assert cut.size == len(TEXT)
    with pytest.raises(ProtocolError, match="corrupt"):
        cut.decompress()


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (b"", "empty"),
        (b"\x02abc", "unknown codec"),
        (b"\x01not zstd at all", "not a zstd frame"),
        (b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(TEXT), "size"),
        (b"\x00" + bytes(101), "exceed"),
        (b"\x01" + zstandard.ZstdCompressor(level=3).compress(bytes(101)), "exceeds"),
    ],
    ids=["empty", "codec", "garbage", "no content size", "raw too large", "zstd too large"],
)
def test_parse_refuses(stored: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        Blob.parse(stored, 100)


def test_parse_refuses_a_window_beyond_the_bound() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=24, write_content_size=True
    )
    big = bytes(range(256)) * (1 << 16)  # 16 MiB: the window stays 16 MiB
    frame = zstandard.ZstdCompressor(compression_params=params).compress(big)
    assert zstandard.get_frame_parameters(frame).window_size > MAX_WINDOW
    with pytest.raises(ProtocolError, match="window"):
        Blob.parse(b"\x01" + frame, 1 << 26)


def test_trailing_octets_after_the_frame_are_refused() -> None:
    blob = Blob.compress(TEXT)
    with pytest.raises(ProtocolError, match="corrupt"):
        Blob.parse(blob.stored + b"\x00", len(TEXT)).decompress()
    with pytest.raises(ProtocolError, match="corrupt"):
        Blob.parse(blob.stored + blob.stored[1:], len(TEXT)).decompress()


def test_verify_checks_the_content_address() -> None:
    blob = Blob.compress(TEXT)
    assert blob.verify(hashlib.sha256(TEXT).digest()) == hashlib.sha256(TEXT).digest()
    with pytest.raises(ProtocolError, match="declared"):
        blob.verify(hashlib.sha256(b"another body").digest())


def test_a_received_blob_is_kept_as_it_came() -> None:
    """No decompress/recompress round trip: the stored octets are the sender's."""
    blob = Blob.compress(TEXT)
    prepared = PreparedBody.of(blob)
    assert prepared.stored is blob.stored
    assert prepared.body_hash == hashlib.sha256(TEXT).digest()
    assert prepared.size == len(TEXT)
    assert PreparedBody.of(TEXT) == PreparedBody.make(TEXT)


def test_a_corrupt_blob_is_refused_before_the_store() -> None:
    stored = bytearray(Blob.compress(TEXT).stored)
    stored[len(stored) // 2] ^= 0xFF
    with pytest.raises(ProtocolError):
        PreparedBody.of(Blob.parse(bytes(stored), len(TEXT)))


async def test_replicated_save_keeps_the_blob_and_reads_it_back(tmp_path: Path) -> None:
    """A master's blob, shipped in stored form to a replica: the replica holds the
    same octets, reads the same body, and sends the same blob on."""
    async with (
        MailStore.open(tmp_path / "master", peers=("b",)) as master,
        MailStore.open(tmp_path / "replica", peers=("a",)) as replica,
    ):
        await master.create_mailbox("alice", "INBOX")
        appended = await master.append("alice", "INBOX", TEXT)
        for _, change in await master.outbox(0, 10):
            missing = await replica.missing_bodies(change)
            blobs = list((await master.read_blobs(missing)).values())
            result = await replica.apply_replicated(change, "a", blobs)
            assert result.outcome is Outcome.APPLIED
        sent = (await master.read_blobs([appended.body_hash]))[appended.body_hash]
        kept = (await replica.read_blobs([appended.body_hash]))[appended.body_hash]
        assert kept == sent and kept.codec == CODEC_ZSTD
        assert await replica.read_blob(appended.body_hash) == TEXT
        assert await replica.logical_state() == await master.logical_state()


async def test_a_lying_body_is_never_stored_under_the_claimed_hash(tmp_path: Path) -> None:
    """A * SAVE naming one hash and carrying another body: not applied, and nothing
    is stored under the hash it claimed (the single-instance store stays true)."""
    async with (
        MailStore.open(tmp_path / "master", peers=("b",)) as master,
        MailStore.open(tmp_path / "replica", peers=("a",)) as replica,
    ):
        await master.create_mailbox("alice", "INBOX")
        appended = await master.append("alice", "INBOX", TEXT)
        changes = [change for _, change in await master.outbox(0, 10)]
        await replica.apply_replicated(changes[0], "a")  # the mailbox
        lie = Blob.compress(TEXT.replace(b"Thursday", b"Saturday"))
        results = await replica.apply_replicated_many([(changes[1], [lie])], "a")
        assert isinstance(results[0], ReplicadError)
        assert await replica.body_references(appended.body_hash) == 0
        assert await replica.fetch("alice", "INBOX", UidSet.of([appended.uid])) == []


async def test_a_corrupt_replicated_body_refuses_its_record_alone(
    tmp_path: Path,
) -> None:
    """A body damaged at the source fails its check: that record is refused
    (the runtime leaves its mailbox to the resync) and nothing of it is
    stored, but the rest of the burst is applied and no error escapes, which
    would close the link and have the same body sent again forever (I9)."""
    async with (
        MailStore.open(tmp_path / "master", peers=("b",)) as master,
        MailStore.open(tmp_path / "replica", peers=("a",)) as replica,
    ):
        await master.create_mailbox("alice", "INBOX")
        appended = await master.append("alice", "INBOX", TEXT)
        changes = [change for _, change in await master.outbox(0, 10)]
        stored = bytearray(Blob.compress(TEXT).stored)
        stored[-10] ^= 0x55
        corrupt = Blob.parse(bytes(stored), len(TEXT))
        results = await replica.apply_replicated_many(
            [(changes[0], []), (changes[1], [corrupt])], "a"
        )
        assert not isinstance(results[0], ReplicadError)  # the mailbox: applied
        assert isinstance(results[1], ProtocolError) and "corrupt" in str(results[1])
        assert await replica.body_references(appended.body_hash) == 0
        assert [row[:2] for row in await replica.logical_state()] == [("alice", "INBOX")]
        assert await replica.fetch("alice", "INBOX", UidSet.parse("1:*")) == []


def test_a_large_body_compressed_in_a_stream_is_the_same_stored_form() -> None:
    """Bodies from STREAM_COMPRESS_BYTES on are compressed behind their codec
    octet in one buffer; the result parses, declares its size and inflates back."""
    body = b"line of a large message body\r\n" * (STREAM_COMPRESS_BYTES // 15)
    blob = Blob.compress(body)
    assert blob.stored[0] == CODEC_ZSTD and len(blob.stored) < len(body) // 10
    parsed = Blob.parse(blob.stored, len(body))
    assert parsed.size == len(body)
    assert parsed.decompress() == body
