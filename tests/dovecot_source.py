"""A private Dovecot imapd as a migration source for tests (and benchmarks).

Its own ``base_dir``, passwd-file, Maildirs and a port on 127.0.0.1; users
with plain passwords, and master users (``master = yes`` passdb) who may
log in as anyone with SASL PLAIN's authorization identity.  Mail is put in
over IMAP, so Dovecot assigns UIDVALIDITY and UIDs as it would for real.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from imapclient import IMAPClient  # type: ignore[import-untyped]

DOVECOT = "/usr/sbin/dovecot"
NOBODY = 65534


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            if s.recv(4):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"dovecot did not answer on port {port}")
        time.sleep(0.1)


def issue_test_certificate(directory: Path) -> tuple[Path, Path]:
    """A CA (``directory/ca.pem``) and a server certificate for 127.0.0.1 it
    signed; returns the server's certificate and key files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test source CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class DovecotSource:
    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        masters: dict[str, str] | None = None,
        *,
        reuse_processes: bool = False,
        tls: bool = False,
    ) -> None:
        """``reuse_processes``: Dovecot's high-performance login mode (login
        processes serve many connections, imap processes many sessions), as
        large sites run it; the default starts processes per connection.
        ``tls``: an implicit-TLS listener too (``tls_port``), its certificate
        for 127.0.0.1 issued by a CA of its own (``ca_file``)."""
        self.base = directory / "dovecot"
        self.users = users
        self.masters = masters or {}
        self.reuse_processes = reuse_processes
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.ca_file = self.base / "ca.pem"
        self.port = free_port()
        self.conf = self.base / "dovecot.conf"
        self._write_config()

    def _write_config(self) -> None:
        base = self.base
        for sub in ("run", "state", "mail"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            uid = gid = NOBODY
        for user in self.users:
            (base / "mail" / user).mkdir(exist_ok=True)
        if os.getuid() == 0:
            subprocess.run(["chown", "-R", f"{uid}:{gid}", str(base / "mail")], check=True)
            # The mail user walks down to its mail from the temporary directory.
            for p in [base, *base.parents]:
                if p == Path("/tmp") or p == Path("/"):
                    break
                p.chmod(p.stat().st_mode | 0o001)
        ssl_conf = "ssl = no\n"
        if self.tls:
            cert, key = issue_test_certificate(base)
            ssl_conf = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
        (base / "users").write_text("".join(f"{u}:{{PLAIN}}{pw}\n" for u, pw in self.users.items()))
        (base / "masters").write_text(
            "".join(f"{u}:{{PLAIN}}{pw}\n" for u, pw in self.masters.items())
        )
        self.conf.write_text(
            f"base_dir = {base}/run\nstate_dir = {base}/state\n"
            f"log_path = {base}/dovecot.log\n"
            "protocols = imap\nlisten = 127.0.0.1\n"
            + ssl_conf
            + "disable_plaintext_auth = no\nauth_mechanisms = plain login\n"
            "mail_location = maildir:~/Maildir\n"
            f"first_valid_uid = {min(uid, 500) or 1}\nfirst_valid_gid = {min(gid, 500) or 1}\n"
            f"passdb {{\n  driver = passwd-file\n  master = yes\n  args = {base}/masters\n}}\n"
            f"passdb {{\n  driver = passwd-file\n  args = {base}/users\n}}\n"
            f"userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={base}/mail/%u\n}}\n"
            "protocol imap {\n  mail_max_userip_connections = 100\n}\n"
            "service imap-login {\n"
            + ("  service_count = 0\n  process_min_avail = 2\n" if self.reuse_processes else "")
            + f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.port}\n  }}\n"
            + (
                f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.tls_port}\n"
                "    ssl = yes\n  }\n"
                if self.tls
                else "  inet_listener imaps {\n    port = 0\n  }\n"
            )
            + "}\n"
            "service stats {\n  unix_listener stats-writer {\n    mode = 0666\n  }\n}\n"
            + (
                "service imap {\n  service_count = 1000\n  process_min_avail = 4\n}\n"
                if self.reuse_processes
                else ""
            )
        )

    def start(self) -> None:
        subprocess.run(
            [DOVECOT, "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        pid: int | None = None
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.base / "run" / "master.pid").read_text().strip())
        subprocess.run(
            [DOVECOT, "-c", str(self.conf), "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if pid is None:
            return
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        """The server gone at once, mid-session (SIGKILL to its process group:
        the master leads it), as in a crash or a network cut; ``start`` brings
        it back on the same port with the same mail."""
        pid_file = self.base / "run" / "master.pid"
        pid = int(pid_file.read_text().strip())
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid_file.unlink(missing_ok=True)

    def client(self, user: str) -> IMAPClient:
        """A logged-in client of ``user`` (folder names decoded, times with zones)."""
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.normalise_times = False
        client.login(user, self.users[user])
        return client

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
