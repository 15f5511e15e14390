"""The IMAP session state machine alone: no sockets, a real store (RFC 3501 §3, §5.5, §7.4.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from replicad.auth import UserDirectory
from replicad.imap.commandtable import COMMANDS
from replicad.imap.mailaccess import MailAccess
from replicad.imap.session import ImapSession, Outcome, SessionSettings
from replicad.store.mailstore import MailStore

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


class Collect:
    """The session's output, line by line."""

    def __init__(self) -> None:
        self.data = b""

    async def send(self, data: bytes) -> None:
        self.data += data

    def take(self) -> list[bytes]:
        lines = self.data.split(b"\r\n")
        self.data = b""
        return [line for line in lines if line]


class Client:
    def __init__(self, access: MailAccess, *, plaintext: bool = True) -> None:
        self.out = Collect()
        self.session = ImapSession(
            access,
            self.out,
            SessionSettings(plaintext_auth=plaintext),
            COMMANDS,
            secure=False,
        )

    async def say(self, text: bytes) -> list[bytes]:
        self.session.receive(text)
        await self.session.process()
        return self.out.take()


@asynccontextmanager
async def mail(tmp_path: Path) -> AsyncIterator[MailAccess]:
    passwd = tmp_path / "users"
    passwd.write_text("alice:{PLAIN}secret\n")
    async with MailStore.open(tmp_path / "store") as store:
        yield MailAccess(store, store, UserDirectory(passwd), catch_up=0)


async def test_states_bad_syntax_and_privacy(tmp_path: Path) -> None:
    async with mail(tmp_path) as access:
        closed = Client(access, plaintext=False)
        await closed.session.greet()
        assert b"LOGINDISABLED" in closed.out.take()[0]
        [reply] = await closed.say(b"a LOGIN alice secret\r\n")
        assert reply.startswith(b"a NO [PRIVACYREQUIRED]")

        client = Client(access)
        assert (await client.say(b"a SELECT INBOX\r\n"))[0].startswith(b"a BAD")
        assert (await client.say(b"b FETCH 1 FLAGS\r\n"))[0].startswith(b"b BAD")
        assert (await client.say(b"c LOGIN alice\r\n"))[0].startswith(b"c BAD")
        assert (await client.say(b"d NOSUCH\r\n"))[0].startswith(b"d BAD")
        reply = await client.say(b"e LOGIN alice secret\r\n")
        assert reply[-1].startswith(b"e OK [CAPABILITY IMAP4rev1")
        assert (await client.say(b"f FETCH 1 FLAGS\r\n"))[0].startswith(b"f BAD")
        assert (await client.say(b"g LOGIN alice secret\r\n"))[0].startswith(b"g BAD")
        reply = await client.say(b"h LOGOUT\r\n")
        assert reply[0].startswith(b"* BYE") and reply[1].startswith(b"h OK")
        assert client.session.outcome is Outcome.CLOSE


async def test_own_writes_and_numbering(tmp_path: Path) -> None:
    async with mail(tmp_path) as access:
        client = Client(access)
        await client.say(b"a LOGIN alice secret\r\n")
        literal = b"{%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"
        reply = await client.say(b"b APPEND INBOX (\\Flagged) " + literal)
        assert reply == [b"b OK [APPENDUID %d 1] APPEND completed" % _uidvalidity(reply)]
        await client.say(b"c APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        reply = await client.say(b"d SELECT INBOX\r\n")
        assert b"* 2 EXISTS" in reply and b"* 2 RECENT" in reply
        assert reply[-1] == b"d OK [READ-WRITE] SELECT completed"
        assert (await client.say(b"e FETCH 3 FLAGS\r\n"))[0].startswith(b"e BAD")
        reply = await client.say(b"f FETCH 1:2 (UID FLAGS)\r\n")
        assert reply[:2] == [
            b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))",
            b"* 2 FETCH (UID 2 FLAGS (\\Recent))",
        ]
        reply = await client.say(b"g STORE 2 +FLAGS (\\Deleted)\r\nh EXPUNGE\r\n")
        assert b"* 2 EXPUNGE" in reply and reply[-1].startswith(b"h OK")
        reply = await client.say(b"i SEARCH ALL\r\n")
        assert reply[0] == b"* SEARCH 1"


async def test_changes_by_another_session_arrive_in_order(tmp_path: Path) -> None:
    async with mail(tmp_path) as access:
        for _ in range(3):
            await access.append("alice", "INBOX", MESSAGE, (), None)
        a, b = Client(access), Client(access)
        for client in (a, b):
            await client.say(b"x LOGIN alice secret\r\n")
            await client.say(b"y SELECT INBOX\r\n")
        await b.say(b"1 STORE 1 +FLAGS (\\Seen)\r\n2 STORE 2 +FLAGS (\\Deleted)\r\n3 EXPUNGE\r\n")
        await b.say(b"4 APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
        # A FETCH by number must not report the expunge (RFC 3501 §7.4.1) ...
        reply = await a.say(b"f FETCH 1 FLAGS\r\n")
        assert not any(line.endswith(b"EXPUNGE") for line in reply), reply
        assert b"* 4 EXISTS" in reply
        # ... a NOOP does, and numbers shift after it.
        reply = await a.say(b"n NOOP\r\n")
        assert b"* 2 EXPUNGE" in reply, reply
        reply = await a.say(b"s UID SEARCH ALL\r\n")
        assert reply[0] == b"* SEARCH 1 3 4"
        reply = await a.say(b"t FETCH 1 FLAGS\r\n")
        assert b"\\Seen" in reply[0]


def _uidvalidity(reply: list[bytes]) -> int:
    return int(reply[0].split(b"APPENDUID ")[1].split(b" ")[0])


async def test_fetch_answers_carry_uid_once_qresync_is_on(tmp_path: Path) -> None:
    """RFC 7162 §3.1/§3.2.4: STORE and FETCH answers name the UID with QRESYNC on."""
    async with mail(tmp_path) as access:
        await access.append("alice", "INBOX", MESSAGE, (), None)
        client = Client(access)
        await client.say(b"a LOGIN alice secret\r\nb ENABLE QRESYNC\r\nc SELECT INBOX\r\n")
        reply = await client.say(b"d STORE 1 +FLAGS (\\Flagged)\r\n")
        assert reply[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (")
        reply = await client.say(b"e FETCH 1 FLAGS\r\n")
        assert reply[0].startswith(b"* 1 FETCH (UID 1 FLAGS")


async def test_fetch_reads_bodies_ahead_in_batches(tmp_path: Path) -> None:
    """150 messages in three store reads (64 + 64 + 22), each body right."""
    async with mail(tmp_path) as access:
        for n in range(150):
            await access.append("alice", "INBOX", MESSAGE + b"%d\r\n" % n, (), None)
        reads: list[int] = []
        original = access.bodies

        async def counted(user: str, name: str, uids: list[int]) -> dict[int, bytes]:
            reads.append(len(uids))
            return await original(user, name, uids)

        access.bodies = counted  # type: ignore[method-assign]
        client = Client(access)
        await client.say(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        reply = await client.say(b"c FETCH 1:* BODY.PEEK[]\r\n")
        assert reply[-1] == b"c OK FETCH completed"
        bodies = [line for line in reply if line.startswith(b"body")]
        assert bodies == [b"body"] * 150
        numbers = [line for line in reply if line.isdigit()]
        assert numbers == [b"%d" % n for n in range(150)]
        # The batches after the first are read concurrently: in any order.
        assert sorted(reads, reverse=True) == [64, 64, 22]


async def test_search_reads_only_what_cheap_keys_leave_and_in_batches(tmp_path: Path) -> None:
    async with mail(tmp_path) as access:
        for n in range(100):
            flags = ("\\Seen",) if n % 2 else ()
            await access.append("alice", "INBOX", MESSAGE + b"n%d\r\n" % n, flags, None)
        reads: list[int] = []
        original = access.bodies

        async def counted(user: str, name: str, uids: list[int]) -> dict[int, bytes]:
            reads.append(len(uids))
            return await original(user, name, uids)

        access.bodies = counted  # type: ignore[method-assign]
        client = Client(access)
        await client.say(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        # UNSEEN decides first: only the 50 unseen messages are read, in one batch.
        reply = await client.say(b"c SEARCH UNSEEN BODY n8\r\n")
        assert reply[0] == b"* SEARCH 9 81 83 85 87 89"
        assert reads == [50]
        reply = await client.say(b"d SEARCH SEEN\r\n")
        assert reads == [50]  # flags alone read no body
        assert reply[0].startswith(b"* SEARCH 2 4 6")
