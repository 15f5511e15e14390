"""Cluster CA and node certificates (replicad.pki, `replicad pki`; I9)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from replicad import pki
from replicad.cli import pki_cmd
from replicad.errors import AlreadyExistsError, BadInputError, ConfigError, ExitCode, ReplicadError
from replicad.transport.tls import check_key_file, key_file_problem


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_cluster_ca(directory, "prod-eu")
    return directory


def test_init_writes_ca_cluster_file_and_private_key_0600(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    files = pki.init_cluster_ca(directory, "prod-eu")
    assert files.certificate == directory / "ca.pem"
    assert files.key == directory / "ca.key"
    assert (directory / "cluster").read_text() == "prod-eu\n"
    assert _mode(directory / "ca.key") == 0o600
    assert _mode(directory) == 0o700
    ca = _cert(files.certificate)
    orgs = [a.value for a in ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["replicad cluster prod-eu"]
    assert ca.subject == ca.issuer
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert pki.cluster_of_certificate(ca) == "prod-eu"
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


def test_issue_makes_a_node_certificate_signed_by_the_ca(ca_dir: Path) -> None:
    files = pki.issue_node_certificate(ca_dir, "mx1.example.net", days=30)
    assert files.certificate == ca_dir / "mx1.example.net.pem"
    assert _mode(files.key) == 0o600
    cert = _cert(files.certificate)
    ca = _cert(ca_dir / "ca.pem")
    cert.verify_directly_issued_by(ca)
    assert pki.node_name_of_certificate(cert) == "mx1.example.net"
    assert pki.cluster_of_certificate(cert) == "prod-eu"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=30)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_issue_with_validity_in_the_past_gives_an_expired_certificate(ca_dir: Path) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    files = pki.issue_node_certificate(ca_dir, "n1", days=1, not_before=start)
    assert _cert(files.certificate).not_valid_after_utc < dt.datetime.now(dt.UTC)


def test_key_is_never_readable_by_others_while_written(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes_while_writing: list[int] = []
    real_write = os.write

    def spying_write(fd: int, data: bytes | memoryview) -> int:
        modes_while_writing.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    old_umask = os.umask(0)  # the most permissive umask must not matter
    try:
        monkeypatch.setattr(os, "write", spying_write)
        pki.issue_node_certificate(ca_dir, "n1")
    finally:
        os.umask(old_umask)
    # key written first, then the certificate, both 0600
    assert modes_while_writing[0] == 0o600
    assert _mode(ca_dir / "n1.key") == 0o600


def test_every_file_is_0600_and_the_directory_0700_under_a_permissive_umask(
    tmp_path: Path,
) -> None:
    old_umask = os.umask(0o022)
    try:
        directory = tmp_path / "new" / "pki"
        pki.init_cluster_ca(directory, "c1")
        pki.issue_node_certificate(directory, "n1")
    finally:
        os.umask(old_umask)
    assert _mode(directory) == 0o700
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["ca.key", "ca.pem", "cluster", "n1.key", "n1.pem"]
    assert {name: _mode(directory / name) for name in names} == dict.fromkeys(names, 0o600)


def test_refuses_to_overwrite_without_force(ca_dir: Path) -> None:
    first = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(AlreadyExistsError, match="--force"):
        pki.init_cluster_ca(ca_dir, "prod-eu")
    assert (ca_dir / "ca.pem").read_bytes() == first

    pki.issue_node_certificate(ca_dir, "n1")
    key = (ca_dir / "n1.key").read_bytes()
    with pytest.raises(AlreadyExistsError) as raised:
        pki.issue_node_certificate(ca_dir, "n1")
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    assert (ca_dir / "n1.key").read_bytes() == key

    pki.issue_node_certificate(ca_dir, "n1", force=True)
    assert (ca_dir / "n1.key").read_bytes() != key
    assert _mode(ca_dir / "n1.key") == 0o600


def test_write_refuses_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "x.key"
    target.write_bytes(b"theirs")
    with pytest.raises(AlreadyExistsError):
        pki.write_file_atomically(target, b"ours", mode=0o600, force=False)
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.key"]


@pytest.mark.parametrize(
    "name",
    ["", "N1", "node_1", "-n1", "n1-", "a..b", "*.example", "10.0.0.1", "123", "ca", "x" * 64],
)
def test_bad_node_names_are_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(BadInputError):
        pki.issue_node_certificate(ca_dir, name)


@pytest.mark.parametrize("name", ["n1", "mx-01", "a", "mx1.dc2.example.net", "1n"])
def test_good_node_names(name: str) -> None:
    assert pki.validate_node_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "-x", "x/y", "x" * 64])
def test_bad_cluster_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInputError):
        pki.init_cluster_ca(tmp_path / "pki", name)
    assert not (tmp_path / "pki" / "ca.key").exists()


def test_issue_without_a_ca_directory_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="pki init"):
        pki.issue_node_certificate(tmp_path / "missing", "n1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="not a cluster CA directory"):
        pki.issue_node_certificate(tmp_path / "empty", "n1")


def test_ca_key_readable_by_others_is_refused(ca_dir: Path) -> None:
    (ca_dir / "ca.key").chmod(0o644)
    with pytest.raises(BadInputError, match="chmod 600"):
        pki.issue_node_certificate(ca_dir, "n1")
    assert not (ca_dir / "n1.key").exists()


def test_certificate_may_not_outlive_the_ca(tmp_path: Path) -> None:
    pki.init_cluster_ca(tmp_path, "c", days=10)
    with pytest.raises(BadInputError, match="outlive"):
        pki.issue_node_certificate(tmp_path, "n1", days=30)


def test_mismatched_cluster_file_is_detected(ca_dir: Path) -> None:
    (ca_dir / "cluster").write_text("other\n")
    with pytest.raises(BadInputError, match="cluster"):
        pki.issue_node_certificate(ca_dir, "n1")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replicad")
    parser.add_argument("-f", dest="format", default="table")
    pki_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["pki", "init", str(tmp_path / "ca"), "--cluster", "lab"])
    assert args.handler(args) == 0
    args = parser.parse_args(["-f", "json", "pki", "issue", str(tmp_path / "ca"), "n2"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert '"node": "n2"' in out
    assert _mode(tmp_path / "ca" / "n2.key") == 0o600
    args = parser.parse_args(["pki", "issue", str(tmp_path / "ca"), "n2"])
    with pytest.raises(ReplicadError) as raised:
        args.handler(args)
    assert raised.value.exit_code == ExitCode.BAD_INPUT


# --- the node key's mode (checked by the node at start) ------------------------------------

NODE_UID = 1000


@pytest.mark.parametrize(
    ("mode", "owner", "problem"),
    [
        (0o600, NODE_UID, None),
        (0o400, NODE_UID, None),
        (0o640, NODE_UID, "accessible by its group (mode 0640); run `chmod 600 /k`"),
        (0o644, NODE_UID, "accessible by others (mode 0644); run `chmod 600 /k`"),
        (0o640, 0, None),  # root:replicad 0640, as deploy/README.md installs it
        (0o600, 0, None),
        (0o660, 0, "accessible by its group (mode 0660); run `chmod 640 /k`"),
        (0o644, 0, "accessible by others (mode 0644); run `chmod 640 /k`"),
        (0o604, 0, "accessible by others (mode 0604)"),
        (0o600, 1001, "owned by uid 1001, neither the node's user (uid 1000) nor root"),
    ],
)
def test_key_file_rule(mode: int, owner: int, problem: str | None) -> None:
    got = key_file_problem(Path("/k"), stat.S_IFREG | mode, owner, node_uid=NODE_UID)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_key_file_check_names_the_file_and_is_a_config_error(tmp_path: Path) -> None:
    key = tmp_path / "n1.key"
    key.write_bytes(b"")
    key.chmod(0o604)
    with pytest.raises(ConfigError, match=rf"tls.key {key} is accessible by others") as info:
        check_key_file(key)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    key.chmod(0o600)
    check_key_file(key)
    with pytest.raises(ConfigError, match="does not exist"):
        check_key_file(tmp_path / "missing.key")
