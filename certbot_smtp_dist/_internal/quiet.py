"""Quiet targets: which renewals a target's `min_interval` holds back, decided from the authenticated journal only."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from certbot_smtp_dist._internal.journal import Journal
from certbot_smtp_dist.model import CertificateFacts, Target

log = logging.getLogger("certbot_smtp_dist")

REASON = "min_interval"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The last successful delivery of one certificate to one target, as the journal recorded it."""

    time: datetime
    spki_sha256: str | None
    names: tuple[str, ...] | None
    message_id: str | None


def last_deliveries(journal: Journal, certificate: str, targets: Iterable[str]) -> dict[str, Delivered] | None:
    """Per target, the last `delivered` attempt of `certificate`; None when the journal cannot be trusted (it fails
    verification): the caller then sends, and says why. Only a keyed line counts: the state directory is writable
    by root alone, and a line anyone else wrote fails its MAC. `uncertain` and `partial` are not deliveries."""
    if not journal.path.exists() and not journal.head.exists():
        return {}  # nothing ever recorded: nothing to hold back
    records: list[dict[str, Any]] = []
    try:
        verdict = journal.verify(records)  # the lines decided on are the lines verified, read once
    except OSError as exc:
        log.warning("cannot read the journal in %s (%s): min_interval is not applied, every target is sent",
                    journal.directory, exc.strerror or exc)
        return None
    if not verdict.ok:
        first = verdict.problems[0] if verdict.problems else "?"
        log.warning("the journal in %s fails verification (%s): min_interval is not applied, every target is sent; "
                    "see `certbot-smtp-dist journal verify`", journal.directory, first)
        return None
    wanted = set(targets)
    found: dict[str, Delivered] = {}
    for record in records:
        if (record.get("event"), record.get("outcome"), record.get("certificate")) != ("attempt", "delivered",
                                                                                        certificate):
            continue
        target, when = record.get("target"), _time(record.get("time"))
        if target in wanted and isinstance(target, str) and when is not None:
            found[target] = _delivered(record, when)  # journal order is time order: the last one wins
    return found


def hold_back(target: Target, facts: CertificateFacts, last: Delivered | None, now: datetime) -> str | None:
    """Why this renewal is not sent to `target` (one line), or None to send it. Pure."""
    interval = target.min_interval
    if interval is None or last is None:
        return None
    age = now - last.time
    if not timedelta(0) <= age < interval:  # a time ahead of the clock proves nothing: send
        return None
    if not facts.spki_sha256 or last.spki_sha256 != facts.spki_sha256:
        return None  # a new key (or one the journal does not know) is always sent
    if last.names != facts.subject_names:
        return None
    message = f", Message-ID {last.message_id}" if last.message_id else ""
    return (f"{REASON}: delivered {_ago(age)} ago ({last.time.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC{message}) "
            f"with the same key and names, less than {_span(interval)} ago; `deploy --force` sends it anyway")


def _delivered(record: dict[str, Any], when: datetime) -> Delivered:
    spki, names, message_id = record.get("spki_sha256"), record.get("names"), record.get("message_id")
    return Delivered(
        time=when,
        spki_sha256=spki if isinstance(spki, str) and spki else None,
        names=tuple(str(n) for n in names) if isinstance(names, list) else None,
        message_id=message_id if isinstance(message_id, str) else None,
    )


def _time(value: object) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s"
