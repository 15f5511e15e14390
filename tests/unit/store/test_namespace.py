"""Mailbox names as last-writer-wins claims (replicad.store.namespace; I4, I6).

The name each mailbox is shown under must be a function of the set of
claims alone (so nodes that saw the same claims in any order agree), must
be unique per user (so no two mailboxes merge), and must give every
claimed name to its newest claimant.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from replicad.store.namespace import Claim, derived_names, effective_names

GUIDS = st.binary(min_size=16, max_size=16)
NAMES = st.sampled_from(["Work", "Work-00000000", "Archive", "Lists/Python", "Sent"])
CLAIMS = st.dictionaries(GUIDS, st.builds(Claim, st.integers(0, 5), NAMES), max_size=8)


@given(CLAIMS, st.randoms(use_true_random=False))
def test_names_depend_on_the_claims_alone(claims: dict[bytes, Claim], rng: random.Random) -> None:
    items = list(claims.items())
    rng.shuffle(items)
    assert effective_names(dict(items)) == effective_names(claims)


@given(CLAIMS)
def test_every_mailbox_gets_a_name_of_its_own(claims: dict[bytes, Claim]) -> None:
    shown = effective_names(claims)
    assert set(shown) == set(claims)
    assert len(set(shown.values())) == len(shown)


@given(CLAIMS)
def test_each_claimed_name_goes_to_its_newest_claimant(claims: dict[bytes, Claim]) -> None:
    shown = effective_names(claims)
    for name in {c.name for c in claims.values()}:
        holder = max(
            (g for g, c in claims.items() if c.name == name), key=lambda g: (claims[g].stamp, g)
        )
        assert shown[holder] == name


def test_a_loser_is_shown_with_its_guid_and_gets_its_name_back_when_the_holder_goes() -> None:
    older, newer = bytes.fromhex("1a2b3c4d" + "00" * 12), bytes.fromhex("ff" * 16)
    claims = {older: Claim(1, "Work"), newer: Claim(2, "Work")}
    assert effective_names(claims) == {newer: "Work", older: "Work-1a2b3c4d"}
    del claims[newer]
    assert effective_names(claims) == {older: "Work"}


def test_a_derived_name_taken_by_a_claim_is_passed_over() -> None:
    loser = bytes.fromhex("1a2b3c4d" + "00" * 12)
    squatter, holder = bytes.fromhex("aa" * 16), bytes.fromhex("ff" * 16)
    claims = {
        loser: Claim(1, "Work"),
        holder: Claim(2, "Work"),
        squatter: Claim(3, "Work-1a2b3c4d"),
    }
    shown = effective_names(claims)
    assert shown[squatter] == "Work-1a2b3c4d"
    assert shown[loser] == next(d for d in derived_names("Work", loser) if d != "Work-1a2b3c4d")
