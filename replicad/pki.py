"""Cluster CA and node certificates (docs/architecture.md §4, invariant I9).

A cluster has one certificate authority; every node holds a key and a
certificate that CA signed. Links accept only peers presenting such a
certificate (I9), and the node name a peer claims is the DNS name in its
certificate's subjectAltName, so a node cannot impersonate another.

Layout of a PKI directory::

    DIR/cluster      the cluster name, one line
    DIR/ca.pem       CA certificate (subject O="replicad cluster NAME")
    DIR/ca.key       CA private key, mode 0600
    DIR/NODE.pem     node certificate (SAN DNS:NODE, serverAuth + clientAuth)
    DIR/NODE.key     node private key, mode 0600

Keys are EC P-256: every TLS 1.3 stack speaks ECDSA P-256, signatures are
small, and key generation is instant. Private keys are written atomically to
a temporary file created 0600 and then linked into place, so a key is never
readable by anyone else, not even for an instant, and a crash never leaves a
half-written key under the final name.

Every file written here is 0600 and a directory created here 0700,
whatever the umask: certificates are not secret, but nothing in a CA
directory is anyone else's business, and one rule is easier to audit.
Installing them elsewhere (deploy/README.md) sets the modes there.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from replicad.errors import AlreadyExistsError, BadInputError

CLUSTER_FILE = "cluster"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"

DEFAULT_CA_DAYS = 3650
DEFAULT_NODE_DAYS = 825

#: Certificates start this long before "now" so that a peer whose clock is a
#: little behind does not reject a freshly issued certificate as not yet valid.
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)

#: Prefix of the subject organisation of every certificate of a cluster.
CLUSTER_ORG_PREFIX = "replicad cluster "

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NODE_NAME_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class CAFiles:
    """Where :func:`init_cluster_ca` wrote the cluster CA."""

    directory: Path
    cluster: str
    certificate: Path
    key: Path


@dataclass(frozen=True)
class NodeFiles:
    """Where :func:`issue_node_certificate` wrote a node's credentials."""

    node: str
    certificate: Path
    key: Path
    not_valid_after: dt.datetime


@dataclass(frozen=True)
class ClusterCA:
    """A loaded cluster CA, able to sign node certificates."""

    directory: Path
    cluster: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)


def validate_node_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise BadInputError.

    A node name is a lowercase DNS host name (labels of ``a-z0-9-``, dots
    between labels, at most 253 characters). It is matched against the
    certificate's DNS subjectAltName by the TLS layer, so it must be something
    hostname matching treats literally: no wildcard, no IP address, no upper
    case (DNS matching ignores case, node ids must not).
    """
    if not name:
        raise BadInputError("node name is empty")
    if len(name) > 253 or not _NODE_NAME_RE.fullmatch(name):
        raise BadInputError(
            f"bad node name {name!r}: use lowercase letters, digits and '-', "
            "optionally dot-separated labels of at most 63 characters"
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise BadInputError(f"bad node name {name!r}: an IP address cannot be a node name")
    if name.replace(".", "").isdigit():
        raise BadInputError(f"bad node name {name!r}: a node name needs a letter or '-'")
    if name in (CA_CERT_FILE.removesuffix(".pem"), CLUSTER_FILE):
        raise BadInputError(f"bad node name {name!r}: reserved for the cluster CA files")
    return name


def validate_cluster_name(name: str) -> str:
    """Return ``name`` if it is a valid cluster name, else raise BadInputError."""
    if not _CLUSTER_NAME_RE.fullmatch(name):
        raise BadInputError(
            f"bad cluster name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` so that it appears complete or not at all.

    The temporary file is created with ``mode`` already applied (O_EXCL, so no
    pre-existing file or symlink is reused), fsynced, then linked to ``path``:
    ``os.link`` refuses an existing target, so without ``force`` a file that
    appeared meanwhile is never clobbered; with ``force`` ``os.replace``
    swaps it atomically.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            # The umask may have removed bits; set exactly what was asked.
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExistsError(f"{path} exists (use --force to replace it)") from None
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    if force:
        return
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise AlreadyExistsError(
            f"refusing to overwrite {', '.join(existing)} (use --force to replace)"
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public: object) -> bytes:
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return b""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def init_cluster_ca(
    directory: Path, cluster: str, *, days: int = DEFAULT_CA_DAYS, force: bool = False
) -> CAFiles:
    """Create the cluster CA in ``directory`` (created 0700 if missing).

    Writes ``cluster``, ``ca.pem`` and ``ca.key`` (0600). Raises
    AlreadyExistsError if any exists and ``force`` is false, BadInputError for
    a bad cluster name or validity.
    """
    validate_cluster_name(cluster)
    if days < 1:
        raise BadInputError(f"--days must be at least 1, not {days}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BadInputError(f"{directory} exists and is not a directory")
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # whatever the umask
    cert_path = directory / CA_CERT_FILE
    key_path = directory / CA_KEY_FILE
    cluster_path = directory / CLUSTER_FILE
    _refuse_existing((cert_path, key_path, cluster_path), force)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER_ORG_PREFIX + cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, f"replicad CA {cluster}"),
        ]
    )
    now = _now()
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a certificate without its key is useless, the reverse is
    # merely incomplete and `--force` repairs it.
    write_file_atomically(key_path, _key_pem(key), mode=0o600, force=force)
    write_file_atomically(
        cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o600, force=force
    )
    write_file_atomically(cluster_path, f"{cluster}\n".encode(), mode=0o600, force=force)
    return CAFiles(directory=directory, cluster=cluster, certificate=cert_path, key=key_path)


def read_cluster_name(directory: Path) -> str:
    """The cluster name recorded in ``directory/cluster``."""
    path = Path(directory) / CLUSTER_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BadInputError(
            f"{path} not found: {directory} is not a cluster CA directory "
            "(create one with `replicad pki init DIR --cluster NAME`)"
        ) from None
    return validate_cluster_name(text)


def load_cluster_ca(directory: Path) -> ClusterCA:
    """Load the CA of ``directory`` for signing; BadInputError if unusable.

    Like ssh with an unprotected identity file, a CA key readable by group or
    others is refused: whoever can read it can mint node identities (I9).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError(
            f"CA directory {directory} does not exist "
            "(create it with `replicad pki init DIR --cluster NAME`)"
        )
    cluster = read_cluster_name(directory)
    cert_path = directory / CA_CERT_FILE
    key_path = directory / CA_KEY_FILE
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key_mode = stat.S_IMODE(key_path.stat().st_mode)
        if key_mode & 0o077:
            raise BadInputError(
                f"{key_path} is accessible by others (mode {key_mode:04o}); "
                f"run `chmod 600 {key_path}`"
            )
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise BadInputError(f"{exc.filename} not found: incomplete CA directory") from None
    except ValueError as exc:
        raise BadInputError(f"unreadable CA file in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadInputError(f"{key_path} is not an EC private key")
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise BadInputError(f"{key_path} does not belong to {cert_path}")
    if cluster_of_certificate(certificate) != cluster:
        raise BadInputError(
            f"{cert_path} is the CA of cluster {cluster_of_certificate(certificate)!r}, "
            f"but {directory / CLUSTER_FILE} says {cluster!r}"
        )
    return ClusterCA(directory=directory, cluster=cluster, certificate=certificate, key=key)


def issue_node_certificate(
    directory: Path,
    node: str,
    *,
    days: int = DEFAULT_NODE_DAYS,
    not_before: dt.datetime | None = None,
    force: bool = False,
) -> NodeFiles:
    """Make ``directory/NODE.key`` (0600) and ``NODE.pem`` signed by the cluster CA.

    The certificate names the node as its only DNS subjectAltName (what the
    TLS layer matches, I9) and allows both server and client authentication,
    since every link is mutually authenticated. ``not_before`` (default: now
    minus the clock-skew allowance) exists so that tests can make certificates
    that are already expired. A certificate may not outlive its CA.
    """
    validate_node_name(node)
    if days < 1:
        raise BadInputError(f"--days must be at least 1, not {days}")
    ca = load_cluster_ca(directory)
    cert_path = ca.directory / f"{node}.pem"
    key_path = ca.directory / f"{node}.key"
    _refuse_existing((cert_path, key_path), force)

    start = not_before if not_before is not None else _now() - CLOCK_SKEW_ALLOWANCE
    end = start + dt.timedelta(days=days)
    ca_end = ca.certificate.not_valid_after_utc
    if end > ca_end:
        raise BadInputError(
            f"a {days}-day certificate would outlive the cluster CA (valid until "
            f"{ca_end:%Y-%m-%d}); use a smaller --days"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, CLUSTER_ORG_PREFIX + ca.cluster),
                    x509.NameAttribute(NameOID.COMMON_NAME, node),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    write_file_atomically(key_path, _key_pem(key), mode=0o600, force=force)
    write_file_atomically(
        cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o600, force=force
    )
    return NodeFiles(
        node=node, certificate=cert_path, key=key_path, not_valid_after=end.astimezone(dt.UTC)
    )


def node_name_of_certificate(certificate: x509.Certificate) -> str:
    """The node name a certificate was issued to: its single DNS subjectAltName.

    Raises BadInputError if there is not exactly one DNS name: certificates
    made by :func:`issue_node_certificate` always have exactly one, and
    anything else is not a node identity.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise BadInputError("certificate has no subjectAltName") from None
    names = san.value.get_values_for_type(x509.DNSName)
    if len(names) != 1:
        raise BadInputError(f"certificate has {len(names)} DNS names, expected exactly one")
    return validate_node_name(names[0])


def cluster_of_certificate(certificate: x509.Certificate) -> str:
    """The cluster name in a certificate's subject organisation."""
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        value = attribute.value
        if isinstance(value, str) and value.startswith(CLUSTER_ORG_PREFIX):
            return value.removeprefix(CLUSTER_ORG_PREFIX)
    raise BadInputError("certificate subject names no replicad cluster")
