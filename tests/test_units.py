"""The one grammar for durations, sizes and moments: every flag, variable and query reads it alike."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collab.units import LATEST_TIME, format_duration, format_size, format_time, parse_duration, parse_size, parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("500ms", 0.5),
        ("30s", 30),
        ("1.5", 1.5),
        ("0", 0),
        ("2m", 120),
        ("1h", 3600),
        ("7d", 7 * 86400),
        ("1w", 7 * 86400),
        (" 2 H ", 7200),
        (".5s", 0.5),
    ],
)
def test_durations_read_every_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-5m", "-1", "5x", "", "m", "1e3", "inf", "nan", "1h30m"])
def test_a_bad_duration_names_itself(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_duration(text)


def test_negative_values_say_so() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration("-5m")
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_size("-1M")


@pytest.mark.parametrize(
    ("text", "size"),
    [("64M", 64 * 2**20), ("512KiB", 512 * 2**10), ("1g", 2**30), ("10", 10), ("16 MB", 16 * 2**20)],
)
def test_sizes_read_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "64X", "1.5M", "", "M"])
def test_a_bad_size_names_itself_and_gives_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size: .* \(try .*64M"):
        parse_size(text)


def test_the_formatters_write_what_help_shows() -> None:
    assert [format_duration(value) for value in (0.05, 3600.0, 30 * 86400.0, 20.0, 600.0, 604800.0, 0.0, 1.5)] == [
        "50ms",
        "1h",
        "30d",
        "20s",
        "10m",
        "1w",
        "0s",
        "1500ms",
    ]
    assert [format_size(value) for value in (64 * 2**20, 16 * 2**20, 2**30, 1536, 0)] == [
        "64M",
        "16M",
        "1G",
        "1536",
        "0",
    ]


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from([0.001, 1, 60, 3600, 86400]))
def test_a_formatted_duration_reads_back(count: int, unit: float) -> None:
    seconds = count * unit
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9, abs=1e-9)


@given(st.integers(min_value=0, max_value=2**40))
def test_a_formatted_size_reads_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_a_moment_is_a_duration_ago_or_iso_8601() -> None:
    assert parse_time("2h", NOW) == NOW - 7200
    assert parse_time("500ms", NOW) == pytest.approx(NOW - 0.5)
    assert parse_time("1w", NOW) == NOW - 7 * 86400
    assert parse_time("3d ago", NOW) == NOW - 3 * 86400
    assert parse_time("2027-01-15T08:00:00Z", NOW) == parse_time("2027-01-15T09:00:00+01:00", NOW)
    assert parse_time("2027-01-15T08:00:00", NOW) == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp(), "UTC if no zone"


@pytest.mark.parametrize("text", ["yesterday-ish", "-2h", "", "5"])
def test_a_bad_moment_names_itself(text: str) -> None:
    """A bare number is no moment: it could be a duration or an ISO 8601 basic date (20270115)."""
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text, NOW)


@pytest.mark.parametrize("text", ["100000000000w", "99999999999999999999d", "1969-12-31", "0001-01-01T00:00:00+05:00"])
def test_a_moment_before_1970_or_past_any_calendar_is_refused(text: str) -> None:
    """Out of range for datetime (it would overflow when shown), or before anything collab stored."""
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text, NOW)


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59.500Z"])
def test_a_moment_past_the_year_9999_is_refused_since_it_could_not_be_shown(text: str) -> None:
    """datetime reads it (the zone takes it past 9999), but `format_time` cannot write it: answering raised."""
    with pytest.raises(ValueError, match="is after the year 9999"):
        parse_time(text, NOW)
    assert format_time(parse_time("9999-12-31T23:59:59Z", NOW)) == "9999-12-31T23:59:59.000Z"
    assert parse_time("9999-12-31T23:59:59Z", NOW) == LATEST_TIME


def test_times_are_shown_in_utc_and_read_back() -> None:
    shown = format_time(NOW + 0.25)
    assert shown == "2027-01-15T08:00:00.250Z"
    assert parse_time(shown, 0) == NOW + 0.25
