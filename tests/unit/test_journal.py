"""The journal's hash chain detects edited, removed and truncated lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certbot_smtp_dist._internal.journal import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path)
    for i in range(5):
        j.append({"event": "attempt", "target": f"t{i}", "outcome": "delivered"})
    return j


def lines(j: Journal) -> list[bytes]:
    return j.path.read_bytes().splitlines(keepends=True)


def test_intact(journal: Journal) -> None:
    v = journal.verify()
    assert v.ok and v.lines == 5
    assert [r["seq"] for r in journal.records()] == [1, 2, 3, 4, 5]


def test_edited_line(journal: Journal) -> None:
    ls = lines(journal)
    ls[2] = ls[2].replace(b'"t2"', b'"tX"')
    journal.path.write_bytes(b"".join(ls))
    v = journal.verify()
    assert not v.ok and any("line 4" in p for p in v.problems)


def test_edited_last_line(journal: Journal) -> None:
    ls = lines(journal)
    ls[-1] = ls[-1].replace(b"delivered", b"failed!!!")
    journal.path.write_bytes(b"".join(ls))
    assert not journal.verify().ok


def test_removed_line(journal: Journal) -> None:
    ls = lines(journal)
    del ls[1]
    journal.path.write_bytes(b"".join(ls))
    assert not journal.verify().ok


def test_removed_tail(journal: Journal) -> None:
    journal.path.write_bytes(b"".join(lines(journal)[:-2]))
    v = journal.verify()
    assert not v.ok and any("truncated" in p for p in v.problems)


def test_truncated_line(journal: Journal) -> None:
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:-15])
    assert not journal.verify().ok


def test_rewritten_chain_still_caught_by_head(journal: Journal, tmp_path: Path) -> None:
    """Dropping the last line and fixing nothing else: the head file still remembers it."""
    ls = lines(journal)
    journal.path.write_bytes(b"".join(ls[:-1]))
    assert not journal.verify().ok


def test_append_after_verify_continues_chain(journal: Journal) -> None:
    journal.append({"event": "x"})
    last = json.loads(lines(journal)[-1])
    assert last["seq"] == 6 and journal.verify().ok
