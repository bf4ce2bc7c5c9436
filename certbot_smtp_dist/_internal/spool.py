"""The retry spool: one authenticated JSON file per unfinished delivery, written ahead of the attempt.

An entry holds no secret and no key material: only what is needed to render the same message again from the
lineage on disk (paths, Message-ID, Date, remaining recipients) and the facts of the last failure. It never names a
configuration file: `retry` resolves the configuration exactly as `deploy` does. Each entry is one frozen `Entry`
with a schema version and one serializer, and carries an HMAC-SHA256 over its canonical JSON under the spool key
from the credential store, so an entry someone else wrote or altered is rejected by file name and never acted on.
Each entry has an flock'ed lock file held by whoever is delivering it, so a crashed deploy (even SIGKILL) leaves an
entry that `retry` completes, and two processes never send the same entry at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import files
from certbot_smtp_dist._internal.state import Lock
from certbot_smtp_dist.model import CertificateFacts, Failure, LineageSource, failure_json

SPOOL_DIR = "spool"
FORMAT = 2  # 1: 0.1.0 (unauthenticated, named its config file)
PENDING = "pending"  # retryable: `retry` sends it again
FAILED = "failed"  # permanent: never retried automatically; shown by `status` until retried by hand or dismissed
# The final "." went out and no reply came (RFC 5321 §4.1.1.4, RFC 1047): the recipients may have it already.
# `retry` re-sends it once, same Message-ID, while `resend_due`; otherwise it waits for `retry --include-uncertain`
# or `dismiss`.
UNCERTAIN = "uncertain"
STATES = (PENDING, FAILED, UNCERTAIN)

DELIVERY = "delivery"  # one target's delivery of one message
BLOCKED = "blocked"  # a whole deploy of a lineage that could not start (configuration or certificate unusable)
KINDS = (DELIVERY, BLOCKED)
CONFIG_BLOCK = "CONFIG"  # the error code of a deploy blocked by its configuration: closed once it loads again
_SOURCE_KEYS = ("cert", "key", "chain", "fullchain", "name", "lineage_dir")


class Rejected(ValueError):
    """A spool file that is not an entry this host wrote: forged, altered, damaged or from 0.1.0. Never acted on."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path.name}: {problem}")
        self.path = path
        self.problem = problem


class Busy(Exception):
    """Another process holds this entry (delivering it right now)."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    state: str
    target: str
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
    uncertain: int = 0  # sessions of this delivery whose final reply was lost
    resend_due: bool = False  # UNCERTAIN only: the next `retry` re-sends it (the first lost reply, if allowed)
    not_before: str = ""  # the certificate's validity, ISO 8601: which of two certificates is the newer ("": an
    not_after: str = ""  # entry written before this was recorded, of unknown age)

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
        """The fields as JSON values, in containers of their own (what they hold is JSON scalars, as written).
        Field by field, not dataclasses.asdict: that deep-copies every value, a third of writing an entry ahead
        (~0.1 ms each, issue 16's fan-out)."""
        doc = {name: getattr(self, name) for name in _FIELDS}
        doc["envelope_to"] = list(self.envelope_to)
        doc["source"] = dict(self.source)
        if self.last_failure is not None:
            doc["last_failure"] = dict(self.last_failure)
        return doc


_FIELDS = tuple(f.name for f in fields(Entry))


def encode(entry: Entry, key: bytes) -> bytes:
    """The one serializer: the entry's fields, its schema version and its MAC."""
    doc = {"format": FORMAT, **entry.to_json()}
    return (json.dumps({**doc, "mac": _mac(key, doc)}, indent=1) + "\n").encode("utf-8")


def decode(data: bytes, key: bytes, path: Path) -> Entry:
    """The one parser: authenticated first, then every field checked for its type. Raises Rejected."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise Rejected(path, "damaged (not JSON)") from exc
    if not isinstance(doc, dict):
        raise Rejected(path, "damaged (not a JSON object)")
    if doc.get("format") != FORMAT:
        raise Rejected(path, f"written by an older version (format {doc.get('format')!r}) and not upgraded: "
                             "not authenticated, never acted on (check it, then `certbot-smtp-dist dismiss`)")
    mac = doc.pop("mac", None)
    if not isinstance(mac, str) or not hmac.compare_digest(_mac(key, doc), mac):
        raise Rejected(path, "MAC mismatch: forged or altered (or written under another master key); never acted on")
    doc.pop("format")
    entry = _typed(doc, path)
    if path.name != f"{entry.id}.json":
        raise Rejected(path, f"holds entry {entry.id}, not the one its name says: moved or copied; never acted on")
    return entry


def decode_legacy(doc: dict[str, Any], path: Path) -> Entry:
    """A 0.1.0 entry (format 1, no MAC) as an Entry, every field checked; only upgrade.py calls this, for an entry
    it re-validated. Raises Rejected."""
    doc = {"uncertain": 0, "resend_due": False, **{k: v for k, v in doc.items() if k not in ("format", "config")}}
    return _typed(doc, path)


def _typed(doc: dict[str, Any], path: Path) -> Entry:
    """An authentic document still gets every field checked: one schema, no `Entry(**doc)` on trust."""
    def want(name: str, kind: type | tuple[type, ...]) -> Any:
        value = doc.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise Rejected(path, f"field {name!r} is missing or of the wrong type")
        return value

    def optional(name: str) -> str:
        return want(name, str) if name in doc else ""

    source = want("source", dict)
    recipients = want("envelope_to", list)
    failure = want("last_failure", (dict, type(None)))
    if (set(source) - set(_SOURCE_KEYS) or any(not isinstance(v, (str, type(None))) for v in source.values())
            or any(not isinstance(r, str) for r in recipients)):
        raise Rejected(path, "field 'source' or 'envelope_to' is malformed")
    entry = Entry(id=want("id", str), state=want("state", str), target=want("target", str),
                  certificate=want("certificate", str), serial=want("serial", str),
                  fingerprint=want("fingerprint", str), message_id=want("message_id", (str, type(None))),
                  date=want("date", str), envelope_to=tuple(recipients), source=dict(source),
                  created=want("created", str), updated=want("updated", str), attempts=want("attempts", int),
                  last_failure=failure, kind=want("kind", str), uncertain=want("uncertain", int),
                  resend_due=want("resend_due", bool), not_before=optional("not_before"),
                  not_after=optional("not_after"))
    if entry.state not in STATES or entry.kind not in KINDS:
        raise Rejected(path, f"unknown state {entry.state!r} or kind {entry.kind!r}")
    return entry


# What json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) builds for each call (the C encoder
# then does the work), built once.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _mac(key: bytes, doc: dict[str, Any]) -> str:
    canonical = _CANONICAL.encode(doc)
    return hmac.new(key, b"certbot-smtp-dist/spool-entry\x00" + canonical.encode(), hashlib.sha256).hexdigest()


def entry_id(target: str, fingerprint: str, message_id: str | None) -> str:
    return hashlib.sha256(f"{target}\0{fingerprint}\0{message_id}".encode()).hexdigest()[:24]


def blocked_id(source: LineageSource) -> str:
    """One blocked entry per lineage, whatever failed and however often."""
    return hashlib.sha256(("blocked\0" + json.dumps(source_json(source), sort_keys=True)).encode()).hexdigest()[:24]


def source_json(source: LineageSource) -> dict[str, str | None]:
    return {k: (str(v) if v is not None else None) for k, v in (
        ("cert", source.cert), ("key", source.key), ("chain", source.chain), ("fullchain", source.fullchain),
        ("name", source.name), ("lineage_dir", source.lineage_dir))}


def for_delivery(target: str, facts: CertificateFacts, source: LineageSource | None, message_id: str | None,
                 envelope_to: tuple[str, ...], now: datetime, failure: Failure | None = None) -> Entry:
    """The one builder of a delivery entry: pending (written ahead), or failed with nothing to re-send."""
    stamp = now.isoformat()
    return Entry(id=entry_id(target, facts.sha256_fingerprint, message_id),
                 state=PENDING if failure is None else FAILED, target=target, certificate=facts.name,
                 serial=facts.serial_hex, fingerprint=facts.sha256_fingerprint, message_id=message_id, date=stamp,
                 envelope_to=envelope_to, source=source_json(source) if source else {}, created=stamp, updated=stamp,
                 last_failure=failure_json(failure) if failure else None,
                 not_before=facts.not_before.isoformat(), not_after=facts.not_after.isoformat())


def for_blocked(source: LineageSource, facts: CertificateFacts | None, old: Entry | None, why: str,
                code: str | None, now: datetime) -> Entry:
    """The one builder of a blocked-deploy entry, counting the attempts of the one it replaces."""
    stamp = now.isoformat()
    return Entry(id=blocked_id(source), state=FAILED, target="*",
                 certificate=facts.name if facts else (source.name or ""), serial=facts.serial_hex if facts else "",
                 fingerprint=facts.sha256_fingerprint if facts else "", message_id=None, date=stamp, envelope_to=(),
                 source=source_json(source), created=old.created if old else stamp, updated=stamp,
                 attempts=(old.attempts if old else 0) + 1, last_failure=needs_attention(why, code), kind=BLOCKED)


def _validity_order(entry: Entry, facts: CertificateFacts) -> int | None:
    """-1, 0 or 1 as the entry's certificate is older than, as old as or newer than `facts`' by validity (not-after,
    then not-before); None when unknown (an entry from before validity was recorded, or unparsable)."""
    try:
        mine = (datetime.fromisoformat(entry.not_after), datetime.fromisoformat(entry.not_before))
        theirs = (facts.not_after, facts.not_before)
        return (mine > theirs) - (mine < theirs)
    except (ValueError, TypeError):  # TypeError: a naive time beside an aware one
        return None


def newer_than(entry: Entry, facts: CertificateFacts) -> bool:
    """Whether the entry's certificate is newer than `facts`' by validity (not-after, then not-before): `facts`
    cannot stand in for it. Unknown (an entry from before validity was recorded) or the same validity: not newer."""
    return _validity_order(entry, facts) == 1


def older_than(entry: Entry, facts: CertificateFacts) -> bool:
    """Whether the entry's certificate is older than `facts`' by validity (not-after, then not-before): only an
    older one may be superseded. Unknown (an entry from before validity was recorded): not older."""
    return _validity_order(entry, facts) == -1


def needs_attention(why: str, code: str | None = None) -> dict[str, Any]:
    """A problem that is not an SMTP failure (configuration, certificate files), in the failure's JSON shape."""
    return {**failure_json(None), "error_code": code, "detail": why}


class Spool:
    def __init__(self, state_dir: Path, key: bytes) -> None:
        self.directory = state_dir / SPOOL_DIR
        self._key = key
        self._deferred: bool | None = None  # inside batch(): whether a directory fsync is owed
        self._checked = False  # inside batch(): its directories were made and checked in it (make_directories)

    @contextmanager
    def batch(self, sync_failed: Callable[[OSError], None] | None = None) -> Iterator[None]:
        """Writes and removals in the block share one fsync of the spool directory, at its end (each file is still
        fsynced itself). A caller relies on none of them before the block ends: the write-ahead of a run is
        durable before its first connection, its settlement before the run reports. `sync_failed` takes an
        OSError of that last fsync (raised without it); what the block itself raises is never caught here.
        Directories made and checked in the block (make_directories) are not checked again by its writes and
        claims: they are ours, closed to others and no links (ownership.require_own_directory), so nobody but root
        or us can swap them for the block's short while, and a check per entry, each lstat'ing the same three
        directories, was a seventh of writing an entry ahead (issue 16's fan-out). The next block checks again."""
        self._deferred, self._checked = False, False
        try:
            yield
        finally:
            owed, self._deferred, self._checked = self._deferred, None, False
            if owed:
                try:
                    files.fsync_dir(self.directory)
                except OSError as exc:
                    if sync_failed is None:
                        raise
                    sync_failed(exc)

    def _sync(self) -> None:
        if self._deferred is None:
            files.fsync_dir(self.directory)
        else:
            self._deferred = True

    def make_directories(self) -> None:
        """The state directory, the spool directory and its locks directory, in that order, each made (0700) if
        missing and checked as every write does: none is a link, each is ours and closed to others, so nobody can
        swap the next for a link meanwhile. Before any entry's lock: a spool that is a link would otherwise have
        locks/ and the lock file made wherever it points (mkdir(2) and open(2) follow a link above the last name).
        Inside batch(), once they all passed, for the rest of the block."""
        files.ensure_private_dir(self.directory.parent)
        files.ensure_private_dir(self.directory)
        files.ensure_private_dir(self._lock("x").path.parent)
        if self._deferred is not None:
            self._checked = True

    def _path(self, entry_id_: str) -> Path:
        return self.directory / f"{entry_id_}.json"

    def _lock(self, entry_id_: str) -> Lock:
        return Lock(self.directory / "locks" / f"{entry_id_}.lock")

    @contextmanager
    def _held(self, entry_id_: str) -> Iterator[None]:
        """The entry's flock(2) lock for the block (released by the kernel even on SIGKILL); Busy if taken."""
        checked = self._checked
        if not checked:
            self.make_directories()
        lock = self._lock(entry_id_)
        if not lock.acquire(blocking=False, dir_checked=checked):
            raise Busy(entry_id_)
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def claim(self, entry_id_: str) -> Iterator[Entry | None]:
        """Hold one entry for the block, re-read under its lock and authenticated; None if it is gone. Raises Busy
        if another process holds it, Rejected if the file is not an authentic entry (both before the block)."""
        with self._held(entry_id_):
            yield self.load(entry_id_)

    @contextmanager
    def claim_new(self, entry: Entry) -> Iterator[Entry]:
        """Write-ahead: create `entry` under its lock and hold it for the block. Raises Busy if someone holds it."""
        with self._held(entry.id):
            self.write(entry)
            yield entry

    @contextmanager
    def claim_unverified(self, entry_id_: str) -> Iterator[bytes | None]:
        """The file's bytes under its lock, NOT authenticated: only for upgrading a 0.1.0 entry. Raises Busy."""
        with self._held(entry_id_):
            try:
                data: bytes | None = files.read_nofollow(self._path(entry_id_))
            except FileNotFoundError:
                data = None
            yield data

    def write(self, entry: Entry) -> None:
        if not self._checked:
            files.ensure_private_dir(self.directory)
        files.write_private(self._path(entry.id), encode(entry, self._key), sync_dir=False)
        self._sync()

    def remove(self, entry_id_: str) -> None:
        try:
            self._path(entry_id_).unlink()
        except FileNotFoundError:
            return
        self._sync()
        try:
            (self.directory / "locks" / f"{entry_id_}.lock").unlink()
        except FileNotFoundError:
            pass

    def load(self, entry_id_: str) -> Entry | None:
        """The entry, authenticated; None if there is none. Raises Rejected for one that is not authentic."""
        path = self._path(entry_id_)
        try:
            data = files.read_nofollow(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return decode(data, self._key, path)

    def discard(self, path: Path) -> None:
        """Remove a rejected file by hand (`dismiss`): it was never acted on."""
        path.unlink(missing_ok=True)
        files.fsync_dir(self.directory)

    def entries(self) -> Iterator[Entry | Rejected]:
        """Every entry, oldest first; a file that is not an authentic entry is yielded as Rejected, never deleted."""
        if not self.directory.is_dir():
            return
        stamped = []
        for path in self.directory.glob("*.json"):
            try:
                stamped.append((path.lstat().st_mtime, path.name, path))
            except FileNotFoundError:
                continue  # closed by someone else meanwhile
        for _, _, path in sorted(stamped):
            try:
                yield decode(files.read_nofollow(path), self._key, path)
            except FileNotFoundError:
                continue
            except Rejected as rejected:
                yield rejected
            except OSError as exc:
                yield Rejected(path, f"unreadable ({exc.strerror or exc})")


def touched(entry: Entry, now: datetime, **changes: Any) -> Entry:
    return replace(entry, updated=now.isoformat(), **changes)
