"""The metrics renderer (pure): values from journal records and spool states, label escaping, the strict parser, and
the [defaults]-only `metrics_textfile` key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.promtext import ExpositionError, parse

from certbot_smtp_dist._internal import metrics
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.plugins import make_manager, payload_formats
from certbot_smtp_dist.errors import ConfigError

P = metrics.PREFIX
T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-02T00:00:00.500+00:00"


def attempt(target: str, time: str, outcome: str, cert: str = "c", not_after: str | None = None) -> dict[str, object]:
    rec: dict[str, object] = {"event": "attempt", "target": target, "time": time, "outcome": outcome,
                              "certificate": cert}
    if not_after:
        rec["not_after"] = not_after
    return rec


def test_values_from_records_and_spool() -> None:
    records = [attempt("a", T0, "delivered", "c", "2026-03-01T00:00:00+00:00"),
               attempt("a", T1, "failed", "c", "2026-04-01T00:00:00+00:00"),
               {"event": "dismissed", "target": "a", "time": "2027-01-01T00:00:00+00:00"},
               attempt("gone", T0, "delivered")]  # no longer configured, nothing spooled: not exposed
    parsed = parse(metrics.render(metrics.collect(records, [("a", "pending"), ("*", "blocked"), ("*", "rejected")],
                                                  ["a", "b"])))
    assert parsed.value(P + "last_attempt_timestamp_seconds", target="a") == 1767312000.5
    assert parsed.value(P + "last_success_timestamp_seconds", target="a") == 1767225600
    # the not-after of the last certificate *delivered*, not of the last one tried
    assert parsed.value(P + "last_delivered_not_after_timestamp_seconds", target="a", certificate="c") == 1772323200
    assert parsed.value(P + "spool_entries", target="a", state="pending") == 1
    assert parsed.value(P + "spool_entries", target="b", state="uncertain") == 0  # every state, always
    assert parsed.value(P + "spool_entries", target="*", state="rejected") == 1
    assert (P + "spool_entries", frozenset({("target", "a"), ("state", "rejected")})) not in parsed.samples
    assert not any(dict(labels).get("target") == "gone" for _, labels in parsed.samples)


@given(st.text(min_size=1, max_size=20))
def test_any_label_value_round_trips_made_printable(value: str) -> None:
    text = metrics.render([metrics.TargetValues(value, not_after=((value, 1.0),), spool=(("pending", 2),))],
                          unwanted=[(value, 3.0)])
    assert all(c.isprintable() for line in text.split("\n") for c in line)
    parsed, shown = parse(text), printable(value)
    assert parsed.value(P + "spool_entries", target=shown, state="pending") == 2
    assert parsed.value(P + "last_delivered_not_after_timestamp_seconds", target=shown, certificate=shown) == 1
    assert parsed.value(P + "no_target_deploy_timestamp_seconds", certificate=shown) == 3


def test_escaping() -> None:
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c?d'
    assert metrics.escape_label("evil\x1b]0;owned\x07\r\x9b\u2028.example.com") == "evil?]0;owned????.example.com"


def test_names_that_read_the_same_once_printable_make_one_series() -> None:
    """Two certificate names differing only in a control character: twice the same series would make the reader
    drop the whole textfile. The first in name order stays."""
    text = metrics.render([metrics.TargetValues("t", not_after=(("a\x07", 1.0), ("a\x1b", 2.0)))],
                          unwanted=[("b\r", 3.0), ("b\n", 4.0)])
    parsed = parse(text)  # strict: a duplicate series is an error
    assert parsed.series(P + "last_delivered_not_after_timestamp_seconds") == {
        frozenset({("target", "t"), ("certificate", "a?")}): 1}
    assert parsed.series(P + "no_target_deploy_timestamp_seconds") == {frozenset({("certificate", "b?")}): 4}


@pytest.mark.parametrize("text", ["x 1", "x 1\n\n", 'x{a="\\t"} 1\n', "x{a=\"1\",a=\"2\"} 1\n", "x 1\nx 2\n",
                                  "x 1\ny 1\nx 2\n", "x 1\n# TYPE x gauge\n", "x one\n"])
def test_the_parser_is_strict(text: str) -> None:
    with pytest.raises(ExpositionError if "one" not in text else (ExpositionError, ValueError)):
        parse(text)


def settings(defaults: dict[str, object]) -> object:
    doc = {"defaults": defaults, "targets": {"a": {"host": "127.0.0.1", "port": 465, "tls_mode": "smtps",
                                                   "from_address": "c@example.com", "to": ["p@example.com"]}}}
    return parse_settings(doc, Path("/etc/x/config.toml"), {}, payload_formats(make_manager()))


def test_metrics_textfile_key() -> None:
    assert settings({"metrics_textfile": "/var/lib/x/c.prom"}).metrics_textfile == Path("/var/lib/x/c.prom")  # type: ignore[attr-defined]
    assert settings({}).metrics_textfile is None  # type: ignore[attr-defined]
    for bad in ("relative.prom", "/var/lib/x/c.txt", 5):
        with pytest.raises(ConfigError, match="defaults.metrics_textfile.*absolute path ending in .prom"):
            settings({"metrics_textfile": bad})


def test_metrics_textfile_is_not_a_target_key() -> None:
    doc = {"targets": {"a": {"host": "h", "port": 465, "tls_mode": "smtps", "from_address": "c@example.com",
                             "to": ["p@example.com"], "metrics_textfile": "/x.prom"}}}
    with pytest.raises(ConfigError, match="metrics_textfile"):
        parse_settings(doc, Path("/etc/x/config.toml"), {}, payload_formats(make_manager()))


def test_unwanted_certificates_are_one_series_each_and_the_family_is_always_there() -> None:
    # Always declared, so a dashboard can tell "none" from "not exported"; one sample per certificate name.
    empty = parse(metrics.render(()))
    assert empty.types[P + "no_target_deploy_timestamp_seconds"] == "gauge"
    assert empty.series(P + "no_target_deploy_timestamp_seconds") == {}
    parsed = parse(metrics.render((), unwanted=[("b.example", 20.0), ('a"\\n', 10.5)]))
    assert parsed.series(P + "no_target_deploy_timestamp_seconds") == {
        frozenset({("certificate", "b.example")}): 20.0, frozenset({("certificate", 'a"\\n')}): 10.5}
