"""Source folder names and flags mapped to this store's (pure).

Folder names (RFC 3501 §5.1, RFC 2342 NAMESPACE, RFC 6154 SPECIAL-USE):

1. the wire name is decoded from modified UTF-7 (RFC 3501 §5.1.3, with the
   IMAP wire's own codec, :mod:`replicad.imap.mutf7`; a name that is not
   valid modified UTF-7 is taken as it is, as our IMAP server does);
2. the personal namespace prefix (``INBOX.`` on Courier and Cyrus) is
   removed, so ``INBOX.Sent`` becomes ``Sent``; INBOX itself stays INBOX;
3. the levels, split at the source's delimiter, are joined with ``/``
   (ours); a ``/`` inside a level becomes ``_`` rather than a new level;
4. a top-level folder with a SPECIAL-USE role is given the name our IMAP
   server announces that role under (``\\Sent`` is ``Sent``,
   :data:`replicad.imap.listing.SPECIAL_USE`), unless another source folder
   already has that name (then both keep their own names).

Folders the source lists ``\\Noselect`` or ``\\NonExistent`` are not
mailboxes and are not copied (our store shows superiors by itself).

Flags: the five system flags are kept; ``\\Recent`` is session state and is
dropped; keywords this store cannot hold (not an atom, too long) are
dropped and counted, never stored mangled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from replicad.errors import BadInputError
from replicad.flags import normalise_flag
from replicad.imap.listing import SPECIAL_USE
from replicad.imap.mutf7 import mailbox_name_from_wire

TARGET_SEPARATOR = "/"
INBOX = "INBOX"
#: RFC 6154 role -> the name our IMAP server announces it under.
ROLE_NAMES = {role: name for name, role in SPECIAL_USE.items()}
_NOT_MAILBOXES = frozenset({"\\noselect", "\\nonexistent"})


@dataclass(frozen=True, slots=True)
class SourceFolder:
    """A folder as the source LISTs it: wire name, delimiter (None: flat), attributes."""

    wire_name: str
    delimiter: str | None
    attributes: tuple[str, ...] = ()

    @property
    def selectable(self) -> bool:
        return not any(a.lower() in _NOT_MAILBOXES for a in self.attributes)

    @property
    def role(self) -> str | None:
        for attribute in self.attributes:
            for role in ROLE_NAMES:
                if attribute.lower() == role.lower():
                    return role
        return None


def plain_target_name(folder: SourceFolder, prefix: str = "") -> str:
    """Steps 1-3 of the module docstring: the name without role mapping."""
    name = mailbox_name_from_wire(folder.wire_name)
    if name.upper() == INBOX:
        return INBOX
    if prefix and name.startswith(prefix) and len(name) > len(prefix):
        name = name[len(prefix) :]
    if folder.delimiter:
        levels = name.split(folder.delimiter)
    else:
        levels = [name]
    levels = [level.replace(TARGET_SEPARATOR, "_") for level in levels]
    if any(not level for level in levels):
        raise BadInputError(f"source folder {folder.wire_name!r} has an empty level")
    if levels[0].upper() == INBOX:
        levels[0] = INBOX
    return TARGET_SEPARATOR.join(levels)


def map_folders(folders: Iterable[SourceFolder], prefix: str = "") -> dict[str, str]:
    """Wire name -> target name for every selectable folder, superiors first
    in the returned order (a parent is created before its children)."""
    selectable = [f for f in folders if f.selectable]
    plain = {f.wire_name: plain_target_name(f, prefix) for f in selectable}
    taken = set(plain.values())
    mapped: dict[str, str] = {}
    for folder in selectable:
        name = plain[folder.wire_name]
        role = folder.role
        if role is not None and TARGET_SEPARATOR not in name and name != INBOX:
            wanted = ROLE_NAMES[role]
            if wanted not in taken:
                taken.discard(name)
                taken.add(wanted)
                name = wanted
        mapped[folder.wire_name] = name
    if len(set(mapped.values())) != len(mapped):
        seen: dict[str, str] = {}
        for wire, name in mapped.items():
            if name in seen:
                raise BadInputError(
                    f"source folders {seen[name]!r} and {wire!r} both map to {name!r}"
                )
            seen[name] = wire
    return dict(sorted(mapped.items(), key=lambda kv: (kv[1].count(TARGET_SEPARATOR), kv[1])))


@dataclass(frozen=True, slots=True)
class MappedFlags:
    flags: tuple[str, ...]
    dropped: int  # keywords this store cannot hold


def map_flags(flags: Sequence[str]) -> MappedFlags:
    """The flags to store for a source message's ``flags`` (module docstring)."""
    kept: set[str] = set()
    dropped = 0
    for flag in flags:
        if flag.lower() == "\\recent":
            continue
        try:
            kept.add(normalise_flag(flag))
        except BadInputError:
            dropped += 1
    return MappedFlags(tuple(sorted(kept, key=lambda f: (not f.startswith("\\"), f))), dropped)
