"""Certificates whose last deploy no selected target wanted, read from the verified journal: what `status` says of them.

A deploy that a target's `certificates` filter does not match sends nothing and spools nothing; without a journal
line of its own, `status` could not tell it from a deploy that never ran (no journal at all: UNKNOWN, "nothing was
ever recorded"), nor from a certificate still delivered. The ledger writes one `no_target` line per such run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from certbot_smtp_dist._internal.addresses import printable

NO_TARGET = "no_target"  # the journal event of a deploy that no selected target wanted
_DECIDED = ("attempt", "skipped", NO_TARGET)  # a deploy's outcome for a certificate: sent, held back, or unwanted
SHOWN_NAMES = 5


@dataclass(frozen=True, slots=True)
class Unwanted:
    """One certificate, as its last `no_target` line names it: when, the targets considered and the names their
    filters were matched against."""

    certificate: str
    time: str
    targets: tuple[str, ...]
    names: tuple[str, ...]

    def line(self) -> str:
        """Printable: the journal's text may hold control characters (a line of an older version, or edited)."""
        shown = ", ".join(self.names[:SHOWN_NAMES])
        if len(self.names) > SHOWN_NAMES:
            shown += f" and {len(self.names) - SHOWN_NAMES} more"
        return printable(f"certificate {self.certificate}: its last deploy ({self.time}) was wanted by no target "
                         f"(no `certificates` filter of target(s) {', '.join(self.targets) or '(none selected)'} "
                         f"matches {shown or 'its names'}); nothing to deliver")

    def to_json(self) -> dict[str, Any]:
        return {"certificate": self.certificate, "time": self.time, "targets": list(self.targets),
                "names": list(self.names)}


def unwanted(records: Iterable[Mapping[str, Any]]) -> list[Unwanted]:
    """The certificates, by name, whose last deploy outcome in `records` (in journal order) is `no_target`: a
    later delivery attempt or quiet hold-back of the same certificate name ends it."""
    last: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        name = rec.get("certificate")
        if isinstance(name, str) and rec.get("event") in _DECIDED:
            last[name] = rec
    return [Unwanted(name, str(rec.get("time")), _strings(rec.get("targets")), _strings(rec.get("names")))
            for name, rec in sorted(last.items()) if rec.get("event") == NO_TARGET]


def never_delivered(records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the journal holds no delivery attempt at all (of any certificate, to any target)."""
    return not any(rec.get("event") == "attempt" for rec in records)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()
