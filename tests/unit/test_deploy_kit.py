"""The deployment kit stays true to the code: the Grafana dashboard queries only
metrics a node exports, and deploy/README.md names only commands that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicad.metrics import NodeMetrics
from replicad.observe import Snapshot
from tests.unit.test_operations import peer_row, with_peers

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "replicad-dashboard.json"
GUIDE = DEPLOY / "README.md"

METRIC = re.compile(r"\breplicad_[a-z_]+")
# Sample names prometheus-client derives from a family name, by family type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def full_snapshot() -> Snapshot:
    """A node with two peers and every optional figure present."""
    figures = {"rtt_ms": 1.0, "outbox": 3, "lag_s": 0.5, "lag_p50_ms": 2.0, "lag_p99_ms": 9.0}
    figures["resync"] = 1
    return with_peers(peer_row("n2", **figures), peer_row("n3", **figures))


def exported_names() -> set[str]:
    """Every sample name a node's /metrics may carry, from a real registry.

    Rendered by :class:`NodeMetrics` exactly as ``/metrics`` does and read
    back with prometheus-client's parser. Labelled families with no child
    yet have no samples, so the names come from each family's name and type.
    """
    body, _ = NodeMetrics(lambda user: "local").render(full_snapshot())
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and every variable query."""
    doc = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    for panel in walk(doc.get("panels", [])):
        for target in panel.get("targets", []) if isinstance(panel.get("targets"), list) else []:
            found.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in doc["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query":
            found.append((f"variable {variable['name']}", str(query)))
            found.append((f"variable {variable['name']}", str(variable.get("definition", ""))))
    return found


def test_exported_names_come_from_the_registry() -> None:
    names = exported_names()
    # A few the dashboard relies on, in the form the exposition spells them.
    assert {
        "replicad_saves_total",
        "replicad_write_ack_seconds_bucket",
        "replicad_outbox_depth",
        "replicad_replication_lag_seconds",
    } <= names
    assert "replicad_saves" not in names  # a counter is queried as ..._total


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    everything = [*doc["panels"], *(p for row in doc["panels"] for p in row.get("panels", []))]
    panels = [p for p in everything if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_every_dashboard_query_uses_only_exported_metrics() -> None:
    exported = exported_names()
    queries = dashboard_queries()
    assert len(queries) > 20
    used: set[str] = set()
    for where, expr in queries:
        names = set(METRIC.findall(expr))
        assert names, f"{where} queries no replicad metric: {expr}"
        missing = names - exported
        assert not missing, f"{where} uses {sorted(missing)}, not exported: {expr}"
        used |= names
    # What the deployment issue asks the dashboard to show.
    for wanted in (
        "replicad_saves_total",
        "replicad_changes_applied_total",
        "replicad_changes_sent_total",
        "replicad_replication_lag_seconds",
        "replicad_outbox_depth",
        "replicad_write_ack_seconds_bucket",
        "replicad_resyncs_total",
        "replicad_conflicts_resolved_total",
        "replicad_store_used_bytes",
        "replicad_store_filesystem_free_bytes",
        "replicad_frame_errors_total",
        "replicad_link_sent_bytes_total",
        "replicad_link_received_bytes_total",
    ):
        assert wanted in used, wanted


def test_ack_latency_is_a_quantile_by_durability() -> None:
    exprs = [expr for _, expr in dashboard_queries() if "replicad_write_ack_seconds_bucket" in expr]
    assert exprs
    assert all("histogram_quantile(" in e and "durability" in e and "le" in e for e in exprs)


# --- deploy/README.md ----------------------------------------------------------------


def help_actions(*command: str) -> set[str]:
    """The sub-commands ``replicad COMMAND --help`` lists under positional arguments."""
    result = subprocess.run(
        [sys.executable, "-m", "replicad", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    section = result.stdout.partition("positional arguments:")[2].partition("options:")[0]
    return set(re.findall(r"^    ([a-z][a-z-]*)(?:\s{2,}|$)", section, re.MULTILINE))


def guide_code() -> str:
    """Fenced blocks and inline code spans of the guide: where commands are."""
    text = GUIDE.read_text()
    fence = re.compile(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
    blocks = fence.findall(text)
    spans = re.findall(r"`([^`\n]+)`", fence.sub("", text))
    return "\n".join(blocks + spans)


# `replicad [-c FILE] [-f FMT] COMMAND [ACTION]`, not `-u replicad` (a user name).
INVOCATION = re.compile(
    r"(?<![\w./-])(?<!-u )(?<!-g )(?<!-o )replicad((?:[ \t]+-[cf][ \t]+\S+)*)[ \t]+"
    r"([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?"
)


def test_guide_names_only_existing_commands() -> None:
    commands = help_actions()
    assert {"pki", "top", "replicator", "sync", "serve"} <= commands
    actions: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    for match in INVOCATION.finditer(guide_code()):
        command, action = match.group(2), match.group(3)
        assert command in commands, f"deploy/README.md: no command `replicad {command}`"
        if command not in actions:
            listed = help_actions(command)
            actions[command] = listed
        if actions[command] and action is not None:
            assert action in actions[command], f"deploy/README.md: no `replicad {command} {action}`"
        seen.add((command, action or ""))
    # The guide's procedures rest on these.
    for command, action in (
        ("pki", "init"),
        ("pki", "issue"),
        ("top", ""),
        ("replicator", "status"),
        ("sync", ""),
        ("verify", ""),
    ):
        assert any(c == command and (not action or a == action) for c, a in seen), (command, action)


@pytest.mark.parametrize(
    "flag", ["--all", "--peer", "--no-wait", "--force", "--cluster", "--once", "--days"]
)
def test_guide_options_exist(flag: str) -> None:
    """Every option the guide uses is in the --help of a command it is given to."""
    owners = {
        "--all": ("sync",),
        "--peer": ("sync",),
        "--no-wait": ("sync",),
        "--force": ("pki", "issue"),
        "--cluster": ("pki", "init"),
        "--once": ("top",),
        "--days": ("pki", "issue"),
    }
    assert flag in GUIDE.read_text()
    result = subprocess.run(
        [sys.executable, "-m", "replicad", *owners[flag], "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert flag in result.stdout


UNIT = DEPLOY / "systemd" / "replicad.service"
NODE_SOURCE = Path(__file__).resolve().parents[2] / "replicad" / "node.py"


def unit_settings(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def test_unit_documentation_is_a_file_the_guide_installs() -> None:
    code = guide_code()
    [documentation] = unit_settings("Documentation")
    for uri in documentation.split():
        assert uri.startswith("file:"), uri
        path = uri.removeprefix("file:")
        assert re.search(rf"install\b[^\n]*\s{re.escape(path)}\n", code), (
            f"the unit's Documentation={path} is not installed by deploy/README.md"
        )


def test_unit_runs_the_command_the_guide_installs() -> None:
    code = guide_code()
    [exec_start] = unit_settings("ExecStart")
    binary = exec_start.split()[0]
    venv = binary.removesuffix("/bin/replicad")
    assert f"python3 -m venv {venv} && {venv}/bin/pip install" in code
    assert f"ln -s {binary} /usr/local/bin/" in code


def test_unit_and_guide_list_what_sighup_applies() -> None:
    """The keys node.py applies on SIGHUP are named in the unit's comment and
    in deploy/README.md section 3, and neither says peers need a restart."""
    applied = set(re.findall(r'applied\.append\("([a-z_.]+)"\)', NODE_SOURCE.read_text()))
    assert {"peers", "node.map_size", "node.log_level"} <= applied
    unit = " ".join(UNIT.read_text().split())
    guide = " ".join(GUIDE.read_text().split())
    for key in applied:
        shown = {"peers": "[[peers]]", "tls": "tls.cert"}.get(key, key)
        assert shown in unit, f"the unit's SIGHUP comment does not name {shown}"
        assert f"`{shown}`" in guide, f"deploy/README.md does not name {shown}"
    assert "peers too" not in unit


def test_readme_says_how_long_the_gate_takes() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    assert "about 35 minutes on 2 cores" in " ".join(readme.split())
