"""Reading a Maildir++ tree for ``replicad import`` (pure file-system reads, no store).

Layout (the Courier/Dovecot Maildir++ convention)::

    ROOT/{cur,new,tmp}          INBOX
    ROOT/.Sent/{cur,new,tmp}    mailbox "Sent"
    ROOT/.A.B/{cur,new,tmp}     mailbox "A/B" ("." is the Maildir++ separator)

Folder names are modified UTF-7 (RFC 3501 §5.1.3), as Dovecot and Courier
write them; they are decoded to the UTF-8 names the store uses.  Flags come
from the ``:2,FLAGS`` suffix of the file name (S F R D T; lowercase letters
are Dovecot keywords, resolved through ``dovecot-keywords``); the internal
date is the file's mtime, which is what Maildir delivery agents set it to.
Messages are ordered by ``dovecot-uidlist`` when present (the UIDs users
already saw keep their relative order), else by the delivery time at the
start of the file name.  ``tmp/`` holds deliveries in progress and is never
read.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from replicad.errors import BadInputError

MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
INFO_MARKER = ":2,"
_LEADING_INT = re.compile(r"^(\d+)")


@dataclass(frozen=True, slots=True)
class MaildirFolder:
    """One mailbox of the tree: ``mailbox`` is the store name, ``path`` its directory."""

    mailbox: str
    path: Path


@dataclass(frozen=True, slots=True)
class MaildirMessage:
    path: Path
    flags: tuple[str, ...]
    internaldate: int
    size: int
    #: The file's unique name: its name before the ``:2,`` info (which
    #: changes with the flags while the message stays the same).
    unique_name: str = ""


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() or (path / "new").is_dir()


def list_folders(root: Path) -> list[MaildirFolder]:
    """INBOX (the root) first, then every ``.Folder`` sub-Maildir sorted by name."""
    if not root.is_dir():
        raise BadInputError(f"{root} is not a directory")
    if not is_maildir(root):
        raise BadInputError(f"{root} is not a Maildir (it has neither cur/ nor new/)")
    folders = [MaildirFolder("INBOX", root)]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.name.startswith(".") or entry.name in (".", ".."):
            continue
        path = Path(entry.path)
        if not entry.is_dir() or not is_maildir(path):
            continue
        folders.append(MaildirFolder(folder_mailbox_name(entry.name), path))
    return folders


def folder_mailbox_name(dirname: str) -> str:
    """``.A.B`` → ``A/B``, decoding modified UTF-7 in each level."""
    if not dirname.startswith(".") or len(dirname) < 2:
        raise BadInputError(f"{dirname!r} is not a Maildir++ folder name")
    levels = dirname[1:].split(".")
    if any(not level for level in levels):
        raise BadInputError(f"Maildir++ folder {dirname!r} has an empty hierarchy level")
    name = "/".join(decode_mutf7(level) for level in levels)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        # A directory name that is not UTF-8 (os.scandir hands it over as
        # lone surrogates): no mailbox can be named after it.
        shown = dirname.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise BadInputError(
            f"Maildir++ folder '{shown}' is not valid UTF-8 (nor modified UTF-7); rename it"
        ) from None
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        raise BadInputError(f"Maildir++ folder {dirname!r} holds control characters; rename it")
    return name


def decode_mutf7(text: str) -> str:
    """Decode IMAP modified UTF-7 (RFC 3501 §5.1.3): ``&AOQ-`` → ``ä``, ``&-`` → ``&``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise BadInputError(f"bad modified UTF-7 in folder name {text!r}: unterminated '&'")
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
            try:
                out.append(base64.b64decode(padded, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise BadInputError(
                    f"bad modified UTF-7 in folder name {text!r}: {chunk!r}"
                ) from None
        i = end + 1
    return "".join(out)


def read_keywords(root: Path) -> dict[str, str]:
    """Dovecot's ``dovecot-keywords``: ``"0 $Label1"`` lines → {"a": "$Label1", …}."""
    path = root / "dovecot-keywords"
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    keywords: dict[str, str] = {}
    for line in lines:
        index, _, name = line.partition(" ")
        if index.isdigit() and int(index) < 26 and name:
            keywords[chr(ord("a") + int(index))] = name
    return keywords


def flags_from_name(name: str, keywords: dict[str, str]) -> tuple[str, ...]:
    """Flags of a Maildir file name; letters without an IMAP meaning (P) are ignored."""
    _, marker, letters = name.partition(INFO_MARKER)
    if not marker:
        return ()
    flags: set[str] = set()
    for letter in letters:
        if letter in MAILDIR_FLAGS:
            flags.add(MAILDIR_FLAGS[letter])
        elif letter in keywords:
            flags.add(keywords[letter])
    return tuple(sorted(flags, key=lambda f: (not f.startswith("\\"), f)))


def _read_uidlist(folder: Path) -> dict[str, int]:
    """basename (before ':') → UID from ``dovecot-uidlist``; empty when absent."""
    try:
        lines = (folder / "dovecot-uidlist").read_text("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return {}
    order: dict[str, int] = {}
    for line in lines[1:]:  # the first line is the header
        uid_text, _, rest = line.partition(" ")
        _, colon, filename = rest.partition(":")
        if uid_text.isdigit() and colon and filename:
            order[filename.split(INFO_MARKER[0], 1)[0]] = int(uid_text)
    return order


def list_messages(folder: MaildirFolder, keywords: dict[str, str]) -> list[MaildirMessage]:
    """The messages of ``new/`` and ``cur/`` in import order (see the module docstring)."""
    uidlist = _read_uidlist(folder.path)
    found: list[tuple[tuple[int, int, str], MaildirMessage]] = []
    for sub in ("new", "cur"):
        directory = folder.path / sub
        if not directory.is_dir():
            continue
        for entry in os.scandir(directory):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            basename = entry.name.split(INFO_MARKER[0], 1)[0]
            leading = _LEADING_INT.match(entry.name)
            # Known UIDs first in UID order, then the rest by delivery time and name.
            key = (
                uidlist.get(basename, 1 << 32),
                int(leading.group(1)) if leading else 0,
                entry.name,
            )
            message = MaildirMessage(
                path=Path(entry.path),
                flags=flags_from_name(entry.name, keywords),
                internaldate=int(st.st_mtime),
                size=st.st_size,
                unique_name=basename,
            )
            found.append((key, message))
    found.sort(key=lambda item: item[0])
    return [message for _, message in found]


def walk(root: Path) -> Iterator[tuple[MaildirFolder, list[MaildirMessage]]]:
    """Every folder with its messages (file names and stat data only, no bodies).

    The tree is checked (a directory, a Maildir, every folder name valid)
    before the first folder is yielded: a bad tree imports nothing."""
    folders = list_folders(root)
    keywords = read_keywords(root)
    for folder in folders:
        yield folder, list_messages(folder, keywords)
