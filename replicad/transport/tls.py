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
import os
import ssl
import stat
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
    ``cut`` is True when the connection was lost before the peer's TLS
    said anything (reset or closed under the ClientHello): nothing refused
    us, the path is down (a dialler's redial schedule counts it as the peer
    being unreachable, replicad.cluster.redial).
    """

    def __init__(self, reason: str, message: str, *, cut: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.cut = cut


@dataclass(frozen=True)
class CertificateValidity:
    """When one of the node's certificates ends: ``cert`` is ``node`` (its
    own, ``tls.cert``) or ``ca`` (``tls.ca``; of a file holding several CA
    certificates, as during a CA rotation, the one that ends first)."""

    cert: str
    path: Path
    not_after: dt.datetime

    def seconds_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds()


@dataclass(frozen=True)
class TlsContexts:
    """The local node's identity and the two SSL contexts its links use.

    The SSL contexts are read when made: new certificates need new
    contexts (``replicad.node`` makes them on SIGHUP for new links; a link
    keeps the session it was set up with).
    """

    node: str
    cluster: str
    server: ssl.SSLContext
    client: ssl.SSLContext
    #: The end dates of the node's certificate and CA, as loaded.
    certificates: tuple[CertificateValidity, ...] = ()


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


def key_file_problem(key: Path, mode: int, owner: int, *, node_uid: int) -> str | None:
    """Why the private key file ``key``, with ``mode`` and ``owner``, is unsafe, or None.

    PostgreSQL's rule for its ``ssl_key_file`` (ssh's for a key owned by the
    user running it): a key owned by the node's own user must be accessible
    to it alone (0600 or less); a key owned by root may also be readable, not
    writable, by its group (0640 or less: ``root:replicad 0640``, where the
    service reads it through its group and cannot change it, deploy/README.md
    1.3).  Nothing for others, ever; any other owner could read or replace it.
    """
    bits = stat.S_IMODE(mode)
    if owner not in (node_uid, 0):
        return (
            f"is owned by uid {owner}, neither the node's user (uid {node_uid}) nor root; "
            "whoever owns a key can read or replace it"
        )
    allowed = 0o740 if owner == 0 else 0o700
    if bits & ~allowed & 0o777:
        hint = "640" if owner == 0 else "600"
        return (
            f"is accessible by {'others' if bits & 0o007 else 'its group'} (mode {bits:04o}); "
            f"run `chmod {hint} {key}`"
        )
    return None


def check_key_file(key: Path) -> None:
    """Refuse (ConfigError) a private key others could read: see :func:`key_file_problem`.

    Checked before the key is used, so a node never runs on a key that may
    already have leaked; the operator fixes the mode, or issues a new key if
    it may have been read.
    """
    try:
        st = os.stat(key)
    except FileNotFoundError:
        raise ConfigError(f"tls.key {key} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot stat tls.key {key}: {exc.strerror}") from None
    problem = key_file_problem(key, st.st_mode, st.st_uid, node_uid=os.geteuid())
    if problem is not None:
        raise ConfigError(f"tls.key {key} {problem}")


def load_tls_contexts(ca: Path, cert: Path, key: Path, *, node: str, cluster: str) -> TlsContexts:
    """Build both contexts for ``node`` and check its own certificate and key first.

    A node whose own certificate names another node, another cluster, or has
    expired would be refused by every peer; saying so at start-up, with the
    command that fixes it, beats a stream of refused links (ConfigError).
    A key readable by others is refused too (:func:`check_key_file`).
    """
    check_key_file(key)
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
    server = server_context(ca, cert, key)
    client = client_context(ca, cert, key)
    certificates = [CertificateValidity("node", Path(cert), own.not_valid_after_utc)]
    ca_end = _earliest_end(Path(ca))
    if ca_end is not None:
        certificates.append(CertificateValidity("ca", Path(ca), ca_end))
    return TlsContexts(
        node=node,
        cluster=cluster,
        server=server,
        client=client,
        certificates=tuple(certificates),
    )


def _earliest_end(ca: Path) -> dt.datetime | None:
    """The first end date among the certificates of the PEM file ``ca``
    (OpenSSL already accepted it; None if it cannot be read again)."""
    try:
        certificates = x509.load_pem_x509_certificates(ca.read_bytes())
    except (OSError, ValueError):
        return None
    return min((c.not_valid_after_utc for c in certificates), default=None)


def check_peer_cluster(der: bytes | None, cluster: str) -> None:
    """Refuse (reason ``cluster``) a peer whose certificate is of another cluster.

    The cluster name in the certificate's subject organisation (what
    ``replicad pki`` writes, :func:`replicad.pki.cluster_of_certificate`)
    must equal ``tls.cluster``.  HELLO carries the cluster name too, but
    that is the peer's word; the certificate is the CA's, so a CA trusted
    by several clusters (a shared CA, a bundle during a CA rotation) cannot
    let a node of one cluster into another by claiming its name.
    """
    if not der:
        raise LinkRefusedError("peer-certificate", "peer presented no certificate")
    try:
        named = pki.cluster_of_certificate(x509.load_der_x509_certificate(der))
    except (BadInputError, ValueError) as exc:
        raise LinkRefusedError("cluster", f"cluster mismatch: peer certificate: {exc}") from None
    if named != cluster:
        raise LinkRefusedError(
            "cluster",
            f"cluster mismatch: peer certificate is of cluster {named!r}, "
            f"this node's is {cluster!r}",
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
