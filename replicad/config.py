"""The node configuration: one TOML file, validated into frozen dataclasses.

Every problem is a :class:`~replicad.errors.ConfigError` (exit 65) whose
message names the offending key as ``section.key`` so an operator can go
straight to the line.  Unknown keys are errors, not warnings: a typo such as
``map_sise`` silently ignored would leave a node running with a default the
operator believed they had changed.  Relative paths are resolved against the
directory of the config file, so a config directory can be moved as a whole.

Config path resolution (docs/architecture.md §9): ``-c CONFIG``, else ``$REPLICAD_CONFIG``,
else ``/etc/replicad/replicad.toml``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from replicad.blob import MAX_BODY
from replicad.cluster.durability import DurabilityLevel
from replicad.cluster.masters import Granularity
from replicad.errors import BadInputError, ConfigError
from replicad.pki import validate_node_name
from replicad.transport.gate import DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_HANDSHAKES_PER_SOURCE
from replicad.usernames import DEFAULT_USERNAME_FORMAT, validate_username_format

DEFAULT_CONFIG_PATH = Path("/etc/replicad/replicad.toml")
CONFIG_ENV = "REPLICAD_CONFIG"

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40

DEFAULT_MAP_SIZE = 8 * GIB
MIN_MAP_SIZE = 1 * MIB  # below this LMDB cannot even hold its own metadata and a message
MAX_MAP_SIZE = 1 << 48
DEFAULT_MAX_MESSAGE_SIZE = 64 * MIB
DEFAULT_MAX_OUTBOX = 100_000  # the same bound as the store's change log default
MIN_MAX_MESSAGE_SIZE = 1 * KIB
MAX_MAX_MESSAGE_SIZE = 1 * GIB
DEFAULT_PORT = 7750
LOG_LEVELS = ("debug", "info", "warning", "error")
#: How long SIGTERM waits for in-flight client operations and outbox sends.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
MAX_SHUTDOWN_TIMEOUT = 600.0
#: A shorter health token is guessable by anyone who can reach the listener.
MIN_HEALTH_TOKEN = 16
#: The largest message LMTP may take: what one SAVE can carry (a body of at
#: most replicad.blob.MAX_BODY octets in a frame of at most
#: protocol.frames.DEFAULT_MAX_FRAME), less 1 MiB for the frame's envelope
#: and the trace headers put in front of it.
MAX_LMTP_MESSAGE_SIZE = MAX_BODY - MIB
DEFAULT_LMTP_MESSAGE_SIZE = MAX_LMTP_MESSAGE_SIZE
DEFAULT_LMTP_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8: at least 100
MAX_LMTP_RECIPIENTS = 10_000
#: RFC 5321 §4.5.3.2.7: a server waits 5 minutes for the next command.
DEFAULT_LMTP_TIMEOUT = 300.0
# IMAP limits (architecture.md §11): a literal is an APPEND's message, so its
# ceiling is the store's; a command line without literals is small.
DEFAULT_IMAP_MAX_LINE = 64 * KIB
DEFAULT_IMAP_MAX_LITERAL = MAX_LMTP_MESSAGE_SIZE
DEFAULT_IMAP_SESSIONS_PER_USER = 50
DEFAULT_IMAP_SESSIONS_PER_IP = 200
# RFC 3501 §5.4: an inactivity autologout timer of at least 30 minutes.
DEFAULT_IMAP_IDLE_TIMEOUT = 1800.0
DEFAULT_IMAP_SELECT_WAIT = 2.0
# AF_UNIX paths are limited to 108 bytes including the NUL on Linux (sun_path).
MAX_SOCKET_PATH_BYTES = 107

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": KIB, "mib": MIB, "gib": GIB, "tib": TIB}
_UNITS.update({"kb": KIB, "mb": MIB, "gb": GIB, "tb": TIB})  # common spelling, same meaning

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NodeSection:
    name: str
    data_dir: Path
    admin_socket: Path
    map_size: int
    durability: DurabilityLevel
    log_level: str
    #: SIGTERM: the bound on draining client operations and outbox sends (s).
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT


@dataclass(frozen=True, slots=True)
class ListenSection:
    """The node-to-node listener (TCP + TLS)."""

    address: str
    port: int
    #: Connections in their TLS handshake at once, in total and from one
    #: source address; more are closed at once (replicad.transport.gate).
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES
    max_handshakes_per_source: int = DEFAULT_MAX_HANDSHAKES_PER_SOURCE


@dataclass(frozen=True, slots=True)
class TlsSection:
    ca: Path
    cert: Path
    key: Path
    cluster: str


@dataclass(frozen=True, slots=True)
class PeerConfig:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AdminSection:
    max_message_size: int


@dataclass(frozen=True, slots=True)
class ClusterSection:
    """How the node takes part in the cluster (docs/architecture.md §6)."""

    granularity: Granularity = Granularity.MAILBOX
    #: Unacknowledged changes kept per peer; past it the peer's mailboxes are
    #: marked for resync instead (bounded outbox).
    max_outbox: int = DEFAULT_MAX_OUTBOX
    ping_interval: float = 1.0
    dead_after: float = 5.0
    #: Per-user durability levels overriding node.durability (I1).
    user_durability: tuple[tuple[str, DurabilityLevel], ...] = ()
    #: zstd on the links this node dials (compression.md).
    compress: bool = True
    #: How often resync marks become work (resync.md §1).
    resync_interval: float = 1.0
    #: How often every peer's digests are compared (anti-entropy, I8); 0: never.
    verify_interval: float = 300.0
    #: How far ahead of this node's clock a peer's change may be stamped;
    #: beyond it the change waits for a resync (replicad.store.clock).
    max_clock_skew: float = 300.0
    #: Nodes of the cluster reached only through others (a chain); every
    #: other node is a [[peers]] entry (protocol-spec/trust.md §1).
    members: tuple[str, ...] = ()
    #: Seconds between reachability probes of a peer whose link is down
    #: (replicad.cluster.redial, verbs.md §2 "Redialling"); 0: no probes.
    probe_interval: float = 0.1


@dataclass(frozen=True, slots=True)
class MetricsSection:
    """The HTTP listener serving ``/metrics`` and ``/health`` (absent: no listener)."""

    host: str
    port: int
    #: Bearer token that unlocks ``/health`` details for non-local clients.
    health_token: str | None = field(default=None, repr=False)  # never in a repr or log

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AuthSection:
    """``[auth]``: the users and their passwords (:mod:`replicad.auth`)."""

    #: The Dovecot-format passwd-file; None: no users configured.
    passwd_file: Path | None = None
    #: How user names are normalised (Dovecot's ``auth_username_format``).
    username_format: str = DEFAULT_USERNAME_FORMAT


@dataclass(frozen=True, slots=True)
class LmtpSection:
    """The LMTP listener (mail in, RFC 2033); absent: no listener."""

    #: (host, port) of each TCP address, in the order configured.
    tcp: tuple[tuple[str, int], ...]
    #: Each unix socket path (absolute).
    unix: tuple[Path, ...]
    max_recipients: int = DEFAULT_LMTP_RECIPIENTS
    max_message_size: int = DEFAULT_LMTP_MESSAGE_SIZE
    #: Seconds a client may stay silent before 421 and close.
    timeout: float = DEFAULT_LMTP_TIMEOUT

    @property
    def port(self) -> int | None:
        """The first TCP port, if any (what ``cluster status`` shows)."""
        return self.tcp[0][1] if self.tcp else None

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every listen address as written: ``host:port`` or a path."""
        tcp = (f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.tcp)
        return (*tcp, *map(str, self.unix))


@dataclass(frozen=True, slots=True)
class ImapSection:
    """The IMAP listeners (mail out, RFC 3501/9051); absent: no listener."""

    #: (host, port) of each plain listener (STARTTLS offered when a certificate is set).
    tcp: tuple[tuple[str, int], ...]
    #: (host, port) of each implicit-TLS listener (port 993's kind).
    tls_tcp: tuple[tuple[str, int], ...] = ()
    #: The operator's certificate and key for clients (not the cluster CA's).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_line: int = DEFAULT_IMAP_MAX_LINE
    max_literal: int = DEFAULT_IMAP_MAX_LITERAL
    max_sessions_per_user: int = DEFAULT_IMAP_SESSIONS_PER_USER
    max_sessions_per_ip: int = DEFAULT_IMAP_SESSIONS_PER_IP
    #: Seconds of client silence before ``* BYE`` (IDLE included).
    idle_timeout: float = DEFAULT_IMAP_IDLE_TIMEOUT
    #: Seconds SELECT may wait for the local copy to catch up with the master.
    select_wait: float = DEFAULT_IMAP_SELECT_WAIT
    #: LOGIN / AUTHENTICATE PLAIN without TLS from a non-loopback address.
    allow_plaintext_auth: bool = False

    @property
    def port(self) -> int | None:
        """The first plain port, else the first TLS port (what ``cluster status`` shows)."""
        first = self.tcp or self.tls_tcp
        return first[0][1] if first else None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A validated node configuration; ``path`` is the file it was read from."""

    path: Path
    node: NodeSection
    listen: ListenSection
    tls: TlsSection | None
    peers: tuple[PeerConfig, ...]
    admin: AdminSection
    cluster: ClusterSection = ClusterSection()
    metrics: MetricsSection | None = None
    auth: AuthSection = AuthSection()
    lmtp: LmtpSection | None = None
    imap: ImapSection | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def lock_path(self) -> Path:
        """The pid lock file that keeps a second node off the same data directory."""
        return self.node.data_dir / "replicad.pid"


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """``-c CONFIG``, else ``$REPLICAD_CONFIG``, else the system default (architecture.md §9)."""
    env = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> NodeConfig:
    """Read and validate the config at ``path``; raise :class:`ConfigError` on any problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (use -c CONFIG or ${CONFIG_ENV}, "
            "or create one with `replicad init`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> NodeConfig:
    """Validate TOML ``text``; relative paths resolve against ``path``'s directory."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    base = path.parent.resolve()
    _check_keys(
        doc,
        (
            "node",
            "listen",
            "tls",
            "peers",
            "admin",
            "cluster",
            "metrics",
            "auth",
            "lmtp",
            "imap",
        ),
        "",
    )

    node_tbl = _table(doc, "node", required=True)
    _check_keys(
        node_tbl,
        (
            "name",
            "data_dir",
            "admin_socket",
            "map_size",
            "durability",
            "log_level",
            "shutdown_timeout",
        ),
        "node.",
    )
    peers = _peers(doc, base)
    name = _get(node_tbl, "node.name", str, required=True)
    _check_node_name(name, "node.name")
    if any(p.name == name for p in peers):
        raise ConfigError(f"peers: a peer is named {name!r}, the name of this node")
    data_dir = _path(node_tbl, "node.data_dir", base, required=True)
    assert data_dir is not None  # required=True
    admin_socket = _path(node_tbl, "node.admin_socket", base) or data_dir / "admin.sock"
    if len(os.fsencode(admin_socket)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"node.admin_socket {str(admin_socket)!r} is longer than "
            f"{MAX_SOCKET_PATH_BYTES} bytes, the limit of a unix socket path"
        )
    map_size = _size(node_tbl, "node.map_size", DEFAULT_MAP_SIZE, MIN_MAP_SIZE, MAX_MAP_SIZE)
    durability_raw = _get(node_tbl, "node.durability", (str, int), default="local")
    try:
        durability = DurabilityLevel.parse(durability_raw, cluster_size=1 + len(peers))
    except ConfigError as exc:
        raise ConfigError(f"node.durability: {exc}") from None
    log_level = _get(node_tbl, "node.log_level", str, default="info")
    if log_level not in LOG_LEVELS:
        raise ConfigError(
            f"node.log_level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}"
        )
    shutdown_timeout = _seconds(
        node_tbl,
        "node.shutdown_timeout",
        DEFAULT_SHUTDOWN_TIMEOUT,
        low=0.0,
        high=MAX_SHUTDOWN_TIMEOUT,
    )
    node = NodeSection(
        name, data_dir, admin_socket, map_size, durability, log_level, shutdown_timeout
    )

    listen_tbl = _table(doc, "listen")
    _check_keys(
        listen_tbl, ("address", "port", "max_handshakes", "max_handshakes_per_source"), "listen."
    )
    address = _get(listen_tbl, "listen.address", str, default="127.0.0.1")
    if not address:
        raise ConfigError("listen.address must not be empty")
    port = _port(listen_tbl, "listen.port", default=DEFAULT_PORT)
    max_handshakes = _get(listen_tbl, "listen.max_handshakes", int, default=DEFAULT_MAX_HANDSHAKES)
    per_source = _get(
        listen_tbl,
        "listen.max_handshakes_per_source",
        int,
        default=DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    )
    if not 1 <= max_handshakes <= 100_000:
        raise ConfigError(f"listen.max_handshakes {max_handshakes} is outside 1..100000")
    if not 1 <= per_source <= max_handshakes:
        raise ConfigError(
            f"listen.max_handshakes_per_source {per_source} is outside 1..{max_handshakes} "
            "(listen.max_handshakes)"
        )
    listen = ListenSection(address, port, max_handshakes, per_source)

    tls: TlsSection | None = None
    if "tls" in doc:
        tls_tbl = _table(doc, "tls")
        _check_keys(tls_tbl, ("ca", "cert", "key", "cluster"), "tls.")
        ca = _path(tls_tbl, "tls.ca", base, required=True)
        cert = _path(tls_tbl, "tls.cert", base, required=True)
        key = _path(tls_tbl, "tls.key", base, required=True)
        assert ca is not None and cert is not None and key is not None
        cluster = _get(tls_tbl, "tls.cluster", str, required=True)
        if not cluster:
            raise ConfigError("tls.cluster must not be empty")
        tls = TlsSection(ca, cert, key, cluster)
    if peers and tls is None:
        # I9: nodes accept only peers whose certificate the cluster CA signed.
        raise ConfigError("[tls] is required when [[peers]] are configured (I9: mutual TLS)")

    admin_tbl = _table(doc, "admin")
    _check_keys(admin_tbl, ("max_message_size",), "admin.")
    max_message_size = _size(
        admin_tbl,
        "admin.max_message_size",
        DEFAULT_MAX_MESSAGE_SIZE,
        MIN_MAX_MESSAGE_SIZE,
        MAX_MAX_MESSAGE_SIZE,
    )
    metrics = _metrics(doc, listen)
    return NodeConfig(
        path=path,
        node=node,
        listen=listen,
        tls=tls,
        peers=peers,
        admin=AdminSection(max_message_size),
        cluster=_cluster(doc, cluster_size=1 + len(peers)),
        metrics=metrics,
        auth=_auth(doc, base),
        lmtp=_lmtp(doc, listen, metrics),
        imap=_imap(doc, base),
    )


def _auth(doc: Mapping[str, Any], base: Path) -> AuthSection:
    tbl = _table(doc, "auth")
    _check_keys(tbl, ("passwd_file", "username_format"), "auth.")
    passwd_file = _path(tbl, "auth.passwd_file", base)
    fmt = _get(tbl, "auth.username_format", str, default=DEFAULT_USERNAME_FORMAT)
    return AuthSection(passwd_file, validate_username_format(fmt))


def _lmtp(
    doc: Mapping[str, Any], listen: ListenSection, metrics: MetricsSection | None
) -> LmtpSection | None:
    """``[lmtp]``: off unless given; ``listen`` is one address or a list of them."""
    if "lmtp" not in doc:
        return None
    tbl = _table(doc, "lmtp")
    _check_keys(tbl, ("listen", "max_recipients", "max_message_size", "timeout"), "lmtp.")
    raw = _get(tbl, "lmtp.listen", (str, list), required=True)
    addresses = [raw] if isinstance(raw, str) else raw
    if not addresses:
        raise ConfigError("lmtp.listen must name at least one address (host:port or a path)")
    tcp: list[tuple[str, int]] = []
    unix: list[Path] = []
    taken = [(listen.address, listen.port, "listen.port (the node-to-node listener)")]
    if metrics is not None:
        taken.append((metrics.host, metrics.port, "metrics.listen"))
    for i, address in enumerate(addresses):
        key = "lmtp.listen" if isinstance(raw, str) else f"lmtp.listen[{i}]"
        if not isinstance(address, str) or not address:
            raise ConfigError(f"{key} must be a non-empty string (host:port or an absolute path)")
        if address.startswith("/"):
            path = Path(address)
            if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
                raise ConfigError(
                    f"{key} {address!r} is longer than {MAX_SOCKET_PATH_BYTES} bytes, "
                    "the limit of a unix socket path"
                )
            if path in unix:
                raise ConfigError(f"{key} {address!r} is listed twice")
            unix.append(path)
            continue
        if ":" not in address:
            raise ConfigError(
                f"{key} {address!r} is neither host:port nor an absolute unix socket path"
            )
        host, port = split_host_port(address, key)
        if (host, port) in tcp:
            raise ConfigError(f"{key} {address!r} is listed twice")
        for other_host, other_port, what in taken:
            if port == other_port and _same_host(host, other_host):
                raise ConfigError(f"{key} {address!r} uses port {port}, the port of {what}")
        tcp.append((host, port))
    max_recipients = _get(tbl, "lmtp.max_recipients", int, default=DEFAULT_LMTP_RECIPIENTS)
    if not 1 <= max_recipients <= MAX_LMTP_RECIPIENTS:
        raise ConfigError(
            f"lmtp.max_recipients {max_recipients} is outside 1..{MAX_LMTP_RECIPIENTS}"
        )
    size = _size(
        tbl,
        "lmtp.max_message_size",
        DEFAULT_LMTP_MESSAGE_SIZE,
        MIN_MAX_MESSAGE_SIZE,
        MAX_LMTP_MESSAGE_SIZE,
    )
    timeout = _seconds(tbl, "lmtp.timeout", DEFAULT_LMTP_TIMEOUT, low=1.0, high=3600.0)
    return LmtpSection(tuple(tcp), tuple(unix), max_recipients, size, timeout)


_IMAP_KEYS = (
    "listen",
    "listen_tls",
    "tls_cert",
    "tls_key",
    "max_line_length",
    "max_literal_size",
    "max_sessions_per_user",
    "max_sessions_per_ip",
    "idle_timeout",
    "select_wait",
    "allow_plaintext_auth",
)


def _imap(doc: Mapping[str, Any], base: Path) -> ImapSection | None:
    """``[imap]``: off unless given; ``listen``/``listen_tls`` take one address or a list."""
    if "imap" not in doc:
        return None
    tbl = _table(doc, "imap")
    _check_keys(tbl, _IMAP_KEYS, "imap.")

    def addresses(key: str) -> tuple[tuple[str, int], ...]:
        raw = _get(tbl, f"imap.{key}", (str, list), default=[])
        out: list[tuple[str, int]] = []
        for i, address in enumerate([raw] if isinstance(raw, str) else raw):
            name = f"imap.{key}" if isinstance(raw, str) else f"imap.{key}[{i}]"
            if not isinstance(address, str) or ":" not in address:
                raise ConfigError(f"{name} must be host:port, not {address!r}")
            host_port = split_host_port(address, name)
            if host_port in out:
                raise ConfigError(f"{name} {address!r} is listed twice")
            out.append(host_port)
        return tuple(out)

    plain, implicit = addresses("listen"), addresses("listen_tls")
    if not plain and not implicit:
        raise ConfigError("[imap] needs imap.listen or imap.listen_tls (host:port)")
    if set(plain) & set(implicit):
        raise ConfigError("imap.listen and imap.listen_tls share an address")
    cert = _path(tbl, "imap.tls_cert", base)
    key = _path(tbl, "imap.tls_key", base)
    if (cert is None) != (key is None):
        raise ConfigError("imap.tls_cert and imap.tls_key go together: set both or neither")
    if implicit and cert is None:
        raise ConfigError("imap.listen_tls needs imap.tls_cert and imap.tls_key")
    max_line = _size(tbl, "imap.max_line_length", DEFAULT_IMAP_MAX_LINE, KIB, 16 * MIB)
    max_literal = _size(
        tbl,
        "imap.max_literal_size",
        DEFAULT_IMAP_MAX_LITERAL,
        MIN_MAX_MESSAGE_SIZE,
        MAX_LMTP_MESSAGE_SIZE,
    )
    per_user = _get(tbl, "imap.max_sessions_per_user", int, default=DEFAULT_IMAP_SESSIONS_PER_USER)
    per_ip = _get(tbl, "imap.max_sessions_per_ip", int, default=DEFAULT_IMAP_SESSIONS_PER_IP)
    for what, value in (("max_sessions_per_user", per_user), ("max_sessions_per_ip", per_ip)):
        if not 1 <= value <= 100_000:
            raise ConfigError(f"imap.{what} {value} is outside 1..100000")
    idle = _seconds(tbl, "imap.idle_timeout", DEFAULT_IMAP_IDLE_TIMEOUT, low=1.0, high=86400.0)
    select_wait = _seconds(tbl, "imap.select_wait", DEFAULT_IMAP_SELECT_WAIT, low=0.0, high=60.0)
    plaintext = _get(tbl, "imap.allow_plaintext_auth", bool, default=False)
    return ImapSection(
        plain,
        implicit,
        cert,
        key,
        max_line,
        max_literal,
        per_user,
        per_ip,
        idle,
        select_wait,
        plaintext,
    )


def _same_host(a: str, b: str) -> bool:
    wildcard = ("0.0.0.0", "::")
    return a == b or a in wildcard or b in wildcard


def _metrics(doc: Mapping[str, Any], listen: ListenSection) -> MetricsSection | None:
    """``[metrics]``: off unless ``listen`` is given (an HTTP port is opt-in)."""
    if "metrics" not in doc:
        return None
    tbl = _table(doc, "metrics")
    _check_keys(tbl, ("listen", "health_token"), "metrics.")
    address = _get(tbl, "metrics.listen", str, required=True)
    host, port = split_host_port(address, "metrics.listen")
    wildcard = ("0.0.0.0", "::")
    if port == listen.port and (
        host == listen.address or host in wildcard or listen.address in wildcard
    ):
        raise ConfigError(
            f"metrics.listen {address!r} uses port {port}, the port of listen.port "
            "(the node-to-node listener); choose another port"
        )
    # The token is never echoed back: a config error message may be logged.
    token = tbl.get("health_token")
    if token is not None:
        if not isinstance(token, str):
            raise ConfigError(f"metrics.health_token must be a string, not {_type_name(token)}")
        if len(token) < MIN_HEALTH_TOKEN:
            raise ConfigError(
                f"metrics.health_token is shorter than {MIN_HEALTH_TOKEN} characters "
                "(e.g. `openssl rand -hex 24`)"
            )
        if not token.isascii() or not token.isprintable() or " " in token:
            raise ConfigError(
                "metrics.health_token must be printable ASCII without spaces "
                "(it is sent in an HTTP header)"
            )
    return MetricsSection(host, port, token)


def _cluster(doc: Mapping[str, Any], cluster_size: int) -> ClusterSection:
    tbl = _table(doc, "cluster")
    _check_keys(
        tbl,
        (
            "granularity",
            "max_outbox",
            "ping_interval",
            "dead_after",
            "durability",
            "compress",
            "resync_interval",
            "verify_interval",
            "max_clock_skew",
            "members",
            "probe_interval",
        ),
        "cluster.",
    )
    raw = _get(tbl, "cluster.granularity", str, default="mailbox")
    try:
        granularity = Granularity(raw)
    except ValueError:
        raise ConfigError(
            f"cluster.granularity must be mailbox, user or global, not {raw!r}"
        ) from None
    max_outbox = _get(tbl, "cluster.max_outbox", int, default=DEFAULT_MAX_OUTBOX)
    if not 1 <= max_outbox <= 100_000_000:
        raise ConfigError(f"cluster.max_outbox {max_outbox} is outside 1..100000000")
    ping = _seconds(tbl, "cluster.ping_interval", 1.0)
    dead = _seconds(tbl, "cluster.dead_after", 5.0)
    if dead <= ping:
        raise ConfigError(
            f"cluster.dead_after ({dead:g}s) must be longer than cluster.ping_interval ({ping:g}s)"
        )
    users_tbl = tbl.get("durability", {})
    if not isinstance(users_tbl, dict):
        raise ConfigError('cluster.durability must be a table of user = level, e.g. alice = "all"')
    overrides = []
    for user, level in sorted(users_tbl.items()):
        if not isinstance(level, (str, int)) or isinstance(level, bool):
            raise ConfigError(f"cluster.durability.{user} must be local, quorum, all or a number")
        try:
            overrides.append((user, DurabilityLevel.parse(level, cluster_size=cluster_size)))
        except ConfigError as exc:
            raise ConfigError(f"cluster.durability.{user}: {exc}") from None
    compress = _get(tbl, "cluster.compress", bool, default=True)
    resync = _seconds(tbl, "cluster.resync_interval", 1.0)
    verify = tbl.get("verify_interval", 300.0)
    if verify != 0:
        verify = _seconds(tbl, "cluster.verify_interval", 300.0)
    skew = _seconds(tbl, "cluster.max_clock_skew", 300.0, low=1.0, high=86400.0)
    probe = tbl.get("probe_interval", 0.1)
    if probe != 0:
        probe = _seconds(tbl, "cluster.probe_interval", 0.1, high=60.0)
    raw_members = _get(tbl, "cluster.members", list, default=[])
    members = []
    for i, member in enumerate(raw_members):
        if not isinstance(member, str):
            raise ConfigError(f"cluster.members[{i}] must be a node name (a string)")
        try:
            members.append(validate_node_name(member))
        except BadInputError as exc:
            raise ConfigError(f"cluster.members[{i}]: {exc}") from None
    return ClusterSection(
        granularity,
        max_outbox,
        ping,
        dead,
        tuple(overrides),
        compress,
        resync,
        float(verify),
        skew,
        tuple(sorted(set(members))),
        float(probe),
    )


def _seconds(
    tbl: Mapping[str, Any],
    key: str,
    default: float,
    *,
    low: float = 0.05,
    high: float = 3600.0,
) -> float:
    value = tbl.get(key.rpartition(".")[2], default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number of seconds, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key} {value!r} is outside {low:g}..{high:g} seconds")
    return float(value)


def parse_size(value: int | str, key: str) -> int:
    """``1048576``, ``"512MiB"``, ``"8GiB"`` → bytes; ``key`` names the setting in errors."""
    if isinstance(value, bool):
        raise ConfigError(f'{key} must be a size (bytes or e.g. "512MiB"), not {value!r}')
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(
            f"{key} {value!r} is not a size: use bytes or a number with B, KiB, MiB, GiB, TiB"
        )
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def format_size(value: int) -> str:
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


# --- helpers ----------------------------------------------------------------


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            what = "section" if not prefix else "key"
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            suggestion = f"; did you mean {prefix}{hint[0]!s}?" if hint else ""
            known = ", ".join(prefix + a for a in allowed)
            raise ConfigError(f"unknown {what} {prefix}{key}{suggestion} (known: {known})")


def _table(doc: Mapping[str, Any], name: str, *, required: bool = False) -> dict[str, Any]:
    if name not in doc:
        if required:
            raise ConfigError(f"missing required section [{name}]")
        return {}
    value = doc[name]
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table ([{name}]), not {_type_name(value)}")
    return value


_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _get(
    table: Mapping[str, Any],
    key: str,
    types: type[T] | tuple[type, ...],
    *,
    required: bool = False,
    default: Any = None,
) -> Any:
    short = key.rsplit(".", 1)[-1]
    if short not in table:
        if required:
            raise ConfigError(f"missing required key {key}")
        return default
    value = table[short]
    wanted = types if isinstance(types, tuple) else (types,)
    # bool is an int subclass in Python; TOML true is never a valid number here.
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in wanted)
        raise ConfigError(f"{key} must be {expected}, not {_type_name(value)} ({value!r})")
    return value


def _path(table: Mapping[str, Any], key: str, base: Path, *, required: bool = False) -> Path | None:
    value = _get(table, key, str, required=required)
    if value is None:
        return None
    if not value:
        raise ConfigError(f"{key} must not be empty")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _size(table: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = _get(table, key, (int, str), default=default)
    size = parse_size(value, key)
    if not low <= size <= high:
        raise ConfigError(f"{key} {value!r} is outside {format_size(low)}..{format_size(high)}")
    return size


def _port(table: Mapping[str, Any], key: str, *, default: int) -> int:
    port: int = _get(table, key, int, default=default)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key} {port} is outside 1..65535")
    return port


def _check_node_name(name: str, where: str) -> None:
    # The same rule the certificates use: a name pki would refuse to issue
    # would otherwise only fail later, at the first TLS handshake.
    try:
        validate_node_name(name)
    except BadInputError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _peers(doc: Mapping[str, Any], base: Path) -> tuple[PeerConfig, ...]:
    raw = doc.get("peers", [])
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise ConfigError("peers must be an array of tables ([[peers]])")
    peers: list[PeerConfig] = []
    seen: set[str] = set()
    for i, tbl in enumerate(raw):
        where = f"peers[{i}]"
        _check_keys(tbl, ("name", "address"), f"{where}.")
        name = _get(tbl, f"{where}.name", str, required=True)
        _check_node_name(name, f"{where}.name")
        if name in seen:
            raise ConfigError(f"{where}.name {name!r} is configured twice")
        seen.add(name)
        address = _get(tbl, f"{where}.address", str, required=True)
        host, port = split_host_port(address, f"{where}.address")
        peers.append(PeerConfig(name, host, port))
    return tuple(peers)


def split_host_port(address: str, key: str = "address") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); :class:`ConfigError` naming ``key``."""
    parse: Callable[[], tuple[str, str]]
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")

        def parse() -> tuple[str, str]:
            if not sep or not rest.startswith(":"):
                raise ValueError
            return host, rest[1:]

    else:

        def parse() -> tuple[str, str]:
            host, sep, port = address.rpartition(":")
            if not sep or ":" in host:
                raise ValueError
            return host, port

    try:
        host, port_text = parse()
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            f"{key} {address!r} is not host:port (use [v6addr]:port for IPv6)"
        ) from None
    if not host:
        raise ConfigError(f"{key} {address!r} has an empty host")
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key} {address!r}: port {port} is outside 1..65535")
    return host, port
