"""Mutually authenticated TLS channels over TCP, with trio (I9).

A :class:`SecureChannel` is a TLS 1.3 stream whose peer has proved, with a
certificate signed by the cluster CA, to be the node ``peer``. This module
knows nothing of frames or HELLO; :mod:`replicad.transport.link` builds the
protocol handshake on top.

Refusals raise :class:`~replicad.transport.tls.LinkRefusedError` with a
stable ``reason`` token:

``tls-handshake``     the peer does not speak TLS 1.3 (plain TCP, old TLS...)
``peer-certificate``  its certificate is not from the cluster CA, has expired,
                      or names no valid node
``peer-name``         it is a valid node, but not the one we dialled
``cluster``           its certificate is of another cluster (subject O=),
                      whatever its HELLO will say (``cluster mismatch``)

Both sides check all of this, the dialler and the acceptor alike.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from replicad.errors import UnreachableError
from replicad.transport.tls import (
    LinkRefusedError,
    TlsContexts,
    check_peer_cluster,
    peer_node_name,
)


@dataclass(frozen=True)
class SecureChannel:
    """A TLS stream whose peer authenticated as node ``peer``.

    ``remote`` is the peer's transport address, for logs only: identity comes
    from the certificate, never from the address.
    """

    #: A TLS stream on the network; any trio stream in the simulator
    #: (tests/sim), where identity is given rather than proved.
    stream: trio.abc.Stream
    peer: str
    remote: str


def format_remote(stream: trio.SocketStream) -> str:
    """``host:port`` (``[v6]:port``) of the other end of ``stream``."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refusal_from_tls_failure(exc: BaseException) -> LinkRefusedError:
    """Turn a failed handshake (trio wraps SSL errors) into a reasoned refusal."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return LinkRefusedError(
            "peer-certificate", f"peer certificate rejected: {cause.verify_message}"
        )
    if isinstance(cause, ssl.SSLError):
        detail = cause.reason or cause.strerror or str(cause)
        if "CERTIFICATE" in str(detail).upper():
            return LinkRefusedError("peer-certificate", f"peer certificate rejected: {detail}")
        return LinkRefusedError("tls-handshake", f"TLS handshake failed: {detail}")
    if cause is None or isinstance(cause, OSError):
        return LinkRefusedError(
            "tls-handshake", "connection closed during the TLS handshake", cut=True
        )
    return LinkRefusedError("tls-handshake", f"TLS handshake failed: {cause}")


async def _handshake(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        raise _refusal_from_tls_failure(exc) from exc


async def accept_channel(tcp: trio.SocketStream, contexts: TlsContexts) -> SecureChannel:
    """Run the server side of the TLS handshake on an accepted connection.

    No timeout here: the caller bounds the whole setup (TLS and HELLO) with
    one deadline. On refusal the caller closes ``tcp``.
    """
    stream = trio.SSLStream(tcp, contexts.server, server_side=True)
    await _handshake(stream)
    der = stream.getpeercert(binary_form=True)
    peer = peer_node_name(der)
    check_peer_cluster(der, contexts.cluster)
    return SecureChannel(stream=stream, peer=peer, remote=format_remote(tcp))


async def connect_channel(
    host: str,
    port: int,
    expected_node: str,
    contexts: TlsContexts,
    *,
    tcp: trio.SocketStream | None = None,
) -> SecureChannel:
    """Dial ``host:port`` and authenticate the server as ``expected_node``.

    OpenSSL's hostname check (``check_hostname``, SAN matching) already
    refuses another node's certificate; the certificate is read again
    afterwards so that the name we record is the one that was verified.
    ``tcp``, if given, is a connection to ``host:port`` already open (a
    reachability probe's, replicad.cluster.redial): TLS runs over it.
    Raises UnreachableError if no TCP connection can be made.
    """
    if tcp is None:
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise UnreachableError(
                f"cannot connect to {expected_node} at {host}:{port}: {exc.strerror or exc}"
            ) from None
    stream = trio.SSLStream(tcp, contexts.client, server_hostname=expected_node)
    try:
        try:
            await _handshake(stream)
        except LinkRefusedError as exc:
            if "Hostname mismatch" in str(exc) or "IP address mismatch" in str(exc):
                raise LinkRefusedError(
                    "peer-name", f"{host}:{port} is not node {expected_node}: {exc}"
                ) from exc
            raise
        der = stream.getpeercert(binary_form=True)
        peer = peer_node_name(der)
        if peer != expected_node:
            raise LinkRefusedError(
                "peer-name", f"{host}:{port} authenticated as {peer!r}, not {expected_node!r}"
            )
        check_peer_cluster(der, contexts.cluster)
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return SecureChannel(stream=stream, peer=peer, remote=format_remote(tcp))
