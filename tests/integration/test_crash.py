"""I1 at durability ``local``: an acknowledged save survives ``kill -9`` of the node.

Concurrent clients save unique messages while the node is killed with
SIGKILL at seeded random moments and restarted, for several rounds.  Then:

* every save whose client got a UID back is present under that UID with
  identical bytes (nothing acknowledged is lost or altered);
* every message present is one some client sent (nothing invented), and
  none is present twice;
* a save whose client saw an error or no reply may or may not be present:
  its acknowledgement may have been lost in flight, which is allowed.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from replicad.admin.client import AdminClient
from replicad.errors import ReplicadError
from tests.conftest import NodeProcess, run_cli

SEED = 20240601
ROUNDS = 5
API_CLIENTS = 6
USER = "crash"


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: set[bytes] = field(default_factory=set)
    acked: dict[int, bytes] = field(default_factory=dict)
    duplicate_acks: list[int] = field(default_factory=list)

    def record_sent(self, body: bytes) -> None:
        with self.lock:
            self.sent.add(body)

    def record_ack(self, uid: int, body: bytes) -> None:
        with self.lock:
            if uid in self.acked:
                self.duplicate_acks.append(uid)  # I2: one UID acknowledged twice
            self.acked[uid] = body


def _body(rng: random.Random, tag: str, seq: int) -> bytes:
    padding = rng.randbytes(rng.randint(0, 20_000)).hex().encode()
    return f"Subject: {tag} #{seq}\r\n\r\n".encode() + padding + b"\r\n"


def _api_client(
    node: NodeProcess, tag: str, seed: int, out: Outcomes, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    seq = 0
    try:
        with AdminClient(node.socket, timeout=60) as client:
            while not stop.is_set():
                body = _body(rng, tag, seq)
                seq += 1
                out.record_sent(body)
                result = client.call("save", user=USER, mailbox="INBOX", body=body)
                out.record_ack(result["uid"], body)
    except ReplicadError:
        return  # the node died under us: this save's outcome is unknown


def _cli_client(
    node: NodeProcess, tag: str, seed: int, out: Outcomes, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    seq = 0
    while not stop.is_set():
        body = _body(rng, tag, seq)
        seq += 1
        out.record_sent(body)
        result = node.cli("save", "-u", USER, input=body)
        if result.returncode != 0:
            return
        out.record_ack(int(result.stdout), body)


def test_acknowledged_saves_survive_kill_9(node: NodeProcess) -> None:
    rng = random.Random(SEED)
    out = Outcomes()
    for round_no in range(ROUNDS):
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_api_client,
                args=(node, f"r{round_no}c{i}", rng.getrandbits(32), out, stop),
            )
            for i in range(API_CLIENTS)
        ]
        threads.append(
            threading.Thread(
                target=_cli_client, args=(node, f"r{round_no}cli", rng.getrandbits(32), out, stop)
            )
        )
        for t in threads:
            t.start()
        try:
            # The fault's timing is random (seeded); nothing asserts on time.
            threading.Event().wait(rng.uniform(0.2, 1.2))
            node.kill9()
        finally:
            stop.set()
            for t in threads:
                t.join()
        node.start()

    assert out.acked, "no save was acknowledged at all: the test exercised nothing"
    assert out.duplicate_acks == []

    with node.client() as client:
        infos = client.call("fetch", user=USER, mailbox="INBOX", uids="1:*")
        present = {
            i["uid"]: client.call("fetch_body", user=USER, mailbox="INBOX", uid=i["uid"])
            for i in infos
        }

    for uid, body in out.acked.items():
        assert uid in present, f"acknowledged UID {uid} lost (seed {SEED})"
        assert present[uid] == body, f"UID {uid} altered (seed {SEED})"
    for uid, body in present.items():
        assert body in out.sent, f"UID {uid} holds a message nobody sent (seed {SEED})"
    assert len(set(present.values())) == len(present), "a message is stored twice"

    # The node still works after all that, through the command line too.
    result = run_cli("-c", node.config, "save", "-u", USER, input=b"Subject: after\r\n\r\nok\r\n")
    assert result.returncode == 0 and int(result.stdout) > max(present)
