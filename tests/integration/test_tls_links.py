"""Mutually authenticated TLS links over loopback: who gets in, who is refused (I9).

Every bad peer is followed by a good one, to show the listener keeps serving.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from replicad import pki
from replicad.blob import Blob
from replicad.cli import debug_cmd
from replicad.errors import BadInputError, ProtocolError, UnreachableError
from replicad.protocol.commands import (
    PROTOCOL_VERSION,
    Hello,
    Mbox,
    Ping,
    Pong,
    Record,
    Save,
    SaveOk,
    Status,
    encode_command,
    encode_untagged,
)
from replicad.protocol.connection import (
    CommandReceived,
    ConnectionClosed,
    LinkConfig,
    ReplyReceived,
    plain_chunk,
    zstd_chunk,
)
from replicad.protocol.frames import FrameEncoder
from replicad.protocol.text import parse_stream
from replicad.store.blobs import PreparedBody
from replicad.transport import (
    Link,
    LinkHandler,
    LinkRefusedError,
    TlsContexts,
    client_context,
    load_tls_contexts,
    open_link,
    serve_links,
    server_context,
)
from replicad.transport.gate import HandshakeGate

CLUSTER = "c1"


@dataclass(frozen=True)
class Pki:
    main: Path
    other: Path
    #: n2's key and a certificate the main CA signed for another cluster's name.
    foreign_cluster: Path

    def contexts(
        self, node: str, *, directory: Path | None = None, cluster: str = CLUSTER
    ) -> TlsContexts:
        d = directory or self.main
        return TlsContexts(
            node=node,
            cluster=cluster,
            server=server_context(self.main / "ca.pem", d / f"{node}.pem", d / f"{node}.key"),
            client=client_context(self.main / "ca.pem", d / f"{node}.pem", d / f"{node}.key"),
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    main = tmp_path_factory.mktemp("pki")
    other = tmp_path_factory.mktemp("other-pki")
    pki.init_cluster_ca(main, CLUSTER)
    pki.init_cluster_ca(other, CLUSTER)  # same cluster name, different CA
    for node in ("n1", "n2", "n3"):
        pki.issue_node_certificate(main, node)
    pki.issue_node_certificate(other, "n2")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    pki.issue_node_certificate(main, "old", days=1, not_before=past)
    foreign_cluster = tmp_path_factory.mktemp("foreign-cluster")
    issue_for_another_cluster(main, foreign_cluster, "n2", "c2")
    return Pki(main, other, foreign_cluster)


def issue_for_another_cluster(ca_dir: Path, out: Path, node: str, cluster: str) -> None:
    """What `replicad pki` never makes: a certificate from this CA whose subject
    names another cluster (as a CA shared by two clusters would sign)."""
    ca = pki.load_cluster_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, pki.CLUSTER_ORG_PREFIX + cluster),
                    x509.NameAttribute(NameOID.COMMON_NAME, node),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    (out / f"{node}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (out / f"{node}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def reply_to(command: object) -> Record | None:
    """The OK payload a peer answers ``command`` with (PING: no IMAP sessions)."""
    if isinstance(command, Save):
        return SaveOk(1, 1, "n1", 1)
    return Pong(0) if isinstance(command, Ping) else None


async def ping_server(link: Link) -> None:
    """Answer every command OK until the peer goes away."""
    while True:
        event = await link.next_event()
        if isinstance(event, ConnectionClosed):
            return
        if isinstance(event, CommandReceived):
            tag = event.tag
            payload = reply_to(event.command)
            await link.send(lambda c, t=tag, p=payload: c.send_ok(t, p))  # type: ignore[misc]


@dataclass
class Server:
    port: int
    certs: Pki


async def queueing_server(link: Link) -> None:
    """Answer every command OK without ever flushing: the answers must go out
    when next_event is about to wait for more input."""
    while True:
        event = await link.next_event()
        if isinstance(event, ConnectionClosed):
            return
        if isinstance(event, CommandReceived):
            tag = event.tag
            payload = reply_to(event.command)
            link.queue(lambda c, t=tag, p=payload: c.send_ok(t, p))  # type: ignore[misc]


async def _start(
    nursery: trio.Nursery, certs: Pki, timeout: float, handler: LinkHandler = ping_server
) -> Server:
    listeners = await nursery.start(
        lambda task_status: serve_links(
            load_tls_contexts(
                certs.main / "ca.pem",
                certs.main / "n1.pem",
                certs.main / "n1.key",
                node="n1",
                cluster=CLUSTER,
            ),
            handler,
            host="127.0.0.1",
            port=0,
            handshake_timeout=timeout,
            task_status=task_status,
        )
    )
    return Server(listeners[0].socket.getsockname()[1], certs)


@pytest.fixture
async def server(certs: Pki) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        yield await _start(nursery, certs, timeout=0.5)
        nursery.cancel_scope.cancel()


@pytest.fixture
def link_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="replicad.transport"):
        yield caplog


async def wait_for_event(
    caplog: pytest.LogCaptureFixture, event: str, **fields: str
) -> logging.LogRecord:
    """The first record of ``event`` whose fields include ``fields``; waits for it
    because the listener logs from its own task (bounded by a generous guard)."""
    with trio.fail_after(20):
        while True:
            for record in caplog.records:
                got = getattr(record, "fields", {})
                if getattr(record, "event", None) == event and all(
                    got.get(k) == v for k, v in fields.items()
                ):
                    return record
            await trio.sleep(0.01)


async def good_peer_gets_in(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    link = await open_link("127.0.0.1", server.port, "n1", server.certs.contexts("n2"))
    try:
        assert link.peer == "n1" and link.hello.cluster == CLUSTER
        tag = await link.send(lambda c: c.send_command(Ping()))
        reply = await link.next_event()
        assert isinstance(reply, ReplyReceived) and reply.tag == tag
    finally:
        await link.aclose()
    await wait_for_event(caplog, "link-up", side="server", peer="n2")


async def test_good_peer_completes_hello(
    server: Server, link_logs: pytest.LogCaptureFixture
) -> None:
    await good_peer_gets_in(server, link_logs)
    record = await wait_for_event(link_logs, "link-up", side="server")
    assert "peer=n2" in record.getMessage()
    assert "BEGIN" not in link_logs.text  # never key or certificate material


async def test_certificate_from_another_ca_is_refused(
    server: Server, certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    # Trusts the real CA (so it accepts n1) but presents a foreign certificate.
    foreign = TlsContexts(
        node="n2",
        cluster=CLUSTER,
        server=server_context(
            certs.main / "ca.pem", certs.other / "n2.pem", certs.other / "n2.key"
        ),
        client=client_context(
            certs.main / "ca.pem", certs.other / "n2.pem", certs.other / "n2.key"
        ),
    )
    with pytest.raises(LinkRefusedError):
        await open_link("127.0.0.1", server.port, "n1", foreign)
    record = await wait_for_event(
        link_logs, "link-refused", side="server", reason="peer-certificate"
    )
    assert "unable to get local issuer certificate" in record.getMessage()
    await good_peer_gets_in(server, link_logs)


async def test_expired_certificate_is_refused(
    server: Server, certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(LinkRefusedError):
        await open_link("127.0.0.1", server.port, "n1", certs.contexts("old"))
    record = await wait_for_event(
        link_logs, "link-refused", side="server", reason="peer-certificate"
    )
    assert "expired" in record.getMessage()
    await good_peer_gets_in(server, link_logs)


async def test_own_expired_certificate_is_a_config_error(certs: Pki) -> None:
    with pytest.raises(BadInputError, match="expired"):
        load_tls_contexts(
            certs.main / "ca.pem",
            certs.main / "old.pem",
            certs.main / "old.key",
            node="old",
            cluster=CLUSTER,
        )
    with pytest.raises(BadInputError, match="issued to node 'n2'"):
        load_tls_contexts(
            certs.main / "ca.pem",
            certs.main / "n2.pem",
            certs.main / "n2.key",
            node="n3",
            cluster=CLUSTER,
        )


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (LinkConfig(cluster="other", node="n2"), "cluster"),
        (LinkConfig(cluster=CLUSTER, node="n3"), "hello-node"),
        (LinkConfig(cluster=CLUSTER, node="n2", version=99), "version"),
    ],
)
async def test_bad_hello_is_refused(
    server: Server, certs: Pki, link_logs: pytest.LogCaptureFixture, config: LinkConfig, reason: str
) -> None:
    with pytest.raises(LinkRefusedError):
        await open_link("127.0.0.1", server.port, "n1", certs.contexts("n2"), config=config)
    await wait_for_event(link_logs, "link-refused", side="server", reason=reason)
    await good_peer_gets_in(server, link_logs)


async def test_acceptor_refuses_a_certificate_of_another_cluster(
    server: Server, certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    # Signed by the cluster's CA, but for cluster c2; its HELLO claims c1.
    liar = certs.contexts("n2", directory=certs.foreign_cluster)
    with pytest.raises(LinkRefusedError):
        await open_link("127.0.0.1", server.port, "n1", liar)
    record = await wait_for_event(link_logs, "link-refused", side="server", reason="cluster")
    assert "cluster mismatch" in record.getMessage() and "'c2'" in record.getMessage()
    await good_peer_gets_in(server, link_logs)


async def test_dialler_refuses_a_certificate_of_another_cluster(
    certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    liar = certs.contexts("n2", directory=certs.foreign_cluster)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_links(
                liar, ping_server, host="127.0.0.1", port=0, task_status=task_status
            )
        )
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(LinkRefusedError) as raised:
            await open_link("127.0.0.1", port, "n2", certs.contexts("n1"))
        assert raised.value.reason == "cluster"
        assert "cluster mismatch" in raised.value.message
        await wait_for_event(link_logs, "link-refused", side="client", reason="cluster")
        nursery.cancel_scope.cancel()


async def test_plain_tcp_client_is_refused(
    server: Server, link_logs: pytest.LogCaptureFixture
) -> None:
    hello = Hello(PROTOCOL_VERSION, CLUSTER, "n2", ("COMPRESS-ZSTD",), 1 << 20, 16)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(FrameEncoder().encode(encode_untagged(hello)))
        # The server hangs up; nothing but a TLS alert (or nothing) comes back.
        received = b""
        with trio.fail_after(20):
            try:
                while chunk := await stream.receive_some(4096):
                    received += chunk
            except trio.BrokenResourceError:
                pass
        assert b"HELLO" not in received
    await wait_for_event(link_logs, "link-refused", side="server", reason="tls-handshake")
    await good_peer_gets_in(server, link_logs)


async def test_silent_peer_is_dropped_after_the_handshake_timeout(
    server: Server, link_logs: pytest.LogCaptureFixture
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        with trio.fail_after(20):
            with contextlib.suppress(trio.BrokenResourceError):
                assert await stream.receive_some(4096) == b""
    await wait_for_event(link_logs, "link-refused", side="server", reason="handshake-timeout")
    await good_peer_gets_in(server, link_logs)


async def test_a_stalled_peer_does_not_stall_others(
    certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        patient = await _start(nursery, certs, timeout=3600)
        silent = [await trio.open_tcp_stream("127.0.0.1", patient.port) for _ in range(3)]
        try:
            await good_peer_gets_in(patient, link_logs)  # while three handshakes hang
        finally:
            for stream in silent:
                await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_client_refuses_a_server_that_is_another_node(
    server: Server, certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(LinkRefusedError) as raised:
        await open_link("127.0.0.1", server.port, "n3", certs.contexts("n2"))
    assert raised.value.reason == "peer-name"
    await wait_for_event(link_logs, "link-refused", side="client", reason="peer-name")


async def test_unreachable_peer(certs: Pki) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    with pytest.raises(UnreachableError):
        await open_link("127.0.0.1", port, "n1", certs.contexts("n2"))


async def test_compressed_link_carries_save_frames(server: Server, certs: Pki) -> None:
    link = await open_link("127.0.0.1", server.port, "n1", certs.contexts("n2"))
    try:
        assert await link.start_compression()
        mbox = Mbox(1, "alice", "INBOX", b"\x01" * 16, 7, 1, 0, 0)
        await link.send(lambda c: c.send_command(mbox))
        body = Blob.compress(b"Subject: hi\r\n\r\n" + b"hello world\r\n" * 5000)
        tags = {
            await link.send(lambda c: c.send_command(Save(1, 0, b"\x02" * 16, (), body)))
            for _ in range(3)
        }
        replies = set()
        while len(replies) < 4:
            event = await link.next_event()
            assert isinstance(event, ReplyReceived)
            replies.add(event.tag)
        assert tags < replies
    finally:
        await link.aclose()


@pytest.mark.parametrize("compress", [True, False], ids=["zstd", "plain"])
async def test_a_queued_batch_is_written_at_once_and_arrives_intact(
    certs: Pki, compress: bool
) -> None:
    """The runtime's way (queue a batch, flush once) with bodies of every size,
    incompressible ones included; the server's answers are only queued."""
    rng = random.Random(3)
    sizes = [rng.choice([10, 4000, 20_000, 200_000, 1_500_000]) for _ in range(120)]
    bodies = [
        Blob.compress(rng.randbytes(n) if i % 2 else b"mail text\r\n" * (n // 11))
        for i, n in enumerate(sizes)
    ]
    received: list[Blob] = []

    def record(body: Blob) -> SaveOk:
        received.append(body)
        return SaveOk(1, 1, "n1", 1)

    recording_server = saving_server(record)

    async with trio.open_nursery() as nursery:
        server = await _start(nursery, certs, timeout=5, handler=recording_server)
        link = await open_link("127.0.0.1", server.port, "n1", certs.contexts("n2"))
        try:
            if compress:
                assert await link.start_compression()
            link.queue(
                lambda c: c.send_command(Mbox(1, "alice", "INBOX", b"\x01" * 16, 7, 1, 0, 0))
            )
            saves = [Save(1, 0, b"\x02" * 16, (), body) for body in bodies]
            answered = 0
            with trio.fail_after(30):
                while answered < len(bodies) + 1:
                    # As the cluster runtime (replicad.cluster.streams) does: queue what the window
                    # takes, write it with one flush.
                    while saves and link.connection.can_send(saves[0]):
                        save = saves.pop(0)
                        link.queue(lambda c, s=save: c.send_command(s))  # type: ignore[misc]
                    await link.flush()
                    event = await link.next_event()
                    assert isinstance(event, ReplyReceived) and event.status is Status.OK
                    answered += 1
        finally:
            await link.aclose()
            nursery.cancel_scope.cancel()
    assert received == bodies


def saving_server(on_save: Callable[[Blob], SaveOk]) -> Callable[[Link], Awaitable[None]]:
    """A link handler answering every command OK, a SAVE with what ``on_save``
    makes of its body; answers are only queued (the link writes them)."""

    async def serve(link: Link) -> None:
        while True:
            event = await link.next_event()
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, CommandReceived):
                command = event.command
                payload = on_save(command.body) if isinstance(command, Save) else reply_to(command)
                tag = event.tag
                link.queue(lambda c, t=tag, p=payload: c.send_ok(t, p))  # type: ignore[misc]

    return serve


async def test_answers_queued_by_a_handler_go_out_before_it_waits(certs: Pki) -> None:
    async with trio.open_nursery() as nursery:
        server = await _start(nursery, certs, timeout=5, handler=queueing_server)
        link = await open_link("127.0.0.1", server.port, "n1", certs.contexts("n2"))
        try:
            with trio.fail_after(10):
                tags = [link.queue(lambda c: c.send_command(Ping())) for _ in range(5)]
                await link.flush()
                replies = [await link.next_event() for _ in tags]
            assert [r.tag for r in replies if isinstance(r, ReplyReceived)] == tags
        finally:
            await link.aclose()
            nursery.cancel_scope.cancel()


def test_protocol_error_is_what_refusals_are() -> None:
    assert issubclass(LinkRefusedError, ProtocolError)


# --- replicad debug decode -------------------------------------------------------------

FRAMES = [
    encode_untagged(Hello(PROTOCOL_VERSION, CLUSTER, "n2", ("COMPRESS-ZSTD",), 1 << 20, 16)),
    encode_command("a1", Ping()),
    encode_command(
        "a2",
        Save(
            1,
            1_600_000_000,
            b"\x02" * 16,
            ("\\Seen",),
            Blob.compress(b"body\r\nline 2\r\n" * 2000),
        ),
    ),
]


def _capture() -> bytes:
    encoder = FrameEncoder()
    return b"".join(encoder.encode(frame) for frame in FRAMES)


def _decode_args(path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="replicad")
    debug_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["debug", "decode", str(path), *extra])


def test_debug_decode_prints_text_form(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    capture = tmp_path / "link.cap"
    capture.write_bytes(_capture())
    args = _decode_args(capture)
    assert args.handler(args) == 0
    out = capsysbinary.readouterr().out
    hello = b"* HELLO %d c1 n2 (COMPRESS-ZSTD) 1048576 16\r\n" % PROTOCOL_VERSION
    assert out.startswith(hello + b"a1 PING\r\na2 SAVE 1 ")
    assert parse_stream(out.removesuffix(b"\r\n")) == FRAMES


def test_debug_decode_zstd_capture(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    # One direction as a link sends it: zstd chunks, and the SAVE's body in a
    # plain chunk of its own (compression.md §2).
    compressor = zstandard.ZstdCompressor().compressobj()
    data = b""
    for frame in FRAMES:
        head, *body_part = FrameEncoder().encode_parts(frame)
        body = body_part[0] if body_part else b""
        packed = compressor.compress(head) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        data += zstd_chunk(packed) + packed
        if body:
            data += plain_chunk(body) + body
    capture = tmp_path / "link.zst"
    capture.write_bytes(data)
    args = _decode_args(capture, "--zstd")
    assert args.handler(args) == 0
    assert parse_stream(capsysbinary.readouterr().out.removesuffix(b"\r\n")) == FRAMES


def test_debug_decode_truncated_capture(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    capture = tmp_path / "cut.cap"
    capture.write_bytes(_capture()[:-5])
    args = _decode_args(capture)
    with pytest.raises(BadInputError, match="truncated after 2 frames"):
        args.handler(args)
    assert parse_stream(capsysbinary.readouterr().out.removesuffix(b"\r\n")) == FRAMES[:2]


def test_debug_decode_missing_file(tmp_path: Path) -> None:
    args = _decode_args(tmp_path / "nope")
    with pytest.raises(BadInputError, match="does not exist"):
        args.handler(args)


# --- bodies in stored form (verbs.md "Bodies", compression.md §2) ------------------------


async def test_stored_bodies_cross_a_compressed_link_as_they_are(certs: Pki) -> None:
    """Blobs of both codecs over real TLS + zstd: the receiver gets the sender's
    very octets, checks them as its store would, and the link writes about
    the stored size, not the raw one (bodies are not compressed twice)."""
    rng = random.Random(5)
    raw = [
        rng.randbytes(n) if i % 3 == 0 else b"mail text, line after line\r\n" * (n // 28)
        for i, n in enumerate(rng.choice([100, 20_000, 300_000, 2_000_000]) for _ in range(40))
    ]
    blobs = [Blob.compress(body) for body in raw]
    kept: list[tuple[bytes, bytes]] = []

    def store(body: Blob) -> SaveOk:
        prepared = PreparedBody.of(body)  # checked as the store checks it
        kept.append((prepared.body_hash, prepared.stored))
        return SaveOk(len(kept), 1, "n1", 1)

    storing_server = saving_server(store)

    async with trio.open_nursery() as nursery:
        server = await _start(nursery, certs, timeout=5, handler=storing_server)
        link = await open_link("127.0.0.1", server.port, "n1", certs.contexts("n2"))
        try:
            assert await link.start_compression()
            await link.send(
                lambda c: c.send_command(Mbox(1, "alice", "INBOX", b"\x01" * 16, 7, 1, 0, 0))
            )
            before = link.traffic.sent
            with trio.fail_after(30):
                for blob in blobs:
                    while not link.connection.can_send(Save(1, 0, b"\x02" * 16, (), blob)):
                        event = await link.next_event()
                        assert isinstance(event, ReplyReceived) and event.status is Status.OK
                    link.queue(lambda c, b=blob: c.send_command(Save(1, 0, b"\x02" * 16, (), b)))  # type: ignore[misc]
                    await link.flush()
                while link.connection.inflight:
                    event = await link.next_event()
                    assert isinstance(event, ReplyReceived) and event.status is Status.OK
            sent = link.traffic.sent - before
        finally:
            await link.aclose()
            nursery.cancel_scope.cancel()
    assert [stored for _, stored in kept] == [blob.stored for blob in blobs]
    assert [digest for digest, _ in kept] == [hashlib.sha256(body).digest() for body in raw]
    stored_total = sum(len(blob.stored) for blob in blobs)
    assert stored_total < sum(map(len, raw)) * 0.8
    assert abs(sent - stored_total) < stored_total * 0.01


async def test_a_body_with_an_unknown_codec_closes_the_link(server: Server, certs: Pki) -> None:
    link = await open_link("127.0.0.1", server.port, "n1", certs.contexts("n2"))
    try:
        assert await link.start_compression()
        await link.send(
            lambda c: c.send_command(Mbox(1, "alice", "INBOX", b"\x01" * 16, 7, 1, 0, 0))
        )
        bogus = Blob(b"\x07" + b"x" * 40_000, 40_000)  # past the sender's own checks
        await link.send(lambda c: c.send_command(Save(1, 0, b"\x02" * 16, (), bogus)))
        with trio.fail_after(10):
            while True:
                event = await link.next_event()
                if isinstance(event, ConnectionClosed):
                    break
        assert "unknown codec" in event.reason
    finally:
        await link.aclose()


async def test_a_handshake_flood_from_one_address_leaves_room_for_peers(
    certs: Pki, link_logs: pytest.LogCaptureFixture
) -> None:
    """I9: 50 idle connections from 127.0.0.2 hold no more than the
    per-source cap of handshakes; the rest are closed at once, and a peer
    from another address completes its handshake meanwhile."""
    async with trio.open_nursery() as nursery:
        gate = HandshakeGate(max_total=16, max_per_source=4)
        listeners = await nursery.start(
            lambda task_status: serve_links(
                certs.contexts("n1"),
                ping_server,
                host="127.0.0.1",
                port=0,
                handshake_timeout=3600,
                gate=gate,
                task_status=task_status,
            )
        )
        server = Server(listeners[0].socket.getsockname()[1], certs)
        flood = [
            await trio.open_tcp_stream("127.0.0.1", server.port, local_address="127.0.0.2")
            for _ in range(50)
        ]
        try:
            closed = 0
            for stream in flood:
                with trio.move_on_after(0.5):
                    with contextlib.suppress(trio.BrokenResourceError):
                        if await stream.receive_some(1) == b"":
                            closed += 1
            assert closed == 50 - 4  # all but the per-source cap, closed before any TLS
            assert gate.in_progress == 4
            await wait_for_event(link_logs, "link-refused", reason="too-many-handshakes")
            await good_peer_gets_in(server, link_logs)
        finally:
            for stream in flood:
                await stream.aclose()
        nursery.cancel_scope.cancel()
