"""What was shipped to whom: journal records filtered (`--since`, `--target`) and put in one line each."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist._internal.render import colon_hex
from certbot_smtp_dist.errors import UsageError

SHIPPED = ("delivered", "partial", "uncertain")  # uncertain: may have been shipped
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class Filter:
    since: datetime | None = None
    target: str | None = None
    everything: bool = False  # every journal record, not only what was (or may have been) shipped

    def keeps(self, record: dict[str, Any]) -> bool:
        if not self.everything and not (record.get("event") == "attempt" and record.get("outcome") in SHIPPED):
            return False
        if self.target is not None and record.get("target") != self.target:
            return False
        if self.since is not None:
            when = _time(record)
            return when is not None and when >= self.since
        return True


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: an ISO 8601 date or time (UTC unless it says otherwise), or a duration back from now: 7d, 12h,
    30m, 2w, 90s. Raises UsageError."""
    now = now or datetime.now(timezone.utc)
    found = _DURATION.fullmatch(text.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise UsageError(f"--since {text!r}: not an ISO date (2026-01-31, 2026-01-31T12:00) nor a duration "
                         "(7d, 12h, 30m, 2w)") from exc
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def select(records: Iterable[dict[str, Any]], keep: Filter) -> Iterator[dict[str, Any]]:
    """The records kept, each with its serial in the one form the mail shows (colon-separated upper hex)."""
    for record in records:
        if keep.keeps(record):
            serial = record.get("serial")
            yield {**record, "serial": colon_hex(serial)} if isinstance(serial, str) and serial else record


def line(record: dict[str, Any]) -> str:
    """One record at a glance: time, certificate, serial, target, recipients, outcome and cause; what a record
    does not know is left out, never printed as `-`. Printable: a line written by an older version, or edited, may
    hold control characters (an escape sequence a terminal would act on), each shown as "?"."""
    parts = [str(record.get("time") or "?")]
    outcome = record.get("outcome") if record.get("event") == "attempt" else record.get("event")
    parts.append(str(outcome or record.get("event") or "?"))
    for label, key in (("certificate", "certificate"), ("serial", "serial"), ("target", "target")):
        if record.get(key):
            parts.append(f"{label}={record[key]}")
    recipients = record.get("recipients")
    if isinstance(recipients, list) and recipients:
        parts.append("to=" + ",".join(str(r) for r in recipients))
    elif isinstance(recipients, int) and recipients:  # a journal line written before the addresses were kept
        parts.append(f"to={recipients} recipient(s)")
    if record.get("message_id"):
        parts.append(f"message_id={record['message_id']}")
    cause = " ".join(str(record[k]) for k in ("error_code", "detail") if record.get(k))
    if not cause and record.get("reply"):
        cause = str(record["reply"])
    if cause:
        parts.append(f"cause: {_one_line(cause)}")
    return printable(" ".join(parts))


def _one_line(text: str) -> str:
    """A multi-line cause (a config error lists its problems as `  - key: problem`) as `head: p1; p2`."""
    head, *items = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not items:
        return head
    return f"{head.rstrip(':')}: " + "; ".join(item.removeprefix("- ") for item in items)


def _time(record: dict[str, Any]) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(record.get("time")))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
