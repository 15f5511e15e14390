"""Config validation: every error names the key (exit 65, ConfigError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.config import (
    DEFAULT_CONFIG_PATH,
    MIB,
    load_config,
    parse_config,
    parse_size,
    resolve_config_path,
    split_host_port,
)
from replicad.errors import ConfigError, ExitCode

BASE = Path("/srv/replicad/replicad.toml")
MINIMAL = '[node]\nname = "n1"\ndata_dir = "data"\n'

TLS = '[tls]\nca = "ca.crt"\ncert = "n1.crt"\nkey = "n1.key"\ncluster = "c"\n'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, BASE)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return str(info.value)


def test_minimal_config_gets_defaults_and_resolves_relative_paths() -> None:
    config = parse_config(MINIMAL, BASE)
    assert config.node.name == "n1"
    assert config.node.data_dir == Path("/srv/replicad/data")
    assert config.node.admin_socket == Path("/srv/replicad/data/admin.sock")
    assert config.node.map_size == 8 << 30
    assert config.node.durability.name == "local" and config.node.durability.copies == 1
    assert config.node.log_level == "info"
    assert config.admin.max_message_size == 64 * MIB
    assert config.listen.port == 7750
    assert config.tls is None and config.peers == ()


def test_full_config() -> None:
    text = (
        '[node]\nname = "n1"\ndata_dir = "/var/lib/replicad"\nadmin_socket = "/run/r.sock"\n'
        'map_size = "512MiB"\ndurability = "quorum"\nlog_level = "debug"\n'
        '[listen]\naddress = "0.0.0.0"\nport = 7000\n'
        + TLS
        + '[[peers]]\nname = "n2"\naddress = "10.0.0.2:7000"\n'
        '[[peers]]\nname = "n3"\naddress = "[fd00::3]:7001"\n'
        "[admin]\nmax_message_size = 1048576\n"
    )
    config = parse_config(text, BASE)
    assert config.node.map_size == 512 * MIB
    assert config.node.durability.copies == 2  # majority of 3
    assert config.tls is not None and config.tls.ca == Path("/srv/replicad/ca.crt")
    assert [(p.name, p.host, p.port) for p in config.peers] == [
        ("n2", "10.0.0.2", 7000),
        ("n3", "fd00::3", 7001),
    ]
    assert config.peers[1].address == "[fd00::3]:7001"
    assert config.admin.max_message_size == MIB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "map_sise = 5\n", "unknown key node.map_sise; did you mean node.map_size?"),
        (MINIMAL + "[listne]\nport = 1\n", "unknown section listne; did you mean listen?"),
        (MINIMAL + "[listen]\nprot = 1\n", "did you mean listen.port?"),
        (MINIMAL + "[admin]\nmax_msg_size = 1\n", "did you mean admin.max_message_size?"),
        (MINIMAL + "zzz = 1\n", "unknown key node.zzz (known:"),
    ],
)
def test_unknown_keys_suggest_the_right_one(text: str, expected: str) -> None:
    assert expected in error_of(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[node]\nname = 1\ndata_dir = "d"\n', "node.name must be a string, not an integer"),
        (MINIMAL + "map_size = true\n", "node.map_size must be"),
        (MINIMAL + 'map_size = "lots"\n', "node.map_size 'lots' is not a size"),
        (MINIMAL + "map_size = 1000\n", "node.map_size 1000 is outside 1MiB.."),
        (MINIMAL + "durability = 2\n", "node.durability: durability 2 is outside 1..1"),
        (MINIMAL + 'durability = "most"\n', "node.durability: durability must be local"),
        (MINIMAL + 'log_level = "loud"\n', "node.log_level must be one of"),
        (MINIMAL + "[listen]\nport = 70000\n", "listen.port 70000 is outside 1..65535"),
        (MINIMAL + '[listen]\nport = "7000"\n', "listen.port must be an integer"),
        (MINIMAL + "peers = 3\n", "unknown key node.peers"),
        ('peers = 3\n[node]\nname = "n1"\ndata_dir = "d"\n', "peers must be an array of tables"),
        (MINIMAL + '[[peers]]\nname = "n2"\naddress = "nohost"\n', "peers[0].address 'nohost'"),
        (MINIMAL + TLS + '[[peers]]\nname = "n1"\naddress = "h:1"\n', "the name of this node"),
        (MINIMAL + '[[peers]]\nname = "n2"\naddress = "h:1"\n', "[tls] is required"),
        (MINIMAL + '[tls]\nca = "a"\n', "missing required key tls.cert"),
        (MINIMAL + "[admin]\nmax_message_size = 10\n", "admin.max_message_size 10 is outside"),
        ('[node]\nname = "bad name!"\ndata_dir = "d"\n', "node.name: bad node name 'bad name!'"),
        ("node = 1\n", "node must be a table"),
        ("[node\n", "invalid TOML"),
    ],
)
def test_bad_values_name_the_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("", "missing required section [node]"),
        ('[node]\ndata_dir = "d"\n', "missing required key node.name"),
        ('[node]\nname = "n1"\n', "missing required key node.data_dir"),
    ],
)
def test_missing_required(text: str, key: str) -> None:
    assert key in error_of(text)


def test_socket_path_too_long_is_refused() -> None:
    text = MINIMAL + f'admin_socket = "/{"x" * 120}.sock"\n'
    assert "node.admin_socket" in error_of(text)


def test_sizes() -> None:
    assert parse_size("8GiB", "k") == 8 << 30
    assert parse_size("512 MiB", "k") == 512 << 20
    assert parse_size("100", "k") == 100
    assert parse_size(4096, "k") == 4096
    with pytest.raises(ConfigError, match=r"k '1\.5GiB' is not a size"):
        parse_size("1.5GiB", "k")


def test_host_port() -> None:
    assert split_host_port("example.org:25") == ("example.org", 25)
    assert split_host_port("[::1]:7750") == ("::1", 7750)
    for bad in ("::1:7750", "host:", ":25", "[::1]7750", "h:0"):
        with pytest.raises(ConfigError):
            split_host_port(bad)


def test_config_path_resolution() -> None:
    assert resolve_config_path("/a.toml", {"REPLICAD_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert resolve_config_path(None, {"REPLICAD_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    path = tmp_path / "r.toml"
    path.write_text(MINIMAL)
    assert load_config(path).node.data_dir == tmp_path.resolve() / "data"


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "replicad.toml.example"
    config = load_config(example)
    assert config.name == "mail1"
    assert [p.name for p in config.peers] == ["mail2", "mail3"]
    assert config.tls is not None and config.tls.cluster == "example"


def test_cluster_section() -> None:
    config = parse_config(
        MINIMAL
        + TLS
        + '[[peers]]\nname = "n2"\naddress = "10.0.0.2:7750"\n'
        + '[cluster]\ngranularity = "user"\nmax_outbox = 500\nping_interval = 0.5\n'
        + 'dead_after = 3\n[cluster.durability]\nceo = "all"\nbob = 1\n',
        BASE,
    )
    cluster = config.cluster
    assert cluster.granularity.value == "user"
    assert (cluster.max_outbox, cluster.ping_interval, cluster.dead_after) == (500, 0.5, 3.0)
    assert [(u, lvl.copies) for u, lvl in cluster.user_durability] == [("bob", 1), ("ceo", 2)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[cluster]\ngranularity = "folder"\n', "cluster.granularity must be mailbox, user or"),
        ("[cluster]\nmax_outbox = 0\n", "cluster.max_outbox 0 is outside"),
        ("[cluster]\nping_interval = 2\ndead_after = 1\n", "must be longer than"),
        ("[cluster]\nmaxoutbox = 5\n", "did you mean cluster.max_outbox"),
        ('[cluster.durability]\nbob = "most"\n', "cluster.durability.bob"),
    ],
)
def test_bad_cluster_values_name_the_key(text: str, expected: str) -> None:
    assert expected in error_of(MINIMAL + text)


def test_auth_section() -> None:
    auth = '[auth]\npasswd_file = "users"\nusername_format = "%Ln"\n'
    config = parse_config(MINIMAL + auth, BASE)
    assert config.auth.passwd_file == Path("/srv/replicad/users")  # next to the config file
    assert config.auth.username_format == "%Ln"
    absolute = parse_config(MINIMAL + '[auth]\npasswd_file = "/etc/replicad/users"\n', BASE)
    assert absolute.auth.passwd_file == Path("/etc/replicad/users")
    assert absolute.auth.username_format == "%Lu"
    # No [auth]: no users configured, names still normalised the default way.
    default = parse_config(MINIMAL, BASE)
    assert default.auth.passwd_file is None and default.auth.username_format == "%Lu"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[auth]\npasswd_fle = "u"\n', "auth.passwd_fle; did you mean auth.passwd_file?"),
        ("[auth]\npasswd_file = 3\n", "auth.passwd_file must be a string"),
        ('[auth]\npasswd_file = ""\n', "auth.passwd_file must not be empty"),
        ('[auth]\nusername_format = "%lu"\n', "'%lu' is not supported; did you mean \"%Lu\"?"),
        ('[auth]\nusername_format = "%u@%d"\n', "auth.username_format '%u@%d' is not supported"),
        ("[auth]\nusername_format = 1\n", "auth.username_format must be a string"),
        ('[atuh]\npasswd_file = "u"\n', "unknown section atuh; did you mean auth?"),
    ],
)
def test_bad_auth_values_name_the_key(text: str, expected: str) -> None:
    assert expected in error_of(MINIMAL + text)

def test_lmtp_is_off_unless_configured() -> None:
    assert parse_config(MINIMAL, BASE).lmtp is None


def test_lmtp_listen_one_address_or_a_list_with_defaults() -> None:
    one = parse_config(MINIMAL + '[lmtp]\nlisten = "127.0.0.1:24"\n', BASE).lmtp
    assert one is not None
    assert one.tcp == (("127.0.0.1", 24),) and one.unix == () and one.port == 24
    assert one.max_recipients == 100 and one.timeout == 300.0
    assert one.max_message_size == 63 * MIB  # what one SAVE can carry, less room
    text = (
        MINIMAL + '[lmtp]\nlisten = ["/run/replicad/lmtp", "[::1]:2424", "127.0.0.1:24"]\n'
        'max_recipients = 50\nmax_message_size = "10MiB"\ntimeout = 30\n'
    )
    many = parse_config(text, BASE).lmtp
    assert many is not None
    assert many.tcp == (("::1", 2424), ("127.0.0.1", 24))
    assert many.unix == (Path("/run/replicad/lmtp"),)
    assert many.addresses == ("[::1]:2424", "127.0.0.1:24", "/run/replicad/lmtp")
    assert (many.max_recipients, many.max_message_size, many.timeout) == (50, 10 * MIB, 30.0)


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ("[lmtp]\n", "missing required key lmtp.listen"),
        ("[lmtp]\nlisten = []\n", "lmtp.listen must name at least one"),
        ('[lmtp]\nlisten = "lmtp.sock"\n', "neither host:port nor an absolute"),
        ('[lmtp]\nlisten = ["127.0.0.1:24", 24]\n', "lmtp.listen[1] must be a non-empty string"),
        ('[lmtp]\nlisten = "127.0.0.1:99999"\n', "outside 1..65535"),
        ('[lmtp]\nlisten = ["127.0.0.1:24", "127.0.0.1:24"]\n', "listed twice"),
        ('[lmtp]\nlisten = "0.0.0.0:7750"\n', "the port of listen.port"),
        ('[lmtp]\nlisten = "/' + "x" * 120 + '"\n', "longer than 107 bytes"),
        ('[lmtp]\nlisten = "127.0.0.1:24"\nmax_recipients = 0\n', "lmtp.max_recipients 0"),
        ('[lmtp]\nlisten = "127.0.0.1:24"\nmax_message_size = "64MiB"\n', "..63MiB"),
        ('[lmtp]\nlisten = "127.0.0.1:24"\ntimeout = 0\n', "lmtp.timeout"),
        ('[lmtp]\nlisten = "127.0.0.1:24"\nmax_rcpt = 5\n', "unknown key lmtp.max_rcpt"),
    ],
)
def test_lmtp_errors_name_the_key(section: str, needle: str) -> None:
    assert needle in error_of(MINIMAL + section)


def test_lmtp_port_may_not_be_the_metrics_port() -> None:
    text = MINIMAL + '[metrics]\nlisten = "127.0.0.1:9187"\n[lmtp]\nlisten = "127.0.0.1:9187"\n'
    assert "the port of metrics.listen" in error_of(text)


def test_cluster_members_name_nodes_reached_through_others() -> None:
    config = parse_config(MINIMAL + '[cluster]\nmembers = ["n3", "n4", "n3"]\n', BASE)
    assert config.cluster.members == ("n3", "n4")
    assert parse_config(MINIMAL, BASE).cluster.members == ()
    assert "cluster.members[0]" in error_of(MINIMAL + "[cluster]\nmembers = [3]\n")
    assert "cluster.members[0]" in error_of(MINIMAL + '[cluster]\nmembers = ["Bad Name"]\n')


def test_imap_is_off_unless_configured_and_has_defaults() -> None:
    assert parse_config(MINIMAL, BASE).imap is None
    imap = parse_config(MINIMAL + '[imap]\nlisten = "127.0.0.1:1143"\n', BASE).imap
    assert imap is not None
    assert imap.tcp == (("127.0.0.1", 1143),) and imap.tls_tcp == ()
    assert imap.tls_cert is None and imap.port == 1143
    assert imap.idle_timeout == 1800.0  # RFC 3501 §5.4: at least 30 minutes
    assert imap.allow_plaintext_auth is False


def test_imap_implicit_tls_with_the_operators_certificate() -> None:
    text = (
        MINIMAL
        + '[imap]\nlisten = ["127.0.0.1:143"]\nlisten_tls = "0.0.0.0:993"\n'
        + 'tls_cert = "imap.crt"\ntls_key = "imap.key"\nmax_literal_size = "10MiB"\n'
    )
    imap = parse_config(text, BASE).imap
    assert imap is not None
    assert imap.tls_tcp == (("0.0.0.0", 993),)
    assert imap.tls_cert == Path("/srv/replicad/imap.crt")
    assert imap.max_literal == 10 * MIB


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[imap]\n", "needs imap.listen or imap.listen_tls"),
        ('[imap]\nlisten = "imap.sock"\n', "imap.listen must be host:port"),
        ('[imap]\nlisten_tls = "127.0.0.1:993"\n', "listen_tls needs imap.tls_cert"),
        ('[imap]\nlisten = "127.0.0.1:143"\ntls_cert = "c.crt"\n', "go together"),
        ('[imap]\nlisten = "127.0.0.1:143"\nmax_sessions_per_ip = 0\n', "max_sessions_per_ip 0"),
        ('[imap]\nlisten = "127.0.0.1:143"\nidle = 5\n', "unknown key imap.idle"),
        ('[imap]\nlisten = ["127.0.0.1:143", "127.0.0.1:143"]\n', "listed twice"),
    ],
)
def test_imap_config_errors_name_the_key(section: str, message: str) -> None:
    assert message in error_of(MINIMAL + section)
