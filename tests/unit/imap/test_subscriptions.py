"""IMAP subscriptions: which names LSUB and the LIST-EXTENDED forms return
(pure, replicad.imap.listing) and the session commands on a real store
(RFC 3501 §6.3.6-§6.3.9, RFC 5258 §3, §3.5)."""

from __future__ import annotations

from pathlib import Path

from replicad.imap.listing import list_names, list_subscribed, lsub_names

from .test_session import Client, mail

# The mailboxes and subscriptions of imaptest's listext script, "M" for $mailbox.
NAMES = [
    "INBOX",
    "M",
    "M/test1",
    "M/test2",
    "M/test2/test1",
    "M/test3",
    "M/test4/test5",
    "M/test4/test52",
    "M/test7",
    "M/test7/test7",
    "M/test8",
    "M/test8/test8",
    "M/test8/test9",
]
SUBSCRIBED = {
    "M/test1",
    "M/test2/test1",
    "M/test6",
    "M/test7/test7",
    "M/test8/test8",
    "M/test8/test9",
}


def _shown(listed: list) -> dict[str, tuple[tuple[str, ...], bool]]:  # type: ignore[type-arg]
    return {e.name: (e.attributes, e.childinfo) for e in listed}


def test_list_subscribed_lists_names_that_do_not_exist() -> None:
    shown = _shown(list_subscribed(NAMES, SUBSCRIBED, ["M/*"]))
    assert set(shown) == SUBSCRIBED
    assert shown["M/test6"] == (("\\NonExistent", "\\Subscribed"), False)
    assert shown["M/test1"] == (("\\HasNoChildren", "\\Subscribed"), False)


def test_recursivematch_gives_childinfo_only_for_descendants_the_patterns_hid() -> None:
    # M/test2% matches M/test2 alone; its subscribed child is hidden.
    shown = _shown(list_subscribed(NAMES, SUBSCRIBED, ["M/test2%"], recursive=True))
    assert shown == {"M/test2": (("\\HasChildren",), True)}
    # *test7 matches the subscribed child itself: the parent is not listed.
    shown = _shown(list_subscribed(NAMES, SUBSCRIBED, ["M*test7"], recursive=True))
    assert set(shown) == {"M/test7/test7"}
    # *test8 matches M/test8/test8 but not M/test8/test9: the parent is listed.
    shown = _shown(list_subscribed(NAMES, SUBSCRIBED, ["M*test8"], recursive=True))
    assert shown["M/test8"] == (("\\HasChildren",), True)
    assert shown["M/test8/test8"] == (("\\HasNoChildren", "\\Subscribed"), False)
    shown = _shown(list_subscribed(NAMES, SUBSCRIBED, ["M/test2", "M/test2/test1"], recursive=True))
    assert set(shown) == {"M/test2/test1"}
    # Without RECURSIVEMATCH no CHILDINFO at all.
    assert not any(e.childinfo for e in list_subscribed(NAMES, SUBSCRIBED, ["*"]))


def test_return_subscribed_marks_only_subscribed_mailboxes() -> None:
    shown = _shown(list_names(NAMES, ["M/%"], extended=True, subscribed=SUBSCRIBED))
    assert "\\Subscribed" in shown["M/test1"][0]
    assert "\\Subscribed" not in shown["M/test2"][0]
    assert "\\Subscribed" not in shown["M/test4"][0]  # implied: \NonExistent only


def test_lsub_percent_shows_unsubscribed_superiors_noselect() -> None:
    subscribed = {"M/test", "M/test2/test", "M/test3/test3"}
    assert lsub_names(subscribed, "M/%") == [
        ("M/test", ()),
        ("M/test2", ("\\Noselect",)),
        ("M/test3", ("\\Noselect",)),
    ]
    assert lsub_names(subscribed, "*test") == [("M/test", ()), ("M/test2/test", ())]
    assert lsub_names({"M/a/b"}, "M/*") == [("M/a/b", ())]


async def test_subscribe_lsub_unsubscribe_and_list_subscribed(tmp_path: Path) -> None:
    async with mail(tmp_path) as access:
        client = Client(access)
        await client.say(b"a LOGIN alice secret\r\n")
        await client.say(b"b CREATE Work/Projects\r\nb2 CREATE Lists/gone\r\n")
        reply = await client.say(b"c SUBSCRIBE Work/Projects\r\nd SUBSCRIBE Lists/gone\r\n")
        assert reply == [b"c OK SUBSCRIBE completed", b"d OK SUBSCRIBE completed"]
        # Checked on SUBSCRIBE (RFC 3501 §6.3.6 MAY, as Dovecot) ...
        reply = await client.say(b'd2 SUBSCRIBE Never/created\r\nd4 SUBSCRIBE "Wor*"\r\n')
        assert reply == [
            b"d2 NO [NONEXISTENT] Mailbox doesn't exist: Never/created",
            b"d4 NO [NONEXISTENT] Mailbox doesn't exist: Wor*",  # a name, not a pattern
        ]
        # ... but kept once the mailbox is gone (the RFC's MUST NOT remove).
        await client.say(b"d3 DELETE Lists/gone\r\n")
        reply = await client.say(b'e LSUB "" *\r\n')
        assert reply == [
            b'* LSUB () "/" "Lists/gone"',
            b'* LSUB () "/" "Work/Projects"',
            b"e OK LSUB completed",
        ]
        reply = await client.say(b'f LSUB "" %\r\n')
        assert reply == [
            b'* LSUB (\\Noselect) "/" "Lists"',
            b'* LSUB (\\Noselect) "/" "Work"',
            b"f OK LSUB completed",
        ]
        reply = await client.say(b'g LIST (SUBSCRIBED) "" *\r\n')
        assert reply == [
            b'* LIST (\\NonExistent \\Subscribed) "/" "Lists/gone"',
            b'* LIST (\\HasNoChildren \\Subscribed) "/" "Work/Projects"',
            b"g OK LIST completed",
        ]
        reply = await client.say(b'h LIST (SUBSCRIBED RECURSIVEMATCH) "" %\r\n')
        assert reply == [
            b'* LIST (\\HasNoChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))',
            b'* LIST (\\HasChildren) "/" "Work" ("CHILDINFO" ("SUBSCRIBED"))',
            b"h OK LIST completed",
        ]
        reply = await client.say(b'i LIST "" % RETURN (SUBSCRIBED)\r\n')
        assert b'* LIST (\\HasChildren) "/" "Work"' in reply
        assert not any(b"\\Subscribed" in line for line in reply)
        reply = await client.say(b"j UNSUBSCRIBE Work/Projects\r\nk UNSUBSCRIBE Never\r\n")
        assert reply == [b"j OK UNSUBSCRIBE completed", b"k OK UNSUBSCRIBE completed"]
        reply = await client.say(b'l LSUB "" *\r\n')
        assert reply == [b'* LSUB () "/" "Lists/gone"', b"l OK LSUB completed"]
        reply = await client.say(b'm LIST "" * RETURN (SUBSCRIBED)\r\n')
        assert not any(b"\\Subscribed" in line for line in reply)
        # A superior LIST shows may be subscribed too.
        reply = await client.say(b"n SUBSCRIBE Work\r\n")
        assert reply == [b"n OK SUBSCRIBE completed"]


async def test_unsubscribe_of_a_bad_name_is_refused_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    async with mail(tmp_path) as access:
        client = Client(access)
        await client.say(b"a LOGIN alice secret\r\n")
        reply = await client.say(b"b SUBSCRIBE a//b\r\n")
        assert reply[0].startswith((b"b NO", b"b BAD")), reply
        assert (await client.say(b"c NOOP\r\n"))[-1].startswith(b"c OK")
