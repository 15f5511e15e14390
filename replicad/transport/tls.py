"""TLS 1.3 contexts for node-to-node links, and peer identity checks (I9).

Every link is mutually authenticated: both ends present a certificate signed
by the cluster CA, which is the *only* trust anchor (no system store, so a
certificate from a public CA can never pass). A node's identity is the single
DNS subjectAltName of its certificate (see :mod:`replicad.pki`); the dialling
side checks it against the node it meant to reach, the accepting side reads
it to learn who called.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from replicad import pki
from replicad.errors import BadInputError, ConfigError, ProtocolError


class LinkRefusedError(ProtocolError):
    """A peer was refused during connection setup (I9).

    ``reason`` is a short stable token for logs and metrics
    (``tls-handshake``, ``peer-name``, ``cluster``, ``version``...);
    the message says what was wrong in words an operator can act on.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TlsContexts:
    """The local node's identity and the two SSL contexts its links use."""

    node: str
    cluster: str
    server: ssl.SSLContext
    client: ssl.SSLContext


def _base_context(purpose: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    # TLS 1.3 only: no renegotiation, no legacy ciphers, encrypted certificates,
    # one round trip; every node runs the same software, so nothing older exists.
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    # X509_STRICT rejects malformed certificates that OpenSSL would otherwise
    # tolerate (missing key identifiers, non-critical basicConstraints on a CA).
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise ConfigError(f"tls.ca {ca} does not exist") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"tls.ca {ca} is not a PEM certificate: {exc.reason}") from None
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} does not exist (tls.cert / tls.key)") from None
    except PermissionError as exc:
        raise ConfigError(f"cannot read {exc.filename}: permission denied") from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.cert {cert} and tls.key {key} are unusable or do not match: {exc.reason}"
        ) from None
    return context


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Context for accepting links: the client must present a CA-signed certificate."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key)
    # Links are long-lived and never resumed; tickets would only cost bytes
    # and keep key material around longer.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return context


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Context for dialling links; the server's SAN must be the dialled node."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key)
    context.check_hostname = True
    return context


def load_tls_contexts(ca: Path, cert: Path, key: Path, *, node: str, cluster: str) -> TlsContexts:
    """Build both contexts for ``node`` and check its own certificate first.

    A node whose own certificate names another node, another cluster, or has
    expired would be refused by every peer; saying so at start-up, with the
    command that fixes it, beats a stream of refused links (ConfigError).
    """
    try:
        own = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"tls.cert {cert} does not exist") from None
    except ValueError as exc:
        raise ConfigError(f"tls.cert {cert} is not a PEM certificate: {exc}") from None
    try:
        named = pki.node_name_of_certificate(own)
        cert_cluster = pki.cluster_of_certificate(own)
    except BadInputError as exc:
        raise ConfigError(f"tls.cert {cert}: {exc}") from None
    if named != node:
        raise ConfigError(
            f"tls.cert {cert} is issued to node {named!r}, but this node is {node!r} "
            f"(make one with `replicad pki issue DIR {node}`)"
        )
    if cert_cluster != cluster:
        raise ConfigError(
            f"tls.cert {cert} belongs to cluster {cert_cluster!r}, but tls.cluster is {cluster!r}"
        )
    now = dt.datetime.now(dt.UTC)
    if own.not_valid_after_utc <= now:
        raise ConfigError(
            f"tls.cert {cert} expired on {own.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
            f"(reissue with `replicad pki issue --force DIR {node}`)"
        )
    return TlsContexts(
        node=node,
        cluster=cluster,
        server=server_context(ca, cert, key),
        client=client_context(ca, cert, key),
    )


def peer_node_name(der: bytes | None) -> str:
    """The node name of the authenticated peer: its certificate's one DNS SAN.

    ``der`` is ``getpeercert(binary_form=True)`` after a completed handshake
    with CERT_REQUIRED, when the certificate has been verified against the cluster CA. Raises
    LinkRefusedError(reason="peer-certificate") if it names no valid node.
    """
    if not der:
        raise LinkRefusedError("peer-certificate", "peer presented no certificate")
    try:
        return pki.node_name_of_certificate(x509.load_der_x509_certificate(der))
    except (BadInputError, ValueError) as exc:
        raise LinkRefusedError("peer-certificate", f"peer certificate: {exc}") from None
