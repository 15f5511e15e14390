"""IMAP date-time and SEARCH date formats (RFC 3501 §9)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.errors import BadInputError
from replicad.imap.internaldate import format_date, format_date_time, parse_date, parse_date_time

PDT = datetime.timezone(datetime.timedelta(hours=-7))


def test_date_time_example_of_rfc_3501() -> None:
    when = datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=PDT)
    assert format_date_time(when) == b"17-Jul-1996 02:44:25 -0700"
    assert parse_date_time(b'"17-Jul-1996 02:44:25 -0700"') == when


def test_single_digit_day_is_space_padded() -> None:
    when = datetime.datetime(1994, 2, 1, 0, 0, 0, tzinfo=datetime.UTC)
    assert format_date_time(when) == b" 1-Feb-1994 00:00:00 +0000"
    assert parse_date_time(b" 1-Feb-1994 00:00:00 +0000") == when


def test_search_dates() -> None:
    assert format_date(datetime.date(1994, 2, 1)) == b"1-Feb-1994"
    assert parse_date(b"1-feb-1994") == datetime.date(1994, 2, 1)
    assert parse_date(b'"01-Feb-1994"') == datetime.date(1994, 2, 1)


@pytest.mark.parametrize("text", [b"32-Jan-2000", b"1-Foo-2000", b"1-Feb-94", b"", b"1 Feb 1994"])
def test_bad_dates_are_refused(text: bytes) -> None:
    with pytest.raises(BadInputError):
        parse_date(text)


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError):
        format_date_time(datetime.datetime(2000, 1, 1))


@given(st.datetimes(min_value=datetime.datetime(1000, 1, 1),
                    timezones=st.sampled_from([datetime.UTC, PDT])))
def test_date_time_round_trips(when: datetime.datetime) -> None:
    when = when.replace(microsecond=0)
    assert parse_date_time(format_date_time(when)) == when
