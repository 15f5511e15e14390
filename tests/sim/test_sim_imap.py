"""IMAP sessions as simulated clients through a partition and its heal (architecture.md §11).

Each simulated client is a real :class:`~replicad.imap.session.ImapSession`
on a simulated node's store and write path (the node's own MailAccess, as a
listener would give it, without sockets).  The clients APPEND on both sides
of a partition, at UIDs that collide, and look at INBOX after every step.
What every client must see, whatever the cluster does underneath:

* RFC 3501 §2.3.1.1: sequence numbers 1..N in UID order;
* I2 as a client sees it: within one UIDVALIDITY, a UID a client saw names
  the same message (subject) for as long as that client sees it; a UID two
  sides gave to different messages is retired after the heal;
* never backwards (RFC 7162 §3.1.2.1, architecture.md §11): no node shows a
  client a HIGHESTMODSEQ or UIDNEXT below one it showed under the same
  UIDVALIDITY, on the same node or, once the cluster converged, on another;
* after the heal every session, after a NOOP, shows exactly what its node
  holds, and every acknowledged APPEND is there (I6).
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
import trio.testing

from replicad.auth import UserDirectory
from replicad.imap.commandtable import COMMANDS
from replicad.imap.mailaccess import MailAccess
from replicad.imap.session import ImapSession, SessionSettings
from replicad.uidset import UidSet
from tests.sim.network import SimNetwork
from tests.sim.test_sim_cluster import NAMES, SimNode, converged, sim_cluster, wait_for

FETCH_ITEM = re.compile(rb"\* (\d+) FETCH \(")
SUBJECT_LITERAL = re.compile(rb"BODY\[HEADER\.FIELDS \(SUBJECT\)\] \{(\d+)\}\r\n")


class Output:
    def __init__(self) -> None:
        self.data = b""

    async def send(self, data: bytes) -> None:
        self.data += data


class SimClient:
    """One IMAP session on one node, and everything it was shown."""

    def __init__(self, label: str, node: SimNode, users: UserDirectory) -> None:
        self.label = label
        self.tag = 0
        self.node = node
        self.users = users
        self.session = self._open(node)
        self.uidvalidity = 0
        self.uidnext = 0
        self.highestmodseq = 0
        #: uid -> subject, everything shown under ``uidvalidity``.
        self.named: dict[int, bytes] = {}
        #: The view's UIDs in sequence order after the last look.
        self.view: list[int] = []

    def _open(self, node: SimNode) -> ImapSession:
        self.out = Output()
        access = MailAccess(node.store, node.writes, self.users, catch_up=5.0, masters=node.node)
        return ImapSession(
            access, self.out, SessionSettings(plaintext_auth=True), COMMANDS, secure=False
        )

    async def say(self, command: bytes, literal: bytes | None = None) -> bytes:
        self.tag += 1
        tag = b"t%d" % self.tag
        line = tag + b" " + command
        if literal is not None:
            line += b" {%d+}\r\n" % len(literal) + literal
        self.session.receive(line + b"\r\n")
        await self.session.process()
        data, self.out.data = self.out.data, b""
        last = data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        assert last.startswith(tag + b" OK"), f"{self.label}: {command!r} -> {data[-500:]!r}"
        return data

    async def login_and_select(self) -> None:
        await self.session.greet()
        self.out.data = b""
        await self.say(b"LOGIN alice secret")
        await self.select()

    async def select(self) -> None:
        """SELECT INBOX (CONDSTORE): UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ never go back."""
        data = await self.say(b"SELECT INBOX (CONDSTORE)")
        uidvalidity = int(re.search(rb"\[UIDVALIDITY (\d+)\]", data).group(1))  # type: ignore[union-attr]
        uidnext = int(re.search(rb"\[UIDNEXT (\d+)\]", data).group(1))  # type: ignore[union-attr]
        hms = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", data).group(1))  # type: ignore[union-attr]
        if uidvalidity == self.uidvalidity:
            assert uidnext >= self.uidnext, f"{self.label}: UIDNEXT {uidnext} < {self.uidnext}"
            assert hms >= self.highestmodseq, (
                f"{self.label}: HIGHESTMODSEQ {hms} < {self.highestmodseq}"
            )
        else:
            self.named = {}
        self.uidvalidity, self.uidnext, self.highestmodseq = uidvalidity, uidnext, hms
        await self.look()

    async def append(self, subject: str) -> int:
        message = f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
        data = await self.say(b"APPEND INBOX", message)
        found = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data)
        assert found is not None, data
        return int(found.group(2))

    async def look(self) -> None:
        """NOOP, then FETCH of every message: sequence order, I2 as seen, modseqs."""
        await self.say(b"NOOP")
        data = await self.say(b"FETCH 1:* (UID MODSEQ BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        seen: list[tuple[int, int, bytes]] = []
        for item in FETCH_ITEM.finditer(data):
            seq = int(item.group(1))
            rest = data[item.end() :]
            uid = int(re.match(rb".*?UID (\d+)", rest, re.S).group(1))  # type: ignore[union-attr]
            modseq = int(re.match(rb".*?MODSEQ \((\d+)\)", rest, re.S).group(1))  # type: ignore[union-attr]
            literal = SUBJECT_LITERAL.search(rest)
            assert literal is not None, rest[:200]
            size = int(literal.group(1))
            subject = rest[literal.end() : literal.end() + size].strip()
            seen.append((seq, uid, subject))
            self.highestmodseq = max(self.highestmodseq, modseq)
        assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1)), seen
        uids = [u for _, u, _ in seen]
        assert uids == sorted(set(uids)), f"{self.label}: UIDs out of order {uids}"
        for _, uid, subject in seen:
            before = self.named.setdefault(uid, subject)
            assert before == subject, (
                f"I2: {self.label} saw UID {uid} as {before!r}, now as {subject!r}"
            )
        self.view = uids
        self.subjects = {uid: subject for _, uid, subject in seen}

    async def move_to(self, node: SimNode) -> None:
        """Log out and select INBOX again through ``node``, keeping what was shown."""
        await self.say(b"LOGOUT")
        self.node = node
        self.session = self._open(node)
        self.label = f"{self.label}->{node.name}"
        await self.login_and_select()


async def test_imap_views_through_a_partition_and_its_heal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    passwd = tmp_path / "users"
    passwd.write_text("alice:{PLAIN}secret\n")
    users = UserDirectory(passwd)
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:

        async def rooted() -> bool:
            roots = {n.node.election.root for n in nodes.values()}
            return len(roots) == 1 and None not in roots

        await wait_for("a root", rooted)
        writer = SimClient("n1", nodes["n1"], users)
        await writer.session.greet()
        writer.out.data = b""
        await writer.say(b"LOGIN alice secret")
        first = [await writer.append(f"before {i}") for i in range(3)]
        assert first == [1, 2, 3]
        await wait_for("convergence", lambda: converged(nodes))
        await writer.select()
        clients = {name: SimClient(name, nodes[name], users) for name in NAMES}
        for client in clients.values():
            await client.login_and_select()
            assert client.view == [1, 2, 3]
        uidvalidity = clients["n1"].uidvalidity

        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)  # both sides notice; the larger one elects its own root
        side_a = [await clients["n1"].append(f"side A {i}") for i in range(2)]
        side_b = [await clients["n2"].append(f"side B {i}") for i in range(2)]
        assert side_a == side_b == [4, 5]  # the collision: I2 is at stake
        for client in clients.values():
            await client.look()
        await wait_for(
            "n3 shows side B",
            lambda: _holds(nodes["n3"], 5),
        )
        await clients["n3"].look()
        assert clients["n3"].subjects[4] == b"Subject: side B 0"
        assert clients["n1"].subjects[4] == b"Subject: side A 0"

        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
        held = [i.uid for i in await nodes["n1"].store.fetch("alice", "INBOX", UidSet.parse("1:*"))]
        for client in clients.values():
            await client.look()  # the session's view follows its node (expunges, new UIDs)
            assert client.view == held, (client.label, client.view, held)
            assert client.uidvalidity == uidvalidity  # the same mailbox: no renumbering
            # I2: the UIDs both sides gave out are retired; every APPEND is there (I6).
            assert not {4, 5} & set(client.view)
            assert sorted(client.subjects.values()) == sorted(
                [f"Subject: before {i}".encode() for i in range(3)]
                + [f"Subject: side {s} {i}".encode() for s in "AB" for i in range(2)]
            )
            await client.select()  # never backwards, on the same node
        # A client moving to a node of the other side keeps its guarantees.
        await clients["n1"].move_to(nodes["n3"])
        await clients["n3"].move_to(nodes["n1"])
        assert clients["n1"].view == clients["n3"].view == held


async def _holds(node: SimNode, uid: int) -> bool:
    infos = await node.store.fetch("alice", "INBOX", UidSet.parse("1:*"))
    return uid in {i.uid for i in infos}
