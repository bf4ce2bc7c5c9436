"""The retry spool: one JSON file per unfinished delivery, written ahead of the attempt.

An entry holds no secret and no key material: only what is needed to render the same message again from the
lineage on disk (paths, Message-ID, Date, remaining recipients) and the facts of the last failure. Each entry has an
flock'ed lock file held by whoever is delivering it, so a crashed deploy (even SIGKILL) leaves an entry that
`retry` completes, and two processes never send the same entry at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import files
from certbot_smtp_dist._internal.state import Lock
from certbot_smtp_dist.model import Failure, LineageSource

SPOOL_DIR = "spool"
FORMAT = 1
PENDING = "pending"  # retryable: `retry` sends it again
FAILED = "failed"  # permanent: never retried automatically; shown by `status` until retried by hand or dismissed

DELIVERY = "delivery"  # one target's delivery of one message
BLOCKED = "blocked"  # a whole deploy of a lineage that could not start (configuration or certificate unusable)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    state: str
    target: str
    config: str
    certificate: str
    serial: str
    fingerprint: str
    message_id: str | None
    date: str  # the original Date header, ISO 8601
    envelope_to: tuple[str, ...]
    source: dict[str, str | None]
    created: str
    updated: str
    attempts: int = 0
    last_failure: dict[str, Any] | None = field(default=None)
    kind: str = DELIVERY

    def lineage_source(self) -> LineageSource | None:
        """The certificate files to render from again; None if the entry recorded none."""
        s = self.source

        def path(key: str) -> Path | None:
            value = s.get(key)
            return Path(value) if value else None

        key = path("key")
        if key is None:
            return None
        return LineageSource(cert=path("cert"), key=key, chain=path("chain"), fullchain=path("fullchain"),
                             name=s.get("name"), lineage_dir=path("lineage_dir"))

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["envelope_to"] = list(self.envelope_to)
        return doc


def entry_id(target: str, fingerprint: str, message_id: str | None) -> str:
    return hashlib.sha256(f"{target}\0{fingerprint}\0{message_id}".encode()).hexdigest()[:24]


def blocked_id(source: LineageSource) -> str:
    """One blocked entry per lineage, whatever failed and however often."""
    return hashlib.sha256(("blocked\0" + json.dumps(source_json(source), sort_keys=True)).encode()).hexdigest()[:24]


def source_json(source: LineageSource) -> dict[str, str | None]:
    return {k: (str(v) if v is not None else None) for k, v in (
        ("cert", source.cert), ("key", source.key), ("chain", source.chain), ("fullchain", source.fullchain),
        ("name", source.name), ("lineage_dir", source.lineage_dir))}


def failure_json(failure: Failure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {"error_code": failure.code.value, "retryable": failure.is_retryable, "phase": failure.phase.value,
            "smtp_code": failure.smtp_code, "enhanced_status": failure.enhanced_status, "detail": failure.detail}


class Spool:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / SPOOL_DIR

    def _path(self, entry_id_: str) -> Path:
        return self.directory / f"{entry_id_}.json"

    def lock(self, entry_id_: str) -> Lock:
        return Lock(self.directory / "locks" / f"{entry_id_}.lock")

    def write(self, entry: Entry) -> None:
        files.ensure_private_dir(self.directory)
        doc = {"format": FORMAT, **entry.to_json()}
        files.write_private(self._path(entry.id), (json.dumps(doc, indent=1) + "\n").encode())

    def remove(self, entry_id_: str) -> None:
        try:
            self._path(entry_id_).unlink()
        except FileNotFoundError:
            return
        files.fsync_dir(self.directory)
        try:
            (self.directory / "locks" / f"{entry_id_}.lock").unlink()
        except FileNotFoundError:
            pass

    def load(self, entry_id_: str) -> Entry | None:
        try:
            doc = json.loads(files.read_nofollow(self._path(entry_id_)).decode("utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _entry(doc)

    def entries(self) -> Iterator[Entry | tuple[Path, str]]:
        """Every entry, oldest first; a damaged file is yielded as (path, problem) and never deleted."""
        if not self.directory.is_dir():
            return
        paths = sorted(self.directory.glob("*.json"), key=lambda p: (p.lstat().st_mtime, p.name))
        for path in paths:
            try:
                yield _entry(json.loads(files.read_nofollow(path).decode("utf-8")))
            except FileNotFoundError:
                continue  # closed by someone else meanwhile
            except (OSError, ValueError, KeyError, TypeError) as exc:
                yield (path, f"damaged spool entry: {type(exc).__name__}")


def _entry(doc: dict[str, Any]) -> Entry:
    doc = dict(doc)
    doc.pop("format", None)
    doc["envelope_to"] = tuple(doc["envelope_to"])
    return Entry(**doc)


def touched(entry: Entry, now: datetime, **changes: Any) -> Entry:
    return replace(entry, updated=now.isoformat(), **changes)
