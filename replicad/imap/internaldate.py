"""IMAP dates: ``date-time`` (INTERNALDATE, APPEND) and ``date`` (SEARCH).

RFC 3501 §9: ``date-time`` is ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` with the day
padded by a space to two characters (``" 1-Feb-1994 ..."``); a SEARCH
``date`` is ``d-Mon-yyyy`` or ``dd-Mon-yyyy``, optionally quoted.  Month
names are English and matched in any case.  Parse errors raise
:class:`replicad.errors.BadInputError`, which the server answers with BAD.
"""

from __future__ import annotations

import datetime
import re

from replicad.errors import BadInputError

MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
          b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_MONTH_NUMBER = {name.lower(): number for number, name in enumerate(MONTHS, 1)}

_DATE_TIME = re.compile(
    rb"^([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})$"
)
_DATE = re.compile(rb"^([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})$")


def format_date_time(when: datetime.datetime) -> bytes:
    """``when`` (time-zone aware) as an RFC 3501 ``date-time`` without quotes."""
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("an IMAP date-time needs a time zone")
    minutes = int(offset.total_seconds()) // 60
    sign = b"-" if minutes < 0 else b"+"
    hours, minutes = divmod(abs(minutes), 60)
    return b"%2d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (
        when.day, MONTHS[when.month - 1], when.year, when.hour, when.minute, when.second,
        sign, hours, minutes,
    )


def parse_date_time(text: bytes) -> datetime.datetime:
    """An RFC 3501 ``date-time`` (quotes optional) as an aware datetime."""
    match = _DATE_TIME.match(text.strip(b'"'))
    if match is None:
        raise BadInputError(f"bad date-time {text!r}")
    day, month, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    number = _MONTH_NUMBER.get(month.lower())
    if number is None:
        raise BadInputError(f"bad month in date-time {text!r}")
    offset = datetime.timedelta(hours=int(zone_h), minutes=int(zone_m))
    try:
        return datetime.datetime(
            int(year), number, int(day), int(hour), int(minute), int(second),
            tzinfo=datetime.timezone(-offset if sign == b"-" else offset),
        )
    except ValueError as error:
        raise BadInputError(f"bad date-time {text!r}: {error}") from None


def format_date(day: datetime.date) -> bytes:
    """``day`` as an RFC 3501 SEARCH ``date`` (``1-Feb-1994``)."""
    return b"%d-%s-%04d" % (day.day, MONTHS[day.month - 1], day.year)


def parse_date(text: bytes) -> datetime.date:
    """An RFC 3501 SEARCH ``date`` (quotes optional)."""
    match = _DATE.match(text.strip(b'"'))
    number = None if match is None else _MONTH_NUMBER.get(match.group(2).lower())
    if match is None or number is None:
        raise BadInputError(f"bad date {text!r}")
    try:
        return datetime.date(int(match.group(3)), number, int(match.group(1)))
    except ValueError as error:
        raise BadInputError(f"bad date {text!r}: {error}") from None
