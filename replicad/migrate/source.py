"""The migration source: an IMAP client, read-only (RFC 3501, 7162, 4616).

Built on ``imapclient`` (a well-kept, widely used client over the standard
library's imaplib), run in a worker thread per call
(:class:`SourceConnection`'s async methods hop through
``trio.to_thread``).  Why not a client of our own on the IMAP wire parser:
that parser is a *server's* parser (commands in, responses out); a client
needs the other direction, literals in responses, and years of servers'
quirks that imapclient already absorbs.  The cost is one thread per open
source connection, bounded by the workers.

Never writes to the source: folders are opened with EXAMINE (read-only
SELECT) and bodies fetched with ``BODY.PEEK[]``, which sets no ``\\Seen``.

Login: the user's own password (LOGIN), or a master user with SASL PLAIN
(RFC 4616) whose authorization identity is the user, as imapsync's
``--authuser`` and Dovecot's master passdb expect.

Memory: imapclient reads a fetched body whole (imaplib's ``read(size)``),
so a message sits in memory once as it arrives, then once compressed for
the store; nothing here copies it (the FETCH parser keeps the very bytes
object, :mod:`replicad.migrate.responses`).  Fetches are batched by the
sizes RFC822.SIZE announced (:data:`FETCH_BATCH_BYTES`), so a batch of large
messages is one message at a time.  Bytes on the wire per message: its
size plus the FETCH response's fixed overhead.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import trio
from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.exceptions import LoginError  # type: ignore[import-untyped]
from imapclient.response_parser import (  # type: ignore[import-untyped]
    parse_fetch_response,
    parse_response,
)

from replicad.migrate.failures import FailureClass, SourceError, classify_server_text
from replicad.migrate.names import SourceFolder
from replicad.migrate.planner import Checkpoint, FolderStatus, SourceFolderState
from replicad.migrate.responses import (
    flag_names,
    internaldate_seconds,
    parse_fetch,
    parse_values,
)

T = TypeVar("T")

#: Seconds a source may stay silent before the connection counts as broken.
SOURCE_TIMEOUT_S: Final = 120.0
#: Bodies fetched per FETCH, by their announced sizes (one message at least).
FETCH_BATCH_BYTES: Final = 8 * 1024 * 1024
FETCH_BATCH_MESSAGES: Final = 500
#: What a body FETCH asks for (``PEEK``: no ``\\Seen`` is set on the source).
BODY_ITEMS: Final = "(BODY.PEEK[] FLAGS INTERNALDATE)"


@dataclass(frozen=True, slots=True)
class SourceLogin:
    host: str
    port: int
    tls: bool
    user: str
    password: str
    master_user: str | None = None
    #: TLS: PEM of the CA(s) to verify the source against (None: the system's
    #: trust store); ``verify`` False accepts any certificate (``--source-insecure``).
    ca_pem: str | None = None
    verify: bool = True

    def tls_context(self) -> ssl.SSLContext:
        """The context of an ``imaps://`` connection: the certificate is
        verified and its name checked against the host, unless told not to."""
        context = ssl.create_default_context(cadata=self.ca_pem)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def __repr__(self) -> str:  # the password never reaches a log line
        return f"SourceLogin({self.host}:{self.port}, user={self.user!r})"


@dataclass(frozen=True, slots=True)
class SourceListing:
    folders: list[SourceFolder]
    #: STATUS by wire name, when the source offers LIST-STATUS (else empty).
    statuses: dict[str, FolderStatus]


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    uid: int
    flags: tuple[str, ...]
    internaldate: int
    body: bytes


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    text = str(value)
    # imaplib words some server answers as the repr of their bytes.
    if len(text) >= 3 and text[:2] in ("b'", 'b"') and text[-1] == text[1]:
        return text[2:-1]
    return text


def _flags(data: dict[bytes, Any]) -> tuple[str, ...]:
    # \Recent is the session's, not the message's (RFC 3501 §2.3.2).
    return flag_names(list(data.get(b"FLAGS") or ()))


def _failure(exc: BaseException, *, at_login: bool) -> SourceError:
    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, LoginError):
        text = _text(exc.args[0]) if exc.args else str(exc)
        return SourceError(classify_server_text(text, at_login=True), text)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Permanent: retrying will not make the certificate verify.
        return SourceError(
            FailureClass.PROTOCOL,
            f"the source's TLS certificate did not verify ({exc.verify_message}): "
            "give its CA with --source-ca FILE, or --source-insecure",
        )
    if isinstance(exc, (imaplib.IMAP4.abort, OSError, ssl.SSLError, socket.timeout, EOFError)):
        return SourceError(FailureClass.NETWORK, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, imaplib.IMAP4.error):
        text = _text(str(exc))
        return SourceError(classify_server_text(text, at_login=at_login), text)
    return SourceError(FailureClass.PROTOCOL, f"{type(exc).__name__}: {exc}")


class _Blocking:
    """The blocking half: every method runs in a worker thread."""

    def __init__(self, login: SourceLogin) -> None:
        self.login = login
        self.client: Any = None
        self.condstore = False
        self._enable = False  # ENABLE CONDSTORE still to be sent
        self.list_status = False
        self.status_size = False  # RFC 8438
        self.prefix = ""

    def connect(self) -> None:
        login = self.login
        context = login.tls_context() if login.tls else None
        client = IMAPClient(
            login.host,
            port=login.port,
            ssl=login.tls,
            ssl_context=context,
            timeout=SOURCE_TIMEOUT_S,
        )
        # imaplib sends AUTHENTICATE's response line and a literal's CRLF as
        # separate small writes: with Nagle's algorithm against the server's
        # delayed ACK each costs ~40 ms, which alone was most of a no-op pass.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # imapclient turns imaplib's debug level to 5, at which imaplib formats
        # the repr() of every response it stores, literals included, into a
        # log message: two more copies of every body (its repr, then the
        # message made of it), whatever the logger's level.  Level 0 formats
        # nothing.
        client._imap.debug = 0
        client.folder_encode = False  # names stay modified UTF-7: names.py decodes them
        client.normalise_times = False  # INTERNALDATE with its zone, not local time
        self.client = client
        try:
            if login.master_user is not None:
                client.plain_login(login.master_user, login.password, login.user)
            else:
                client.login(login.user, login.password)
        except Exception as exc:
            raise _failure(exc, at_login=True) from None
        caps = {_text(c).upper() for c in client.capabilities()}
        # ENABLE waits for the first EXAMINE: a pass that LIST-STATUS proves
        # unchanged selects nothing (and asking STATUS for HIGHESTMODSEQ
        # enables CONDSTORE by itself, RFC 7162 §3.1).
        self.condstore = "CONDSTORE" in caps
        self._enable = self.condstore and "ENABLE" in caps
        self.list_status = "LIST-STATUS" in caps
        self.status_size = "STATUS=SIZE" in caps
        if "NAMESPACE" in caps:
            self.prefix = self._personal_prefix()

    def _personal_prefix(self) -> str:
        """The first personal namespace's prefix (RFC 2342), "" if none."""
        client = self.client
        typ, data = client._imap._simple_command("NAMESPACE")
        client._checkok("namespace", typ, data)
        _, lines = client._imap._untagged_response(typ, data, "NAMESPACE")
        personal: Any
        try:
            personal = parse_values(lines)[0]
        except (ValueError, IndexError):
            personal = parse_response(lines)[0]
        if not personal or not isinstance(personal, (list, tuple)):
            return ""
        return _text(personal[0][0])

    def folders(self) -> SourceListing:
        """Every folder; with LIST-STATUS (RFC 5819) each one's STATUS in the
        same round trip, so a pass can prove folders unchanged without
        selecting them."""
        client = self.client
        imap = client._imap
        if self.list_status:
            items = "UIDVALIDITY UIDNEXT MESSAGES"
            items += " HIGHESTMODSEQ" if self.condstore else ""
            items += " SIZE" if self.status_size else ""
            args: tuple[str, ...] = ('""', '"*"', "RETURN", f"(STATUS ({items}))")
        else:
            args = ('""', '"*"')
        typ, data = imap._simple_command("LIST", *args)
        client._checkok("list", typ, data)
        _, listed = imap._untagged_response(typ, data, "LIST")
        _, statuses = imap._untagged_response(typ, data, "STATUS")
        try:
            return SourceListing(_folders(parse_values(listed)), _statuses(parse_values(statuses)))
        except ValueError:
            return SourceListing(
                _folders(_flat(client._proc_folder_list(listed))),
                _statuses(parse_response([s for s in statuses if s not in (b"", None)])),
            )

    def _enable_condstore(self) -> None:
        if self._enable:
            self.client.enable("CONDSTORE")
            self._enable = False

    def _selected(self, info: dict[bytes, Any]) -> tuple[int, int, int | None, int]:
        """UIDVALIDITY, UIDNEXT (0: not said), HIGHESTMODSEQ and EXISTS of a SELECT."""
        modseq = info.get(b"HIGHESTMODSEQ") if self.condstore else None
        return (
            int(info[b"UIDVALIDITY"]),
            int(info.get(b"UIDNEXT", 0)),
            int(modseq) if modseq is not None else None,
            int(info.get(b"EXISTS", 0)),
        )

    def examine(
        self, wire_name: str, changedsince: int | None, known: Checkpoint | None = None
    ) -> SourceFolderState:
        """The folder's state; flags of all messages, or with CONDSTORE and
        ``changedsince`` only of those changed since (RFC 7162 §3.1.4).  When
        SELECT's own answer matches ``known`` (UIDVALIDITY, UIDNEXT,
        HIGHESTMODSEQ, EXISTS) nothing more is asked: the folder is unchanged."""
        client = self.client
        self._enable_condstore()
        info = client.select_folder(wire_name, readonly=True)
        uidvalidity, uidnext, modseq, exists = self._selected(info)
        if (
            known is not None
            and modseq is not None
            and (uidvalidity, uidnext, modseq, exists)
            == (known.uidvalidity, known.uidnext, known.highestmodseq, known.messages)
        ):
            return SourceFolderState(
                uidvalidity, uidnext, modseq, frozenset(), {}, False, exists, listed=False
            )
        complete = changedsince is None or modseq is None
        flags: dict[int, tuple[str, ...]] = {}
        sizes: dict[int, int] = {}
        if not exists:
            uids: frozenset[int] = frozenset()
        elif complete:
            # One round trip lists the UIDs, their flags and their sizes.
            fetched = _uid_fetch(client, "1:*", "(FLAGS RFC822.SIZE)")
            uids = frozenset(fetched)
            for uid, data in fetched.items():
                flags[uid] = _flags(data)
                sizes[uid] = _size(data)
        else:
            uids = frozenset(int(u) for u in client.search(["ALL"]))
            fetched = _uid_fetch(client, "1:*", "(FLAGS)", f"(CHANGEDSINCE {changedsince})")
            for uid, data in fetched.items():
                flags[uid] = _flags(data)
        if not uidnext:
            uidnext = max(uids, default=0) + 1
        return SourceFolderState(
            uidvalidity, uidnext, modseq, uids, flags, complete, exists, sizes=sizes
        )

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for chunk in _chunks(list(uids), 1000):
            for uid, data in _uid_fetch(self.client, _uid_list(chunk), "(RFC822.SIZE)").items():
                out[uid] = _size(data)
        return out

    def fetch(self, uids: Sequence[int]) -> list[FetchedMessage]:
        fetched = _uid_fetch(self.client, _uid_list(uids), BODY_ITEMS)
        return _messages(fetched, uids)

    def examine_and_fetch(self, wire_name: str) -> tuple[SourceFolderState, list[FetchedMessage]]:
        """A whole folder in one FETCH after its EXAMINE: its state and every
        message.  For a folder copied whole whose STATUS SIZE (RFC 8438) is
        within one FETCH batch: no listing round trip of its own."""
        self._enable_condstore()
        info = self.client.select_folder(wire_name, readonly=True)
        uidvalidity, uidnext, modseq, exists = self._selected(info)
        fetched = _uid_fetch(self.client, "1:*", BODY_ITEMS) if exists else {}
        messages = _messages(fetched, sorted(fetched))
        uids = frozenset(m.uid for m in messages)
        if not uidnext:
            uidnext = max(uids, default=0) + 1
        state = SourceFolderState(
            uidvalidity,
            uidnext,
            modseq,
            uids,
            {m.uid: m.flags for m in messages},
            True,
            exists,
            sizes={m.uid: len(m.body) for m in messages},
        )
        return state, messages

    def close(self) -> None:
        if self.client is None:
            return
        try:
            self.client.logout()
        except Exception:  # a broken connection: nothing left to log out of
            with contextlib.suppress(Exception):
                self.client.shutdown()


def _flat(listed: list[tuple[Any, Any, Any]]) -> list[Any]:
    return [value for entry in listed for value in entry]


def _folders(values: list[Any]) -> list[SourceFolder]:
    """LIST responses' values, three a folder: (attributes, delimiter, name)."""
    if len(values) % 3:
        raise ValueError("a LIST response is attributes, delimiter and name")
    out = []
    for flags, delimiter, name in zip(values[::3], values[1::3], values[2::3], strict=True):
        if not isinstance(flags, (list, tuple)):
            raise ValueError(f"LIST attributes are a list, not {flags!r}")
        out.append(
            SourceFolder(
                _text(name), _text(delimiter) if delimiter else None, tuple(_text(f) for f in flags)
            )
        )
    return out


def _statuses(values: list[Any]) -> dict[str, FolderStatus]:
    """STATUS responses' values, two a folder (name, items), by wire name (a
    folder the server could not give a STATUS for is simply absent: it is
    then EXAMINEd)."""
    out: dict[str, FolderStatus] = {}
    for name, items in zip(values[::2], values[1::2], strict=False):
        if not isinstance(items, (list, tuple)):
            continue
        item = {_text(k).upper(): v for k, v in zip(items[::2], items[1::2], strict=False)}
        try:
            modseq, size = item.get("HIGHESTMODSEQ"), item.get("SIZE")
            out[_text(name)] = FolderStatus(
                int(item["UIDVALIDITY"]),
                int(item["UIDNEXT"]),
                int(modseq) if modseq is not None else None,
                int(item["MESSAGES"]),
                int(size) if size is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _uid_fetch(
    client: Any, uids: str, items: str, modifiers: str | None = None
) -> dict[int, dict[bytes, Any]]:
    """``UID FETCH uids items [modifiers]``, parsed by :func:`parse_fetch` (or,
    for a response it does not understand, by imapclient's own parser).

    Through imapclient's command layer: its ``fetch`` takes a list of UIDs
    only (one line naming every UID of a large folder) and lexes every
    response byte by byte."""
    args = ["UID", "FETCH", uids, items]
    if modifiers:
        args.append(modifiers)
    imap = client._imap
    tag = imap._command(*args)
    typ, lines = imap._command_complete("FETCH", tag)
    client._checkok("fetch", typ, lines)
    typ, lines = imap._untagged_response(typ, lines, "FETCH")
    try:
        return parse_fetch(lines)
    except ValueError:
        parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(
            lines, client.normalise_times, True
        )
        return {int(uid): data for uid, data in parsed.items()}


def _messages(fetched: dict[int, dict[bytes, Any]], uids: Sequence[int]) -> list[FetchedMessage]:
    out = []
    for uid in uids:
        data = fetched.pop(uid, None)
        if data is None:
            continue  # expunged on the source meanwhile; the next pass sees it gone
        body = data.get(b"BODY[]")
        out.append(
            FetchedMessage(
                uid,
                _flags(data),
                _internaldate(data.get(b"INTERNALDATE")),
                body if isinstance(body, bytes) else b"",
            )
        )
    return out


def _uid_list(uids: Sequence[int]) -> str:
    return ",".join(str(uid) for uid in uids)


def _size(data: dict[bytes, Any]) -> int:
    return int(data.get(b"RFC822.SIZE") or 0)


def _internaldate(value: Any) -> int:
    if isinstance(value, datetime):  # imapclient's parser
        return int(value.timestamp())
    try:
        return internaldate_seconds(value)
    except ValueError:
        return 0


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def fetch_batches(sizes: dict[int, int], uids: Sequence[int]) -> list[list[int]]:
    """``uids`` cut into FETCH batches of at most :data:`FETCH_BATCH_BYTES`
    announced bytes and :data:`FETCH_BATCH_MESSAGES` messages (one at least)."""
    batches: list[list[int]] = []
    current: list[int] = []
    weight = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if current and (weight + size > FETCH_BATCH_BYTES or len(current) >= FETCH_BATCH_MESSAGES):
            batches.append(current)
            current, weight = [], 0
        current.append(uid)
        weight += size
    if current:
        batches.append(current)
    return batches


class SourceConnection:
    """One logged-in, read-only connection to the source, used from trio."""

    def __init__(self, login: SourceLogin) -> None:
        self._blocking = _Blocking(login)
        self._lock = trio.Lock()  # one command at a time on the connection

    @property
    def condstore(self) -> bool:
        return self._blocking.condstore

    @property
    def prefix(self) -> str:
        return self._blocking.prefix

    async def _call(self, fn: Callable[..., T], *args: Any, at_login: bool = False) -> T:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
            except SourceError:
                raise
            except Exception as exc:
                raise _failure(exc, at_login=at_login) from None

    async def connect(self) -> None:
        await self._call(self._blocking.connect, at_login=True)

    async def folders(self) -> SourceListing:
        return await self._call(self._blocking.folders)

    async def examine(
        self, wire_name: str, changedsince: int | None, known: Checkpoint | None = None
    ) -> SourceFolderState:
        return await self._call(self._blocking.examine, wire_name, changedsince, known)

    async def examine_and_fetch(
        self, wire_name: str
    ) -> tuple[SourceFolderState, list[FetchedMessage]]:
        return await self._call(self._blocking.examine_and_fetch, wire_name)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        return await self._call(self._blocking.sizes, uids)

    async def fetch(self, uids: Sequence[int]) -> list[FetchedMessage]:
        return await self._call(self._blocking.fetch, uids)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._blocking.close, abandon_on_cancel=True)
