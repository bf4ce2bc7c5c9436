"""The delivery journal: append-only JSON Lines, each line chained to the previous one by SHA-256.

Line N carries `prev`, the SHA-256 of line N-1's bytes (64 zeros for the first), and `seq` = N. A side file
`journal.head` records the last line's seq and hash, so removing lines from the end is detected too.
Appends happen under an flock and in one write(2) of a whole line, fsynced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import files
from certbot_smtp_dist._internal.state import locked

GENESIS = "0" * 64
JOURNAL_FILE = "journal.jsonl"
HEAD_FILE = "journal.head"
LOCK_FILE = "journal.lock"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    lines: int
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_FILE
        self.head = directory / HEAD_FILE
        self.lock = directory / LOCK_FILE

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (never a secret or key material: callers pass facts only)."""
        files.ensure_private_dir(self.directory)
        with locked(self.lock):
            seq, prev = self._tail()
            line = json.dumps({"seq": seq + 1, **record, "prev": prev}, sort_keys=False, separators=(",", ":"))
            data = line.encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, files.FILE_MODE)
            try:
                os.write(fd, data + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            files.write_private(self.head, json.dumps({"seq": seq + 1, "sha256": _h(data)}).encode() + b"\n")

    def _tail(self) -> tuple[int, str]:
        """seq and hash of the last complete line (read under the lock)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 65536))
                chunk = handle.read()
        except FileNotFoundError:
            return 0, GENESIS
        lines = [ln for ln in chunk.split(b"\n") if ln]
        if not lines:
            return 0, GENESIS
        last = lines[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            seq = sum(1 for _ in self.read_raw())  # a damaged tail: keep counting, verify will report it
        return seq, _h(last)

    def read_raw(self) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as handle:
                yield from handle
        except FileNotFoundError:
            return

    def records(self) -> Iterator[dict[str, Any]]:
        for raw in self.read_raw():
            try:
                yield json.loads(raw)
            except ValueError:
                continue

    def verify(self) -> Verdict:
        problems: list[str] = []
        notes: list[str] = []
        prev, seq, count = GENESIS, 0, 0
        hashes: dict[int, str] = {}
        for number, raw in enumerate(self.read_raw(), 1):
            count = number
            if not raw.endswith(b"\n"):
                problems.append(f"line {number}: truncated (no end of line)")
            body = raw.rstrip(b"\n")
            try:
                doc = json.loads(body)
            except ValueError:
                problems.append(f"line {number}: not valid JSON (edited or truncated)")
                prev, seq = _h(body), seq + 1
                continue
            if doc.get("prev") != prev:
                problems.append(f"line {number}: hash chain broken (line {number - 1} was edited or removed)")
            if doc.get("seq") != seq + 1:
                problems.append(f"line {number}: sequence {doc.get('seq')} follows {seq} (lines removed or reordered)")
            seq = doc["seq"] if isinstance(doc.get("seq"), int) else seq + 1
            prev = _h(body)
            hashes[seq] = prev
        head = self._read_head()
        if head is None:
            if count:
                problems.append(f"{self.head.name} is missing or damaged")
        else:
            head_seq, head_hash = head
            if head_seq > seq:
                problems.append(f"journal ends at line {seq} but {self.head.name} recorded {head_seq}: truncated")
            elif head_seq == seq and head_hash != prev:
                problems.append("the last line does not match the recorded head: edited")
            elif head_seq < seq and hashes.get(head_seq) != head_hash:
                problems.append(f"line {head_seq} does not match the recorded head: edited")
            elif head_seq < seq:
                notes.append(f"{seq - head_seq} line(s) after the recorded head (an interrupted append)")
        return Verdict(not problems, count, tuple(problems), tuple(notes))

    def _read_head(self) -> tuple[int, str] | None:
        try:
            doc = json.loads(self.head.read_text())
            return int(doc["seq"]), str(doc["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
