"""The delivery journal: append-only JSON Lines, each line authenticated and chained by HMAC-SHA256.

Line N reads `{"seq":N,...facts...,"prev":"<MAC of line N-1>","mac":"<MAC of line N>"}`. A line's MAC is
HMAC-SHA256, under the journal key from the credential store, over the line's exact bytes up to `,"mac"` plus the
closing brace; `prev` chains it to the line before. `journal.head` records the line count and the last MAC, itself
under a MAC, so lines cut from the end are noticed too. What this proves and what it cannot: README.rst, "Journal".

A 0.1.0 journal (an unkeyed SHA-256 chain) is sealed on first use: renamed to `journal-0.1.0.jsonl` (its head to
`journal-0.1.0.head`) and anchored by the first keyed line, which records its line count and last hash.
Appends happen under an flock, in one write(2) of a whole line, fsynced; nothing is opened through a symlink.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import files
from certbot_smtp_dist._internal.state import locked

GENESIS = "0" * 64
JOURNAL_FILE = "journal.jsonl"
HEAD_FILE = "journal.head"
LOCK_FILE = "journal.lock"
SEALED_FILE = "journal-0.1.0.jsonl"
SEALED_HEAD = "journal-0.1.0.head"
FORMAT = 2
log = logging.getLogger("certbot_smtp_dist")
_MAC_FIELD = re.compile(rb',"mac":"([0-9a-f]{64})"\}$')


@dataclass(frozen=True, slots=True)
class Problem:
    line: int  # 1-based line of journal.jsonl; 0: the journal as a whole (missing file, head)
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}" if self.line else self.text


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    lines: int
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def first_bad_line(self) -> int | None:
        numbered = [p.line for p in self.problems if p.line]
        return min(numbered) if numbered else None


class Journal:
    def __init__(self, directory: Path, key: bytes | None = None, anchor: Path | None = None) -> None:
        """`key`: the journal key (CredentialStore.state_key("journal")); None reads records but cannot write or
        verify. `anchor`: a file in the credential store (out of reach of whoever can write the state) where the
        MAC of the journal's first line is recorded once, so a journal deleted and restarted, or replaced by a
        forged 0.1.0 one, is caught."""
        self.directory = directory
        self.path = directory / JOURNAL_FILE
        self.head = directory / HEAD_FILE
        self.lock = directory / LOCK_FILE
        self._key = key
        self._anchor = anchor
        self._keyed = False  # decided once per open: once keyed, a state is never read as 0.1.0 again
        self._head_checked = False  # the head found before this open's first append: authentic, not ahead
        self._anchor_checked = False  # the anchor file found (or written) by this open

    def keyed(self) -> bool:
        """Whether this state directory was ever keyed, from facts a local user who can write the state cannot
        produce: its anchor in the credential store, or a first line carrying a valid MAC under the journal key.
        A keyed state is never upgraded again: a 0.1.0-format journal or spool entry found there later was planted."""
        if not self._keyed:
            key = self._require_key()
            first = next(iter(self._raw(self.path)), b"")
            found = _MAC_FIELD.search(first.rstrip(b"\n"))
            authentic = found is not None and hmac.compare_digest(
                _mac(key, first.rstrip(b"\n")[:found.start()] + b"}"), found.group(1).decode())
            self._keyed = self._anchored() is not None or authentic
        return self._keyed

    # -- writing ------------------------------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Append one record (never a secret or key material: callers pass facts only)."""
        self.append_all([record])

    def append_all(self, records: list[dict[str, Any]]) -> None:
        """Append records in order, under one lock and one fsync (a run's attempts: one write, not one each)."""
        if not records:
            return
        key = self._require_key()
        files.ensure_private_dir(self.directory)
        with locked(self.lock):
            self._seal_legacy(key)
            self._append_locked(key, *records)

    def seal_legacy(self) -> None:
        """Seal a 0.1.0 journal now (upgrade on first use); nothing to do for a keyed or missing one."""
        if not (self.path.exists() or self.head.exists()) or self.keyed():
            return
        key = self._require_key()
        with locked(self.lock):
            self._seal_legacy(key)

    def start(self) -> None:
        """Make sure the journal exists (a first line, `journal_started`) before anything is spooled: a state
        directory with an entry always has a journal to verify, even if the run is killed before its first attempt."""
        if self.path.exists() and self.head.exists():
            return
        key = self._require_key()
        files.ensure_private_dir(self.directory)
        with locked(self.lock):
            self._seal_legacy(key)
            if not self.path.exists() and not self.head.exists():
                self._append_locked(key, {"time": _now(), "event": "journal_started"})

    def _append_locked(self, key: bytes, *records: dict[str, Any]) -> None:
        first, prev = self._tail(key)
        if not self._head_checked:  # once per open, as keyed-ness: after our own append the head is ours
            self._require_head(key, first, prev)
        seq, macs, lines = first, [prev], []
        for record in records:  # each line chained to the one before it
            seq += 1
            body = _COMPACT.encode({"seq": seq, **record, "prev": macs[-1]}).encode("utf-8")
            macs.append(_mac(key, body))
            lines.append(body[:-1] + b',"mac":"' + macs[-1].encode() + b'"}\n')
        data, mac = b"".join(lines), macs[-1]
        fd = files.open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        head = {"format": FORMAT, "lines": seq, "mac": mac, "head_mac": _head_mac(key, seq, mac)}
        files.write_private(self.head, json.dumps(head).encode() + b"\n")
        self._keyed = self._head_checked = True
        self._anchor_first_line(key, macs[1] if first == 0 else None)

    def _anchor_first_line(self, key: bytes, first_mac: str | None) -> None:
        """Record the first line's MAC in the anchor file if it is not there yet: with the first line, and on any
        later append if that write failed (a read-only credential store at the time), from a first line that
        verifies under the key (never from one that does not: that would anchor a forgery). Checked once per open.
        A failed write is logged, never raised: the line itself is written, and the next append tries again."""
        if self._anchor is None or self._anchor_checked:
            return
        self._anchor_checked = True
        if self._anchored() is not None:
            return
        if first_mac is None:
            first_mac = self._verified_first_mac(key)
            if first_mac is None:
                return
        doc = {"state_dir": str(self.directory), "first_line_mac": first_mac}
        try:
            files.create_private_exclusive(self._anchor, json.dumps(doc).encode() + b"\n")
        except OSError as exc:
            self._anchor_checked = False
            log.warning("cannot write the journal anchor %s (tried again on the next append): %s", self._anchor,
                        exc.strerror or exc)

    def _verified_first_mac(self, key: bytes) -> str | None:
        first = next(iter(self._raw(self.path)), b"").rstrip(b"\n")
        found = _MAC_FIELD.search(first)
        if found is None or not hmac.compare_digest(_mac(key, first[:found.start()] + b"}"), found.group(1).decode()):
            return None
        doc = _json(first[:found.start()] + b"}")
        return found.group(1).decode() if doc is not None and doc.get("seq") == 1 else None

    def _require_head(self, key: bytes, seq: int, prev: str) -> None:
        """Before writing a new head over it: the head must be authentic and not ahead of the journal. Otherwise
        lines were cut from the end (or the head was edited or deleted), and the new head would hide it from every
        later `verify`. A head behind the journal is an interrupted append; none at all, a first append that was
        interrupted (the head is written after the line)."""
        doc = _read_json(self.head)
        if doc is None:
            if seq <= 1:
                return
            why = f"{self.head.name} is missing"
        else:
            try:
                lines, mac = int(doc["lines"]), str(doc["mac"])
                authentic = hmac.compare_digest(_head_mac(key, lines, mac), str(doc["head_mac"]))
            except (KeyError, TypeError, ValueError):
                authentic, lines, mac = False, 0, ""
            if not authentic:
                why = f"{self.head.name} is damaged or was edited"
            elif lines > seq or (lines == seq and mac != prev):
                why = f"{self.head.name} records {lines} line(s), the journal ends at line {seq}: lines were cut"
            else:
                return
        raise PermissionError(errno.EPERM, f"{self.path} not appended to: {why}; `certbot-smtp-dist journal verify` "
                                           "shows what, and appending would hide it", str(self.path))

    def _anchored(self) -> str | None:
        """The first line's MAC recorded in the anchor file, if this state directory was ever keyed."""
        if self._anchor is None:
            return None
        doc = _read_json(self._anchor)
        return str(doc.get("first_line_mac")) if doc is not None else None

    def _tail(self, key: bytes) -> tuple[int, str]:
        """seq and chain value of the last line (read under the lock)."""
        try:
            fd = files.open_nofollow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0, GENESIS
        with os.fdopen(fd, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 65536))
            lines = [ln for ln in handle.read().split(b"\n") if ln]
        if not lines:
            return 0, GENESIS
        last = lines[-1]
        if self.keyed() and _legacy_shaped(last):
            raise self._replaced()
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            seq = sum(1 for _ in self._raw(self.path))  # a damaged tail: keep counting, verify reports it
        return seq, _link(key, last)

    def _seal_legacy(self, key: bytes) -> None:
        """A 0.1.0 journal: move it aside intact and anchor its last hash as the first keyed line. Only in a state
        never keyed, and only on a positive sign of 0.1.0 (its first line's shape, or its head's): a damaged first
        line with the head gone is damage, reported by `verify`, never history to seal."""
        if self.keyed():
            return
        first = next(iter(self._raw(self.path)), None)
        legacy_head = _read_json(self.head)
        if not ((first is not None and _legacy_shaped(first, first_line=True))
                or (legacy_head is not None and "sha256" in legacy_head and "head_mac" not in legacy_head)):
            return
        sealed, sealed_head = self.directory / SEALED_FILE, self.directory / SEALED_HEAD
        if sealed.exists() or sealed.is_symlink():
            raise FileExistsError(errno.EEXIST, f"{sealed} exists already: cannot seal the 0.1.0 journal", str(sealed))
        verdict = verify_legacy(self.path, self.head)
        os.rename(self.path, sealed)
        if self.head.exists():
            os.rename(self.head, sealed_head)
        files.fsync_dir(self.directory)
        self._append_locked(key, {"time": _now(), "event": "journal_sealed", "sealed_file": SEALED_FILE,
                                  "sealed_lines": verdict.lines, "sealed_sha256": verdict.last_hash,
                                  "sealed_intact": verdict.ok})

    def _replaced(self) -> PermissionError:
        return PermissionError(errno.EPERM, f"{self.path} is in the 0.1.0 format but this state directory was "
                                            f"keyed already ({self._anchor or 'its first line'}): the journal was "
                                            "replaced", str(self.path))

    # -- reading ------------------------------------------------------------------------------------------------
    @staticmethod
    def _raw(path: Path) -> Iterator[bytes]:
        try:
            fd = files.open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as handle:
            yield from handle

    def read_raw(self) -> Iterator[bytes]:
        return self._raw(self.path)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, the sealed 0.1.0 history first."""
        for path in (self.directory / SEALED_FILE, self.path):
            yield from self._records(path)

    def _records(self, path: Path) -> Iterator[dict[str, Any]]:
        for raw in self._raw(path):
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                doc.pop("mac", None)
                yield doc

    def audit(self) -> tuple[Verdict, list[dict[str, Any]]]:
        """verify(), and the records it vouched for (the sealed 0.1.0 history first): for `status` and the metrics,
        which must never report a tampered journal as healthy, in the one streaming pass they read it in anyway.
        Read-only on a keyed state (an unkeyed 0.1.0 one is sealed first, as `verify` does)."""
        verified: list[dict[str, Any]] = []
        verdict = self.verify(verified)
        return verdict, [*self._records(self.directory / SEALED_FILE), *verified]

    # -- verifying ----------------------------------------------------------------------------------------------
    def verify(self, records: list[dict[str, Any]] | None = None) -> Verdict:
        """Every line's MAC and link, the head, and the sealed 0.1.0 journal if any. Never OK with nothing to check.
        `records`: filled with the keyed lines that passed, from the same read (a reader that acts on the journal
        must not read it a second time, unverified)."""
        key = self._require_key()
        problems: list[Problem] = []
        notes: list[str] = []
        if self.path.exists() or self.head.exists():
            if self.keyed():
                if _legacy_shaped(next(iter(self._raw(self.path)), b""), first_line=True):
                    return Verdict(False, 0, (Problem(1, self._replaced().strerror or ""),))
            else:
                with locked(self.lock):
                    self._seal_legacy(key)
        if not self.path.exists():
            problems.append(Problem(0, f"{self.path} is missing: the journal was deleted, or this state directory "
                                       "has never recorded anything (nothing to verify)"))
        macs, anchor = self._check_lines(key, problems, records)
        count = len(macs)
        first = self._anchored()
        if first is not None and count and macs[1] != first:
            problems.append(Problem(1, f"not the first line recorded in {self._anchor}: the journal was deleted "
                                       "and restarted, or replaced"))
        self._check_head(key, macs, problems, notes)
        if anchor is not None:
            self._check_sealed(anchor, problems, notes)
        elif (self.directory / SEALED_FILE).exists():
            problems.append(Problem(1, f"{SEALED_FILE} exists but the journal's first line does not anchor it"))
        if not problems and count == 0:
            problems.append(Problem(0, f"{self.path} is empty and {self.head.name} records nothing: nothing to verify"))
        problems.sort(key=lambda p: p.line)
        return Verdict(not problems, count, tuple(problems), tuple(notes))

    def _check_lines(self, key: bytes, problems: list[Problem],
                     records: list[dict[str, Any]] | None = None) -> tuple[dict[int, str], dict[str, Any] | None]:
        link = GENESIS
        macs: dict[int, str] = {}
        anchor: dict[str, Any] | None = None
        for number, raw in enumerate(self.read_raw(), 1):
            if not raw.endswith(b"\n"):
                problems.append(Problem(number, "cut off (no end of line)"))
            body = raw.rstrip(b"\n")
            found = _MAC_FIELD.search(body)
            doc = _json(body[:found.start()] + b"}") if found else None
            if found is None or doc is None:
                problems.append(Problem(number, "not a journal line (edited or cut off)"))
                link = macs[number] = _link(key, body)
                continue
            if not hmac.compare_digest(_mac(key, body[:found.start()] + b"}"), found.group(1).decode()):
                problems.append(Problem(number, "MAC mismatch: the line was edited (or written without the key)"))
            elif doc.get("prev") != link:
                problems.append(Problem(number, f"does not follow line {number - 1}: a line before it was removed, "
                                                "inserted or reordered"))
            elif doc.get("seq") != number:
                problems.append(Problem(number, f"sequence {doc.get('seq')} at line {number}: lines removed"))
            elif records is not None:
                records.append(doc)
            if number == 1 and doc.get("event") == "journal_sealed":
                anchor = doc
            link = macs[number] = found.group(1).decode()
        return macs, anchor

    def _check_head(self, key: bytes, macs: dict[int, str], problems: list[Problem], notes: list[str]) -> None:
        count = len(macs)
        doc = _read_json(self.head)
        try:
            lines, mac = int(doc["lines"]), str(doc["mac"])  # type: ignore[index]
            authentic = hmac.compare_digest(_head_mac(key, lines, mac), str(doc["head_mac"]))  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            problems.append(Problem(0, f"{self.head} is missing or damaged: cannot tell whether lines were cut"))
            return
        if not authentic:
            problems.append(Problem(0, f"{self.head}: MAC mismatch, the head was edited"))
        elif lines > count:
            problems.append(Problem(count + 1, f"missing: the journal ends at line {count} but {self.head.name} "
                                               f"recorded {lines} (lines removed from the end, or emptied)"))
        elif macs.get(lines) != mac:
            problems.append(Problem(lines, f"does not match the last line recorded in {self.head.name}"))
        elif lines < count:
            notes.append(f"{count - lines} line(s) after the recorded head (an interrupted append)")

    def _check_sealed(self, anchor: dict[str, Any], problems: list[Problem], notes: list[str]) -> None:
        old = verify_legacy(self.directory / SEALED_FILE, self.directory / SEALED_HEAD)
        if (old.lines, old.last_hash) != (anchor.get("sealed_lines"), anchor.get("sealed_sha256")):
            problems.append(Problem(1, f"{SEALED_FILE} no longer matches the anchor in line 1 (edited, cut or "
                                       "replaced since it was sealed)"))
        problems += [Problem(0, f"{SEALED_FILE}: {p}") for p in old.problems if anchor.get("sealed_intact")]
        notes.append(f"{SEALED_FILE}: {old.lines} line(s) of 0.1.0 history, sealed and anchored in line 1"
                     + ("" if anchor.get("sealed_intact") else " (already damaged when it was sealed)"))

    def _require_key(self) -> bytes:
        if self._key is None:
            raise ValueError("the journal key is needed to write or verify the journal")  # a programming error
        return self._key


@dataclass(frozen=True, slots=True)
class LegacyVerdict:
    ok: bool
    lines: int
    last_hash: str
    problems: tuple[str, ...]


def verify_legacy(path: Path, head: Path) -> LegacyVerdict:
    """0.1.0's unkeyed chain: `prev` is the SHA-256 of the line before; the head holds the last seq and hash."""
    problems: list[str] = []
    prev, count = GENESIS, 0
    for count, raw in enumerate(Journal._raw(path), 1):
        body = raw.rstrip(b"\n")
        doc = _json(body)
        if doc is None or doc.get("prev") != prev or doc.get("seq") != count:
            problems.append(f"line {count}: hash chain broken (edited, removed or cut)")
        prev = hashlib.sha256(body).hexdigest()
    recorded = _read_json(head)
    if recorded is not None and (recorded.get("seq"), recorded.get("sha256")) != (count, prev):
        problems.append(f"the last line does not match {head.name}: edited or truncated")
    return LegacyVerdict(not problems, count, prev, tuple(problems))


def legacy_format(directory: Path) -> bool:
    """Whether the journal in `directory` starts as 0.1.0's does (a hint for messages; sealing decides by
    Journal.keyed too)."""
    return _legacy_shaped(next(iter(Journal._raw(directory / JOURNAL_FILE)), b""), first_line=True)


def _legacy_shaped(line: bytes, first_line: bool = False) -> bool:
    """A whole line in 0.1.0's format: a JSON object with `seq` and a SHA-256 `prev`, and no MAC."""
    doc = _json(line.rstrip(b"\n"))
    if doc is None or "mac" in doc or not isinstance(doc.get("seq"), int):
        return False
    prev = doc.get("prev")
    if first_line:
        return doc["seq"] == 1 and prev == GENESIS
    return isinstance(prev, str) and re.fullmatch(r"[0-9a-f]{64}", prev) is not None


# What json.dumps(..., separators=(",", ":")) builds for each call before its C encoder does the work, built once:
# a run's attempts are journalled one line each.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _head_mac(key: bytes, lines: int, mac: str) -> str:
    return _mac(key, f"certbot-smtp-dist/journal-head\x00{lines}\x00{mac}".encode())


def _link(key: bytes, line: bytes) -> str:
    """What the next line's `prev` must hold: this line's MAC field, or for a damaged line a MAC of its bytes."""
    found = _MAC_FIELD.search(line.rstrip(b"\n"))
    return found.group(1).decode() if found else _mac(key, line.rstrip(b"\n"))


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return _json(files.read_nofollow(path))
    except FileNotFoundError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
