"""The suite's table: one row per judged comparison, its budget and verdict, as Markdown for stdout and RESULTS.md."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from measure import Stats

HEADER = ("| # | measurement | subject: wall / CPU / peak RSS | peer: wall / CPU / peak RSS | value | budget "
          "| verdict |")
RULE = "|---|---|---|---|---|---|---|"


@dataclass(frozen=True, slots=True)
class Budget:
    """`value <op> limit`; op is "<=", "<" or ">="."""

    op: str
    limit: float
    unit: str = "×"

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.limit
        if self.op == "<":
            return value < self.limit
        return value >= self.limit

    def text(self) -> str:
        return f"{self.op} {self.limit:g}{self.unit}"


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    measurement: str
    subject: Stats | None
    peer: Stats | None
    value: float | None  # a ratio (subject / peer), or an absolute figure in budget.unit
    budget: Budget | None
    note: str = ""
    unit: str = "×"
    why: str = ""  # when over budget: the reason, measured in the same run (RESULTS.md's "Budgets exceeded")

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "SKIP"
        if self.budget is None:
            return "—"
        return "OK" if self.budget.met(self.value) else "OVER"

    def markdown(self) -> str:
        digits = 2 if self.unit else 0  # a bare count has no fraction
        value = "—" if self.value is None else f"{self.value:.{digits}f}{self.unit}"
        cells = [
            self.scenario,
            self.measurement + (f" ({self.note})" if self.note else ""),
            self.subject.brief() if self.subject else "—",
            self.peer.brief() if self.peer else "—",
            value,
            self.budget.text() if self.budget else "—",
            self.verdict,
        ]
        return "| " + " | ".join(cells) + " |"


def ratio_row(scenario: str, measurement: str, subject: Stats, peer: Stats, budget: Budget | None,
              note: str = "") -> Row:
    return Row(scenario, measurement, subject, peer, subject.wall_s / peer.wall_s, budget, note)


def skip_row(scenario: str, measurement: str, why: str) -> Row:
    return Row(scenario, measurement, None, None, None, None, why)


def table(rows: Sequence[Row]) -> str:
    return "\n".join([HEADER, RULE, *(row.markdown() for row in rows)])


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libraries = ", ".join(f"{d} {_version(d)}" for d in ("aiosmtplib", "aiosmtpd", "cryptography", "pluggy",
                                                          "certbot"))
    return [
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {os.cpu_count()} × {model}; load average at the end {os.getloadavg()[0]:.1f}",
        f"- {platform.platform()}; Python {platform.python_version()} ({sys.executable})",
        f"- libraries: {libraries}",
    ]
