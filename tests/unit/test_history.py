"""`history`: --since as a date or a duration, and one readable line per record with nothing shown as `-`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from certbot_smtp_dist._internal import history
from certbot_smtp_dist.errors import UsageError

NOW = datetime(2026, 3, 9, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("text", "ago"), [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)),
                                           ("30m", timedelta(minutes=30)), ("2w", timedelta(weeks=2)),
                                           ("90s", timedelta(seconds=90))])
def test_since_a_duration_counts_back_from_now(text: str, ago: timedelta) -> None:
    assert history.parse_since(text, NOW) == NOW - ago


def test_since_an_iso_date_is_utc_unless_it_says_otherwise() -> None:
    assert history.parse_since("2026-03-01", NOW) == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert history.parse_since("2026-03-01T10:00+02:00", NOW) == datetime(2026, 3, 1, 8, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["last tuesday", "7", "d7", "-7d", ""])
def test_since_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        history.parse_since(text, NOW)


def test_filter_by_target_and_time() -> None:
    records = [
        {"time": "2026-03-01T00:00:00+00:00", "event": "attempt", "outcome": "delivered", "target": "a"},
        {"time": "2026-03-08T00:00:00+00:00", "event": "attempt", "outcome": "delivered", "target": "b"},
        {"time": "2026-03-08T00:00:00+00:00", "event": "attempt", "outcome": "failed", "target": "b"},
        {"time": "2026-03-08T00:00:00+00:00", "event": "config_error", "detail": "x"},
    ]
    since = history.parse_since("7d", NOW)
    assert [r["target"] for r in history.select(records, history.Filter(since=since))] == ["b"]
    assert [r["target"] for r in history.select(records, history.Filter(target="a"))] == ["a"]
    assert len(list(history.select(records, history.Filter(everything=True)))) == 4


def test_a_line_says_what_went_to_whom_with_the_serial_as_in_the_mail() -> None:
    [record] = history.select([{"time": "2026-03-08T04:00:00+00:00", "event": "attempt", "outcome": "delivered",
                                "target": "ops", "certificate": "example.com", "serial": "4a19f3c",
                                "recipients": ["pki@example.com", "ops@example.com"], "message_id": "<m@x>"}],
                              history.Filter())
    line = history.line(record)
    assert line == ("2026-03-08T04:00:00+00:00 delivered certificate=example.com serial=04:A1:9F:3C target=ops "
                    "to=pki@example.com,ops@example.com message_id=<m@x>")


def test_a_record_that_knows_little_shows_no_placeholders() -> None:
    line = history.line({"time": "2026-03-08T04:00:00+00:00", "event": "config_error", "target": None,
                         "certificate": "example.com", "serial": None,
                         "detail": "configuration /etc/x.toml is unusable (2 problem(s)):\n  - targets.a.port: must "
                                   "be an integer\n  - targets.a.to: is required"})
    assert line == ("2026-03-08T04:00:00+00:00 config_error certificate=example.com cause: configuration "
                    "/etc/x.toml is unusable (2 problem(s)): targets.a.port: must be an integer; "
                    "targets.a.to: is required")
    assert not re.search(r"(^| )-( |$)|=-", line)


def test_a_journal_line_from_before_the_addresses_shows_its_count() -> None:
    line = history.line({"time": "t", "event": "attempt", "outcome": "delivered", "recipients": 2})
    assert "to=2 recipient(s)" in line
