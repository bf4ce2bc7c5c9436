"""The keyed journal: every tampering names the first bad line, even with the chain recomputed without the key;
never "OK" with nothing to verify; a 0.1.0 journal is sealed and anchored, its history kept verifiable."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from pathlib import Path

import pytest

from certbot_smtp_dist._internal.journal import SEALED_FILE, Journal

KEY = b"k" * 32


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path, KEY)
    for i in range(5):
        j.append({"event": "attempt", "target": f"t{i}", "outcome": "delivered"})
    return j


def lines(j: Journal) -> list[bytes]:
    return j.path.read_bytes().splitlines(keepends=True)


def first_bad(j: Journal) -> int | None:
    v = j.verify()
    assert not v.ok
    return v.first_bad_line


def test_intact(journal: Journal) -> None:
    v = journal.verify()
    assert v.ok and v.lines == 5 and not v.problems
    assert [r["seq"] for r in journal.records()] == [1, 2, 3, 4, 5]
    assert os.stat(journal.path).st_mode & 0o777 == 0o600


def test_edited_line(journal: Journal) -> None:
    ls = lines(journal)
    ls[2] = ls[2].replace(b'"t2"', b'"tX"')
    journal.path.write_bytes(b"".join(ls))
    assert first_bad(journal) == 3


def test_edited_last_line(journal: Journal) -> None:
    ls = lines(journal)
    ls[-1] = ls[-1].replace(b"delivered", b"failed!!!")
    journal.path.write_bytes(b"".join(ls))
    assert first_bad(journal) == 5


def _unkeyed_rechain(docs: list[dict[str, object]], key: bytes) -> bytes:
    """What an attacker without the journal key can do: rebuild every line's MAC and link under a guessed key."""
    out, prev = b"", "0" * 64
    for seq, doc in enumerate(docs, 1):
        doc = {k: v for k, v in doc.items() if k not in ("mac",)} | {"seq": seq, "prev": prev}
        body = json.dumps(doc, separators=(",", ":")).encode()
        mac = hmac.new(key, body, hashlib.sha256).hexdigest()
        out += body[:-1] + b',"mac":"' + mac.encode() + b'"}\n'
        prev = mac
    return out


def test_edited_line_with_chain_recomputed_without_the_key(journal: Journal) -> None:
    docs = [json.loads(line) for line in lines(journal)]
    docs[1]["target"] = "attacker"
    journal.path.write_bytes(_unkeyed_rechain(docs, b"guess" * 8))
    assert first_bad(journal) == 1  # every line's MAC is wrong: the first line is named


def test_keyed_journal_replaced_by_a_forged_0_1_0_journal(tmp_path: Path) -> None:
    """0.1.0's attack, as a downgrade: edit, recompute the unkeyed SHA-256 chain and the head in the 0.1.0 format.
    The anchor in the credential store says this state was keyed already: never sealed as history, reported."""
    journal = Journal(tmp_path / "state", KEY, anchor=tmp_path / "anchor")
    for i in range(5):
        journal.append({"event": "attempt", "target": f"t{i}", "outcome": "delivered"})
    docs = [json.loads(line) for line in lines(journal)]
    docs[3]["outcome"] = "failed"
    out, prev = b"", "0" * 64
    for seq, doc in enumerate(docs, 1):
        doc.pop("mac")
        body = json.dumps({**doc, "seq": seq, "prev": prev}, separators=(",", ":")).encode()
        out += body + b"\n"
        prev = hashlib.sha256(body).hexdigest()
    journal.path.write_bytes(out)
    journal.head.write_text(json.dumps({"seq": 5, "sha256": prev}))
    v = journal.verify()
    assert not v.ok and v.first_bad_line == 1 and "keyed already" in str(v.problems[0])
    with pytest.raises(OSError, match="keyed already"):
        journal.append({"event": "more"})


def test_restarted_journal_is_caught_by_the_anchor(tmp_path: Path) -> None:
    """Deleting journal and head, then letting the next run start a fresh chain: line 1 is not the anchored one."""
    journal = Journal(tmp_path / "state", KEY, anchor=tmp_path / "anchor")
    journal.append({"event": "attempt"})
    assert journal.verify().ok
    journal.path.unlink()
    journal.head.unlink()
    journal.append({"event": "attempt", "outcome": "fresh"})
    v = journal.verify()
    assert not v.ok and v.first_bad_line == 1 and "anchor" in str(v.problems[0])


def test_removed_line(journal: Journal) -> None:
    ls = lines(journal)
    del ls[1]
    journal.path.write_bytes(b"".join(ls))
    assert first_bad(journal) == 2


def test_removed_tail(journal: Journal) -> None:
    journal.path.write_bytes(b"".join(lines(journal)[:-2]))
    v = journal.verify()
    assert not v.ok and v.first_bad_line == 4 and "removed from the end" in str(v.problems[0])


def test_truncated_line(journal: Journal) -> None:
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:-15])
    assert first_bad(journal) == 5


def test_emptied_journal(journal: Journal) -> None:
    journal.path.write_bytes(b"")
    assert first_bad(journal) == 1


def test_missing_journal(journal: Journal) -> None:
    journal.path.unlink()
    v = journal.verify()
    assert not v.ok and "missing" in str(v.problems[0])


def test_missing_head(journal: Journal) -> None:
    journal.head.unlink()
    v = journal.verify()
    assert not v.ok and "journal.head" in str(v.problems[0])


def test_missing_journal_and_head(journal: Journal) -> None:
    journal.path.unlink()
    journal.head.unlink()
    assert not journal.verify().ok


def test_nothing_to_verify_is_not_ok(tmp_path: Path) -> None:
    assert not Journal(tmp_path, KEY).verify().ok


def test_head_rewritten_to_hide_truncation(journal: Journal) -> None:
    """The attacker cuts the last line and points the head at the new last line: the head's MAC needs the key."""
    ls = lines(journal)
    journal.path.write_bytes(b"".join(ls[:-1]))
    doc = json.loads(journal.head.read_text())
    doc.update(lines=4, mac=json.loads(ls[3])["mac"])
    journal.head.write_text(json.dumps(doc))
    v = journal.verify()
    assert not v.ok and "head" in str(v.problems[0])


def test_other_key_fails(journal: Journal, tmp_path: Path) -> None:
    assert first_bad(Journal(tmp_path, b"x" * 32)) == 1


def test_append_after_verify_continues_chain(journal: Journal) -> None:
    journal.append({"event": "x"})
    last = json.loads(lines(journal)[-1])
    assert last["seq"] == 6 and journal.verify().ok


def test_legacy_journal_is_sealed_and_anchored(tmp_path: Path) -> None:
    out, prev = b"", "0" * 64
    for seq in (1, 2, 3):
        body = json.dumps({"seq": seq, "event": "attempt", "prev": prev}, separators=(",", ":")).encode()
        out += body + b"\n"
        prev = hashlib.sha256(body).hexdigest()
    (tmp_path / "journal.jsonl").write_bytes(out)
    (tmp_path / "journal.head").write_text(json.dumps({"seq": 3, "sha256": prev}))
    j = Journal(tmp_path, KEY)
    j.append({"event": "after"})
    v = j.verify()
    assert v.ok and v.lines == 2, v.problems
    first = json.loads(lines(j)[0])
    assert first["event"] == "journal_sealed" and first["sealed_sha256"] == prev and first["sealed_lines"] == 3
    assert [r["event"] for r in j.records()] == ["attempt"] * 3 + ["journal_sealed", "after"]
    sealed = tmp_path / SEALED_FILE
    sealed.write_bytes(sealed.read_bytes().replace(b'"attempt"', b'"attempX"', 1))
    v = j.verify()
    assert not v.ok and any(f"{SEALED_FILE}: line 2" in str(p) for p in v.problems)


@pytest.mark.parametrize("anchored", [True, False])
def test_damaged_first_line_without_head_is_damage_not_a_0_1_0_journal(tmp_path: Path, anchored: bool) -> None:
    """Cutting line 1 and deleting the head once made the journal read as 0.1.0 and sealed as history (the forged
    state accepted, `verify` OK with a note). Only a positive sign of 0.1.0, in a state never keyed, is sealed."""
    journal = Journal(tmp_path / "state", KEY, anchor=tmp_path / "anchor" if anchored else None)
    for i in range(3):
        journal.append({"event": "attempt", "target": f"t{i}"})
    ls = lines(journal)
    journal.path.write_bytes(ls[0][:40] + b"\n" + b"".join(ls[1:]))
    journal.head.unlink()
    again = Journal(tmp_path / "state", KEY, anchor=tmp_path / "anchor" if anchored else None)
    with pytest.raises(PermissionError, match="journal.head is missing"):  # appending would hide the cut head
        again.append({"event": "after"})
    assert not (tmp_path / "state" / SEALED_FILE).exists()
    v = again.verify()
    assert not v.ok and v.first_bad_line == 1, v.problems
    assert not (tmp_path / "state" / SEALED_FILE).exists()


def test_legacy_detection_is_decided_once_per_open(tmp_path: Path) -> None:
    """Appends to a keyed journal never read its head or first line again to look for a 0.1.0 journal."""
    journal = Journal(tmp_path / "state", KEY, anchor=tmp_path / "anchor")
    journal.append({"event": "first"})
    opened: list[str] = []

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and recording and isinstance(args[0], (str, Path)):
            opened.append(os.fspath(args[0]))

    recording = False
    sys.addaudithook(hook)
    recording = True
    try:
        for i in range(5):
            journal.append({"event": "attempt", "n": i})
    finally:
        recording = False
    reads_of_journal = [p for p in opened if p == os.fspath(journal.path)]
    assert os.fspath(journal.head) not in opened and os.fspath(tmp_path / "anchor") not in opened, opened
    assert len(reads_of_journal) == 10, opened  # per append: its tail, then the append itself
    assert journal.verify().ok


@pytest.mark.parametrize("how", ["lines cut from the end", "lines cut and the head deleted", "head edited",
                                 "last line replaced by an earlier one"])
def test_the_next_append_never_hides_tampering(journal: Journal, how: str) -> None:
    """The next deploy's append writes a new head: over a journal cut from the end, that head made `verify` say OK
    again. The append is refused instead (naming the head), nothing is written, and `verify` still names it."""
    ls = lines(journal)
    if how.startswith("lines cut"):
        journal.path.write_bytes(b"".join(ls[:-2]))
    if how == "lines cut and the head deleted":
        journal.head.unlink()
    if how == "head edited":
        journal.head.write_text(journal.head.read_text().replace('"lines": 5', '"lines": 9'))
    if how.startswith("last line replaced"):
        journal.path.write_bytes(b"".join([*ls[:-1], ls[-2]]))
    tampered = journal.path.read_bytes()
    with pytest.raises(PermissionError, match="journal.head"):
        Journal(journal.directory, KEY).append({"event": "attempt", "target": "next", "outcome": "delivered"})
    assert journal.path.read_bytes() == tampered
    assert not Journal(journal.directory, KEY).verify().ok


def test_an_interrupted_append_is_no_tampering(tmp_path: Path) -> None:
    """The head is written after the line: a crash between them leaves the head one line behind (or, on the first
    append, no head at all). Appending goes on."""
    first = Journal(tmp_path, KEY)
    first.append({"event": "journal_started"})
    first.head.unlink()  # the first append, interrupted before its head
    first.append({"event": "attempt"})
    head = first.head.read_bytes()
    first.append({"event": "attempt"})
    first.head.write_bytes(head)  # a later one, interrupted: the old head stays
    first.append({"event": "attempt"})
    v = Journal(tmp_path, KEY).verify()
    assert v.ok and v.lines == 4, v.problems


def test_an_anchor_that_could_not_be_written_is_written_by_a_later_append(tmp_path: Path) -> None:
    """The anchor is written with the first line; if that failed (here the store's directory is a symbolic link,
    which the write refuses, as a read-only store fails with EROFS), the first line is still appended, and a later
    append (a later run) anchors the first line once it verifies, so a restarted journal is caught from then on."""
    store = tmp_path / "store"
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    store.symlink_to(tmp_path / "elsewhere")  # refused for writing: the anchor cannot be created under it
    anchor = store / "anchor"
    Journal(tmp_path / "state", KEY, anchor=anchor).append({"event": "journal_started"})
    assert not anchor.exists()
    first_mac = json.loads((tmp_path / "state" / "journal.jsonl").read_bytes().splitlines()[0])["mac"]
    store.unlink()
    store.mkdir(mode=0o700)
    Journal(tmp_path / "state", KEY, anchor=anchor).append({"event": "attempt"})
    assert json.loads(anchor.read_bytes())["first_line_mac"] == first_mac
    for name in ("journal.jsonl", "journal.head"):  # deleted and restarted: caught by the late anchor
        os.unlink(tmp_path / "state" / name)
    restarted = Journal(tmp_path / "state", KEY, anchor=anchor)
    restarted.append({"event": "journal_started", "run": "another"})
    v = restarted.verify()
    assert not v.ok and v.first_bad_line == 1 and "anchor" in str(v.problems[0])


def test_a_first_line_that_does_not_verify_is_never_anchored_late(tmp_path: Path) -> None:
    """No anchor, and line 1 forged (its MAC not under the key): a later append must not anchor the forgery."""
    state = tmp_path / "state"
    Journal(state, KEY).append({"event": "journal_started"})  # no anchor configured at the time
    first, *rest = (state / "journal.jsonl").read_bytes().splitlines(keepends=True)
    (state / "journal.jsonl").write_bytes(first.replace(b"journal_started", b"journal_startex") + b"".join(rest))
    Journal(state, KEY, anchor=tmp_path / "anchor").append({"event": "attempt"})
    assert not (tmp_path / "anchor").exists()


def test_each_line_is_the_compact_json_of_its_record_then_its_mac(tmp_path: Path) -> None:
    """journal.py encodes with one JSONEncoder built once (issue 16): every line is still exactly
    json.dumps(record, separators=(",", ":")) with its MAC appended, whatever the record holds."""
    j = Journal(tmp_path, KEY)
    records = [{"event": "attempt", "target": "zoë ✓", "recipients": ["a@example.com", "b@example.com"],
                "duration_s": 0.125, "attempt": 2, "signed": False, "detail": None, "nested": {"x": [1, {"y": "\x00"}]}},
               {"event": "skipped", "detail": "line\nbreak \"quoted\"", "names": []}]
    j.append_all(records)
    previous: str | None = None
    for line, record in zip(lines(j), records, strict=True):
        doc = json.loads(line)
        mac = doc.pop("mac")
        assert previous is None or doc["prev"] == previous
        body = json.dumps(doc, separators=(",", ":")).encode()
        assert line == body[:-1] + b',"mac":"' + mac.encode() + b'"}\n'
        assert mac == hmac.new(KEY, body, hashlib.sha256).hexdigest()
        assert {k: v for k, v in doc.items() if k not in ("seq", "prev")} == record
        previous = mac
