"""`status --nagios`: the spool's rows and the delivered certificates' expiry in, one plugin output out (no I/O).

Output and exit status follow the Monitoring Plugins Development Guidelines (nagios-plugins.org/doc/guidelines.html):
one line `SMTP-DIST STATE - summary | perfdata`, long output on the lines after it, exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN; perfdata `label=value[UOM];[warn];[crit];[min];[max]` with thresholds in range notation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist._internal.metrics import epoch

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Expiry:
    """The not-after of the last certificate delivered to one target, per certificate name."""

    target: str
    certificate: str
    not_after: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class Thresholds:
    warn_days: int = 14
    crit_days: int = 7


@dataclass(frozen=True, slots=True)
class Tampered:
    """A journal that fails verification: what is wrong (its first bad line), and the command that shows it all."""

    problem: str
    next: str


def line(state: int, summary: str) -> str:
    """The first line without perfdata (UNKNOWN, or a state not there yet)."""
    return f"SMTP-DIST {NAMES[state]} - {_clean(summary)}"


def check(rows: Sequence[Mapping[str, Any]], needs_human: Iterable[bool], expiries: Iterable[Expiry], now: float,
          limits: Thresholds, journal: Tampered | None = None, notes: Sequence[str] = ()) -> tuple[int, str]:
    """Exit status and output. `rows`: `status`'s rows; `needs_human`: for each row, whether `retry` alone will not
    end it (failed, blocked, rejected, an uncertain delivery that waits); `journal`: set when the journal fails
    verification, which is CRITICAL whatever else holds (its records cannot be trusted to say all is well);
    `notes`: last lines of the long output, which change no state."""
    human = list(needs_human)
    failed = sum(1 for r in rows if r["state"] in ("failed", "rejected"))
    pending = sum(1 for r in rows if r["state"] == "pending")
    uncertain = sum(1 for r in rows if r["state"] == "uncertain")
    created = [t for r in rows if r["state"] == "pending" and (t := epoch(r.get("created"))) is not None]
    oldest = max(0, int(now - min(created))) if created else 0
    soonest = min(expiries, key=lambda e: e.not_after, default=None)
    days = (soonest.not_after - now) / DAY if soonest else None
    state = OK
    if pending or uncertain or (days is not None and days < limits.warn_days):
        state = WARNING
    if any(human) or journal is not None or (days is not None and days < limits.crit_days):
        state = CRITICAL
    parts = [] if journal is None else [journal.problem]
    parts += [f"{failed} failed or blocked", f"{pending} pending", f"{uncertain} uncertain"]
    if soonest is not None and days is not None:
        parts.append(f"earliest delivered certificate {soonest.certificate} (target {soonest.target}) "
                     f"{'expired' if days < 0 else 'expires in'} {abs(days):.1f} days{' ago' if days < 0 else ''}")
    else:
        parts.append("no delivered certificate recorded")
    perf = [f"pending={pending};0;;0", f"uncertain={uncertain};0;;0", f"failed={failed};;0;0",
            f"oldest_pending={oldest}s;;;0"]
    if days is not None:
        # Range "N:" alerts below N (guidelines, threshold format): fewer days left than the limit.
        perf.append(f"expires_in_days={days:.2f};{limits.warn_days}:;{limits.crit_days}:;;")
    perf.append(f"journal_intact={0 if journal else 1};;1:;0;1")
    extra = [] if journal is None else [_clean(f"journal: {journal.problem}"), _clean(f"  next: {journal.next}")]
    return state, "\n".join([f"{line(state, ', '.join(parts))} | {' '.join(perf)}", *extra,
                             *_long(rows, soonest, now), *(_clean(n) for n in notes)])


def _long(rows: Sequence[Mapping[str, Any]], soonest: Expiry | None, now: float) -> list[str]:
    out = []
    for r in rows:
        what = "deploy blocked" if r.get("kind") == "blocked" else f"target {r.get('target')}"
        if r["state"] == "rejected":
            out.append(f"rejected spool file {r.get('id')}: {r.get('detail')}")
        else:
            out.append(f"{r['state']}: {r.get('id')} {what} certificate {r.get('certificate')} attempts "
                       f"{r.get('attempts')} since {r.get('created')} {r.get('error_code') or ''}".rstrip())
        out += [f"  next: {step}" for step in r.get("next", ())]
    if soonest is not None:
        when = _local(soonest.not_after).isoformat(timespec="seconds")
        out.append(f"earliest not-after of the last delivered certificates: {when} ({soonest.certificate} to "
                   f"{soonest.target}, {(soonest.not_after - now) / DAY:.1f} days)")
    return [_clean(o) for o in out]


def _local(seconds: float) -> datetime:
    """The moment in local time; in UTC when local time cannot hold it: RFC 5280 §4.1.2.5's 99991231235959Z ("no
    well-defined expiration date") is in the year 10000 east of UTC, past what a datetime holds."""
    utc = datetime.fromtimestamp(seconds, timezone.utc)
    try:
        return utc.astimezone()
    except (OverflowError, ValueError):
        return utc


def _clean(text: str) -> str:
    """No `|` (it starts perfdata on any line), no line break inside one line of output, and no other control
    character (names from the journal may hold an escape sequence): each shown as "?"."""
    return printable(text.replace("|", "/").replace("\n", " ").replace("\r", " "))

