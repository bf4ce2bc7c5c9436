"""Quiet targets (issue 19 part 3): `min_interval` parsed into a keyed, validated duration, and the pure decision
of which renewals it holds back."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.journal import Journal
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist._internal.quiet import Delivered, hold_back, last_deliveries
from certbot_smtp_dist.errors import ConfigError
from certbot_smtp_dist.model import CertificateFacts, Target

FORMATS = {f.name: f for f in BUILTIN_FORMATS}
BASE = {"host": "smtp.example.com", "from_address": "certbot@example.com", "to": ["pki@example.com"]}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def settings(targets: dict[str, Any], defaults: dict[str, Any] | None = None) -> Any:
    doc: dict[str, Any] = {"targets": targets, **({"defaults": defaults} if defaults is not None else {})}
    return parse_settings(doc, Path("/etc/x/config.toml"), {}, FORMATS)


def problems(targets: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[tuple[Any, Any, str]]:
    with pytest.raises(ConfigError) as err:
        settings(targets, defaults)
    return [(p.target, p.key, p.problem) for p in err.value.problems]


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("36h", timedelta(hours=36)),
    ("7d", timedelta(days=7)), (" 7d ", timedelta(days=7)), ("366d", timedelta(days=366)), ("0d", None),
    ("0s", None),
])
def test_min_interval_units(text: str, expected: timedelta | None) -> None:
    [target] = settings({"t": {**BASE, "min_interval": text}}).targets
    assert target.min_interval == expected


def test_min_interval_defaults_to_every_renewal_and_comes_from_defaults() -> None:
    a, b, c = settings({"a": BASE, "b": {**BASE, "min_interval": "0d"}, "c": {**BASE, "min_interval": "1h"}},
                       defaults={"min_interval": "7d"}).targets
    assert (a.min_interval, b.min_interval, c.min_interval) == (timedelta(days=7), None, timedelta(hours=1))
    [plain] = settings({"t": BASE}).targets
    assert plain.min_interval is None


@pytest.mark.parametrize("bad", ["7", "7w", "-1d", "1.5d", "d", "7 d", "7dd", "", "1e3s", "367d", "99999999d"])
def test_bad_durations_are_keyed_errors(bad: str) -> None:
    found = problems({"quiet": {**BASE, "min_interval": bad}})
    assert [(t, k) for t, k, _ in found] == [("quiet", "min_interval")]
    assert "duration" in found[0][2] or "longer than 366 days" in found[0][2]


@pytest.mark.parametrize("bad", [7, 7.5, True, ["7d"]])
def test_a_duration_is_a_string(bad: Any) -> None:
    assert [(t, k) for t, k, _ in problems({"quiet": {**BASE, "min_interval": bad}})] == [("quiet", "min_interval")]


def test_a_bad_default_is_reported_once_as_defaults_key() -> None:
    found = problems({"a": BASE, "b": BASE}, defaults={"min_interval": "a week"})
    assert [(t, k) for t, k, _ in found] == [(None, "defaults.min_interval")]


# -------------------------------------------------------------------------------------------------- the decision


def facts(spki: str = "aa" * 32, names: tuple[str, ...] = ("www.example.com", "example.com")) -> CertificateFacts:
    return CertificateFacts("example.com", names[0], names, "CN=CA", NOW, NOW + timedelta(days=6), "1", "00" * 32,
                            spki_sha256=spki)


def target(interval: timedelta | None = timedelta(days=7)) -> Target:
    [t] = settings({"t": BASE}).targets
    return Target(**{**{k: getattr(t, k) for k in t.__slots__}, "min_interval": interval})


def last(ago: timedelta, spki: str | None = "aa" * 32,
         names: tuple[str, ...] | None = ("example.com", "www.example.com")) -> Delivered:
    return Delivered(NOW - ago, spki, names, "<m@example.com>")


def test_the_same_key_and_names_within_the_interval_are_held_back() -> None:
    why = hold_back(target(), facts(), last(timedelta(days=2)), NOW)
    assert why is not None and why.startswith("min_interval: delivered 2d 0h ago") and "less than 7d" in why


@pytest.mark.parametrize(("tgt", "fct", "prev"), [
    (target(None), facts(), last(timedelta(days=2))),  # no interval: every renewal
    (target(), facts(), None),  # never delivered
    (target(), facts(), last(timedelta(days=7))),  # the interval has passed
    (target(), facts(), last(timedelta(days=-1))),  # a delivery "in the future": the clock moved back, send
    (target(), facts(spki="bb" * 32), last(timedelta(days=2))),  # new key
    (target(), facts(spki=""), last(timedelta(days=2))),  # key unknown
    (target(), facts(), last(timedelta(days=2), spki=None)),  # a journal line from before keys were recorded
    (target(), facts(names=("example.com",)), last(timedelta(days=2))),  # a name dropped
    (target(), facts(), last(timedelta(days=2), names=None)),  # names unknown
], ids=["no-interval", "never", "passed", "future", "new-key", "no-key", "old-line", "names", "no-names"])
def test_everything_else_is_sent(tgt: Target, fct: CertificateFacts, prev: Delivered | None) -> None:
    assert hold_back(tgt, fct, prev, NOW) is None


def test_the_reason_names_the_delivery_it_refers_to_and_only_what_is_known() -> None:
    why = hold_back(target(timedelta(hours=36)), facts(), last(timedelta(minutes=90)), NOW)
    assert why == ("min_interval: delivered 1h 30m ago (2026-12-01 10:30 UTC, Message-ID <m@example.com>) with the "
                   "same key and names, less than 36h ago; `deploy --force` sends it anyway")
    unnamed = Delivered(NOW - timedelta(seconds=30), "aa" * 32, ("example.com", "www.example.com"), None)
    assert "Message-ID" not in (hold_back(target(), facts(), unnamed, NOW) or "Message-ID")


def test_names_compare_without_case_or_order() -> None:
    upper = facts(names=("WWW.example.com", "Example.COM"))
    assert hold_back(target(), upper, last(timedelta(hours=1)), NOW) is not None


# -------------------------------------------------------------------------------------- what the journal says


def _delivered_line(target: str, time: str) -> dict[str, Any]:
    return {"event": "attempt", "outcome": "delivered", "certificate": "example.com", "target": target,
            "time": time, "spki_sha256": "aa" * 32, "names": ["example.com", "www.example.com"]}


def test_deliveries_are_read_from_the_verified_lines_in_one_read(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 review: the journal was verified, then read a second time, unverified, for the decision."""
    journal = Journal(tmp_path, b"k" * 32)
    journal.append_all([_delivered_line("quiet", "2026-11-30T12:00:00+00:00"),
                        _delivered_line("other", "2026-11-30T13:00:00+00:00")])
    def unverified(self: Journal) -> Any:
        raise AssertionError("the journal was read again, unverified")

    monkeypatch.setattr(Journal, "records", unverified)
    found = last_deliveries(journal, "example.com", ["quiet"])
    assert found is not None and set(found) == {"quiet"}
    assert found["quiet"].time == datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def test_a_sealed_0_1_0_line_holds_nothing_back(tmp_path: Path) -> None:
    """Only keyed lines count: a 0.1.0 line (written by anyone who could write the state then) is history only."""
    legacy = json.dumps({"seq": 1, **_delivered_line("quiet", "2026-11-30T12:00:00+00:00"), "prev": "0" * 64},
                        separators=(",", ":")).encode()
    (tmp_path / "journal.jsonl").write_bytes(legacy + b"\n")
    (tmp_path / "journal.head").write_text(json.dumps({"seq": 1, "sha256": hashlib.sha256(legacy).hexdigest()}))
    journal = Journal(tmp_path, b"k" * 32)
    journal.append({"event": "after"})  # seals the 0.1.0 journal
    assert journal.verify().ok
    assert last_deliveries(journal, "example.com", ["quiet"]) == {}
