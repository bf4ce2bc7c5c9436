"""Prometheus text exposition of the state: journal records and spool states in, text out (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from certbot_smtp_dist._internal.addresses import printable

PREFIX = "certbot_smtp_dist_"
SPOOL_STATES = ("pending", "failed", "blocked", "uncertain")  # always exposed, 0 when none
REJECTED = "rejected"  # exposed only when the spool holds a rejected (forged, damaged) file
ANY_TARGET = "*"  # spool entries not tied to one target: a blocked deploy, a rejected file


@dataclass(frozen=True, slots=True)
class TargetValues:
    """What the state says about one target; timestamps in seconds since the epoch, None when never."""

    target: str
    last_attempt: float | None = None
    last_success: float | None = None
    not_after: tuple[tuple[str, float], ...] = ()  # (certificate, not-after of its last delivered certificate)
    spool: tuple[tuple[str, int], ...] = ()  # (state, entries)


def epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def collect(records: Iterable[Mapping[str, Any]], spool_states: Iterable[tuple[str, str]],
            configured: Iterable[str]) -> tuple[TargetValues, ...]:
    """Per target: from the journal's `attempt` records (in order), the last attempt, the last delivery and the
    not-after of the last certificate delivered per certificate name; from `spool_states` ((target, state) pairs),
    the entries per state. Targets: the configured ones, plus any the spool still holds entries for."""
    attempt: dict[str, float] = {}
    success: dict[str, float] = {}
    not_after: dict[str, dict[str, float]] = {}
    for rec in records:
        target, when = rec.get("target"), epoch(rec.get("time"))
        if rec.get("event") != "attempt" or not isinstance(target, str) or when is None:
            continue
        attempt[target] = max(when, attempt.get(target, when))
        if rec.get("outcome") != "delivered":
            continue
        success[target] = max(when, success.get(target, when))
        expiry, cert = epoch(rec.get("not_after")), rec.get("certificate")
        if expiry is not None and isinstance(cert, str):
            not_after.setdefault(target, {})[cert] = expiry  # later records win: the last certificate delivered
    counts: dict[str, dict[str, int]] = {}
    for target, state in spool_states:
        per = counts.setdefault(target, {})
        per[state] = per.get(state, 0) + 1
    names = sorted(set(configured) | set(counts))
    return tuple(
        TargetValues(name, attempt.get(name), success.get(name), tuple(sorted(not_after.get(name, {}).items())),
                     tuple((s, counts.get(name, {}).get(s, 0)) for s in _states(counts.get(name, {}))))
        for name in names)


def _states(present: Mapping[str, int]) -> tuple[str, ...]:
    return SPOOL_STATES + tuple(sorted(s for s in present if s not in SPOOL_STATES))


_HELP = (
    ("last_attempt_timestamp_seconds", "gauge", "Time of the last delivery attempt to the target (journal)."),
    ("last_success_timestamp_seconds", "gauge", "Time of the last successful delivery to the target (journal)."),
    ("last_delivered_not_after_timestamp_seconds", "gauge",
     "Not-after of the last certificate delivered to the target, per certificate name."),
    ("spool_entries", "gauge", "Spool entries per target and state (target=\"*\": blocked deploys, rejected files)."),
)
_NO_TARGET = ("no_target_deploy_timestamp_seconds", "gauge",
              "Time of a certificate's last deploy when no selected target's certificates filter wanted it (a later "
              "delivery or hold-back of that certificate ends the series): nothing was sent; check the filters.")
_JOURNAL = ("journal_intact", "gauge",
            "1 if the journal verifies (HMAC chain intact up to its recorded head), 0 if it does not: run "
            "certbot-smtp-dist journal verify.")


def render(values: Iterable[TargetValues], journal_intact: bool | None = None,
           unwanted: Iterable[tuple[str, float]] = ()) -> str:
    """The text exposition format 0.0.4: HELP and TYPE before each family, label values escaped, a final newline.
    `journal_intact`: the journal's verdict, exposed when known (the target values come from its verified lines).
    `unwanted`: (certificate, time) of each certificate whose last deploy no target wanted (unwanted.unwanted), a
    family always exposed, empty when none: a renewal nobody received is never absent from monitoring."""
    rows = tuple(values)
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _HELP}
    for v in rows:
        t = (("target", v.target),)
        if v.last_attempt is not None:
            samples["last_attempt_timestamp_seconds"].append(_sample(t, v.last_attempt))
        if v.last_success is not None:
            samples["last_success_timestamp_seconds"].append(_sample(t, v.last_success))
        for cert, expiry in v.not_after:
            samples["last_delivered_not_after_timestamp_seconds"].append(_sample(t + (("certificate", cert),), expiry))
        for state, count in v.spool:
            samples["spool_entries"].append(_sample(t + (("state", state),), count))
    lines: list[str] = []
    for name, kind, text in _HELP:
        lines += [f"# HELP {PREFIX}{name} {_escape_help(text)}", f"# TYPE {PREFIX}{name} {kind}"]
        lines += [PREFIX + name + s for s in _first_per_series(samples[name])]
    name, kind, text = _NO_TARGET
    lines += [f"# HELP {PREFIX}{name} {_escape_help(text)}", f"# TYPE {PREFIX}{name} {kind}"]
    lines += [PREFIX + name + s
              for s in _first_per_series(_sample((("certificate", cert),), when) for cert, when in sorted(unwanted))]
    if journal_intact is not None:
        name, kind, text = _JOURNAL
        lines += [f"# HELP {PREFIX}{name} {_escape_help(text)}", f"# TYPE {PREFIX}{name} {kind}",
                  f"{PREFIX}{name} {int(journal_intact)}"]
    return "\n".join(lines) + "\n"


def _first_per_series(samples: Iterable[str]) -> list[str]:
    """One sample per label set: names that differ only in what escape_label shows as "?" would make one series
    twice, and a textfile with a duplicate series is dropped whole by its reader. The first, in name order, stays."""
    first: dict[str, str] = {}
    for sample in samples:
        first.setdefault(sample.rpartition(" ")[0], sample)  # the labels, without the value
    return list(first.values())


def _sample(labels: tuple[tuple[str, str], ...], value: float) -> str:
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
    number = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
    return f"{{{inner}}} {number}"


def escape_label(value: str) -> str:
    """Label values: made printable as history and status show journal text (a name an older version journaled
    may hold ESC or CR, which would reach whoever cats the textfile), then backslash and double quote escaped, as
    the exposition format requires (a line feed is already "?")."""
    return printable(value).replace("\\", "\\\\").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
