"""I1 for mail in: a ``250`` from LMTP survives ``kill -9`` of the node.

Several client threads stream LMTP transactions (one to three recipients
each, bodies of up to ~100 KB, pipelined up to DATA) into one node, which
is killed with SIGKILL at seeded random moments and restarted, for
several rounds.  Then, for every user:

* every copy whose recipient got ``250`` is present with identical bytes
  (nothing acknowledged is lost or altered);
* every message present is, byte for byte, a copy some client sent to that
  user -- none is half there (a truncated body, a copy cut short by the
  kill), none invented -- and none is present twice;
* the mailbox's message count is the number of messages fetched;
* a copy whose recipient got no ``250`` (a 4xx, or no reply before the
  kill) may or may not be present: its reply may have been lost in flight.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from tests.conftest import NodeProcess
from tests.integration.test_lmtp import Raw, count, lmtp_port

pytestmark = pytest.mark.slow

SEED = 20240917
ROUNDS = 4
CLIENTS = 4
USERS = ("u1", "u2", "u3")
SENDER = "crash@example.net"


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    acked: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    refused: int = 0  # recipients answered with something other than 250
    unexpected: list[list[str]] = field(default_factory=list)  # replies before DATA

    def record_sent(self, user: str, stored: bytes) -> None:
        with self.lock:
            self.sent[user].add(stored)

    def record_reply(self, user: str, stored: bytes, reply: str) -> None:
        with self.lock:
            if reply.startswith("250 "):
                self.acked[user].append(stored)
            else:
                self.refused += 1


def _message(rng: random.Random, tag: str) -> bytes:
    lines = [f"Subject: {tag}", f"Message-ID: <{tag}@example.net>", ""]
    for _ in range(rng.randint(0, 1500)):
        lines.append(rng.randbytes(32).hex())
    lines.append(f"END OF {tag}")  # a copy cut short could not end with this line
    return ("\r\n".join(lines) + "\r\n").encode()


def _client(node: NodeProcess, tag: str, seed: int, out: Outcomes, stop: threading.Event) -> None:
    rng = random.Random(seed)
    try:
        client = Raw(lmtp_port(node))
    except OSError:
        return
    try:
        client.send(b"LHLO crash-test\r\n")
        client.replies(1)
        seq = 0
        while not stop.is_set():
            recipients = rng.sample(USERS, rng.randint(1, len(USERS)))
            body = _message(rng, f"{tag}-{seq}")
            seq += 1
            trace = f"Return-Path: <{SENDER}>\r\n"
            if len(recipients) == 1:
                trace += f"Delivered-To: {recipients[0]}\r\n"
            stored = trace.encode() + body
            for user in recipients:
                out.record_sent(user, stored)
            command = f"MAIL FROM:<{SENDER}>\r\n" + "".join(
                f"RCPT TO:<{u}>\r\n" for u in recipients
            )
            client.send(command.encode() + b"DATA\r\n")
            replies = client.replies(len(recipients) + 2)
            if not all(r.startswith(("250 ", "354 ")) for r in replies):
                with out.lock:
                    out.unexpected.append(replies)
                return
            client.send(body + b".\r\n")
            for user, reply in zip(recipients, client.replies(len(recipients)), strict=True):
                out.record_reply(user, stored, reply)
    except OSError:  # ConnectionError, TimeoutError included
        return  # the node died under us: the outcome of this transaction is unknown
    finally:
        client.close()


def test_acknowledged_deliveries_survive_kill_9(node_factory: type[NodeProcess]) -> None:
    node = node_factory()
    node.start()
    for user in USERS:
        added = node.cli("user", "add", user, "--password-stdin", input=b"pw\n")
        assert added.returncode == 0, added.stderr.decode()
    rng = random.Random(SEED)
    out = Outcomes()
    for round_no in range(ROUNDS):
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_client, args=(node, f"r{round_no}c{i}", rng.getrandbits(32), out, stop)
            )
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        try:
            # The fault's timing is random (seeded); nothing asserts on time.
            threading.Event().wait(rng.uniform(0.5, 2.5))
            node.kill9()
        finally:
            stop.set()
            for t in threads:
                t.join()
        node.start()

    assert out.unexpected == []
    assert sum(map(len, out.acked.values())), "no delivery acknowledged: nothing was exercised"
    with node.client() as client:
        for user in USERS:
            if not out.sent[user]:
                continue
            infos = client.call("fetch", user=user, mailbox="INBOX", uids="1:*")
            present = [
                client.call("fetch_body", user=user, mailbox="INBOX", uid=i["uid"]) for i in infos
            ]
            for stored in out.acked[user]:
                assert stored in present, f"{user}: an acknowledged copy is lost (seed {SEED})"
            for body in present:
                assert body in out.sent[user], (
                    f"{user}: a message present is not a whole copy sent to it (seed {SEED}): "
                    f"{body[:80]!r} ... {body[-40:]!r}"
                )
            assert len(set(present)) == len(present), f"{user}: a copy is stored twice"
            assert count(node, user) == len(present)

    # The node still takes mail after all that.
    client = Raw(lmtp_port(node))
    client.send(b"LHLO m\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u1>\r\nDATA\r\n")
    assert client.replies(4)[-1].startswith("354 ")
    client.send(b"Subject: after\r\n\r\nok\r\n.\r\nQUIT\r\n")
    assert client.replies(2)[0].startswith("250 2.0.0 ")
    client.close()
