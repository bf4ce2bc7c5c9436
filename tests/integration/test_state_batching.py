"""A run's state writes are batched (issue 16): the write-ahead entries share one fsync of the spool directory before
the first connection, the attempts one journal append, and the settlements one more directory fsync, instead of
about six fsyncs a target. The journal still verifies line by line and the spool ends as it did."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths

from certbot_smtp_dist._internal.journal import Journal

TARGETS = 8


def test_a_run_to_many_targets_fsyncs_about_once_a_target(denv: DeployEnv, lineage: LineagePaths, relay_factory: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({f"t{i}": relay_target(relay) for i in range(TARGETS)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0  # keys, journal: made once
    real_fsync = os.fsync
    counted: list[int] = []

    def fsync(fd: int) -> None:
        counted.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    monkeypatch.undo()
    assert run.returncode == 0, run.stderr
    assert len(relay.messages) == 2 * TARGETS
    # One per write-ahead entry (its own file) plus a handful per run; it was 6 a target (48 here).
    assert len(counted) <= TARGETS + 8, len(counted)
    journal = Journal(denv.state_dir, None)
    attempts = [r for r in journal.records() if r.get("event") == "attempt"]
    assert [r["outcome"] for r in attempts] == ["delivered"] * 2 * TARGETS
    assert sorted(r["target"] for r in attempts[TARGETS:]) == [f"t{i}" for i in range(TARGETS)]
    assert list((denv.state_dir / "spool").glob("*.json")) == []
    verified = denv.run("journal", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_appending_several_records_chains_and_anchors_them_as_single_appends(tmp_path: Path) -> None:
    key = b"k" * 32
    batched = Journal(tmp_path / "a", key, anchor=tmp_path / "a.anchor")
    batched.append_all([{"event": "attempt", "target": f"t{i}"} for i in range(3)])
    batched.append_all([])
    batched.append({"event": "attempt", "target": "t3"})
    verdict = batched.verify()
    assert verdict.ok and verdict.lines == 4, verdict.problems
    assert [r["seq"] for r in batched.records()] == [1, 2, 3, 4]
    first = json.loads(batched.path.read_bytes().splitlines()[0])
    assert json.loads((tmp_path / "a.anchor").read_text())["first_line_mac"] == first["mac"]
    one_by_one = Journal(tmp_path / "b", key)
    for i in range(3):
        one_by_one.append({"event": "attempt", "target": f"t{i}"})
    assert [{k: v for k, v in r.items() if k != "time"} for r in one_by_one.records()] == \
        [{k: v for k, v in r.items() if k != "time"} for r in batched.records()][:3]


def test_the_batchs_directory_fsync_failing_is_reported_not_lost(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from certbot_smtp_dist._internal import files
    from certbot_smtp_dist._internal import spool as sp

    spool = sp.Spool(tmp_path, b"s" * 32)
    spool.directory.mkdir(parents=True)

    def failing(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files, "fsync_dir", failing)
    seen: list[OSError] = []
    with spool.batch(seen.append):
        spool.remove("absent")  # nothing removed: no fsync owed
    assert seen == []
    (spool.directory / "gone.json").write_text("{}")
    with spool.batch(seen.append):
        spool.remove("gone")
    assert [e.errno for e in seen] == [5]
    (spool.directory / "gone.json").write_text("{}")
    with pytest.raises(OSError), spool.batch():
        spool.remove("gone")
    with pytest.raises(ZeroDivisionError), spool.batch(seen.append):  # the block's own error is never swallowed
        1 / 0  # noqa: B018


def _write_ahead_run(tmp_path: Path, count: int) -> tuple[Any, list[Any]]:
    from datetime import datetime, timezone

    from certbot_smtp_dist._internal.config import parse_settings
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
    from certbot_smtp_dist._internal.pipeline import Job
    from certbot_smtp_dist._internal.state import StateKeys
    from certbot_smtp_dist.model import Message

    table = {"host": "127.0.0.1", "tls_mode": "plaintext", "from_address": "c@example.com", "to": ["x@example.com"]}
    settings = parse_settings({"targets": {f"t{i}": table for i in range(count)}}, Path("c.toml"), {},
                              {f.name: f for f in BUILTIN_FORMATS})
    jobs = [Job(t, Message(f"<{t.name}@example.com>", "s", "c@example.com", ("x@example.com",), b"m"), None, ())
            for t in settings.targets]
    jobs.insert(1, Job(settings.targets[0], None, None, (), skipped=True))  # nothing to write for this one
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ledger = Ledger(state, "deploy", StateKeys(journal=b"j" * 32, spool=b"s" * 32), datetime.now(timezone.utc))
    return ledger, jobs


def test_the_write_ahead_entries_written_side_by_side_are_durable_and_held_before_the_run_goes_on(
        tmp_path: Path, lineage: LineagePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several entries are written by writer threads: when the block starts, each is on disk, claimed (its lock
    held: another claim is Busy) and the spool directory fsynced after the last of them; they are released after."""
    from certbot_smtp_dist._internal import files
    from certbot_smtp_dist._internal import lineage as lineages
    from certbot_smtp_dist._internal import spool as sp

    ledger, jobs = _write_ahead_run(tmp_path, 5)
    artefact = lineages.load(lineages.from_lineage_dir(lineage.live_dir))
    events: list[str] = []
    real_write, real_sync = files.write_private, files.fsync_dir
    monkeypatch.setattr(files, "write_private", lambda path, data, sync_dir=True: (
        events.append(f"write {path.parent.name}"), real_write(path, data, sync_dir)))
    monkeypatch.setattr(files, "fsync_dir", lambda path: (events.append(f"sync {path.name}"), real_sync(path)))
    with ledger.write_ahead_all(artefact.facts, lineages.from_lineage_dir(lineage.live_dir), jobs) as entries:
        assert [e is None for e in entries] == [False, True, False, False, False, False]
        assert events.count("write spool") == 5 and events[-1] == "sync spool", events
        on_disk = {p.stem for p in (ledger.state_dir / "spool").glob("*.json")}
        assert on_disk == {e.id for e in entries if e is not None}
        for entry in entries:
            if entry is not None:
                with pytest.raises(sp.Busy), ledger.spool.claim(entry.id):
                    pass
        assert ledger.healthy
    with ledger.spool.claim(entries[0].id) as again:  # released with the block
        assert again == entries[0]


def test_a_write_ahead_entry_that_cannot_be_written_fails_alone(tmp_path: Path, lineage: LineagePaths,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One entry's write failing on its writer thread is reported as before (the state unhealthy, that entry
    None: its delivery goes on without one) and no other entry is lost."""
    from certbot_smtp_dist._internal import lineage as lineages
    from certbot_smtp_dist._internal import spool as sp

    ledger, jobs = _write_ahead_run(tmp_path, 4)
    artefact = lineages.load(lineages.from_lineage_dir(lineage.live_dir))
    real_write = sp.Spool.write

    def write(self: sp.Spool, entry: sp.Entry) -> None:
        if entry.target == "t2":
            raise OSError(28, "No space left on device")
        real_write(self, entry)

    monkeypatch.setattr(sp.Spool, "write", write)
    with ledger.write_ahead_all(artefact.facts, lineages.from_lineage_dir(lineage.live_dir), jobs) as entries:
        assert [e.target if e else None for e in entries] == ["t0", None, "t1", None, "t3"]
        assert not ledger.healthy
        assert len(list((ledger.state_dir / "spool").glob("*.json"))) == 3


def test_writer_threads_never_create_a_directory_on_a_fresh_state(tmp_path: Path, lineage: LineagePaths,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating a directory sets the process-wide umask for a moment (files.ensure_private_dir): done by writer
    threads at once, one thread's restore could leave another's mkdir (and its parents) with a loose umask, and the
    process with the wrong one. The spool's directories are made before the threads start: all 0700, umask intact."""
    import stat
    import threading

    from certbot_smtp_dist._internal import lineage as lineages

    ledger, jobs = _write_ahead_run(tmp_path, 6)
    callers: list[str] = []
    real_umask = os.umask

    def umask(mask: int) -> int:
        callers.append(threading.current_thread().name)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", umask)
    before = real_umask(0o022)
    try:
        with ledger.write_ahead_all(lineages.load(lineages.from_lineage_dir(lineage.live_dir)).facts,
                                    lineages.from_lineage_dir(lineage.live_dir), jobs) as entries:
            assert sum(e is not None for e in entries) == 6 and ledger.healthy
        assert real_umask(0o022) == 0o022  # what it was during the run
    finally:
        real_umask(before)
    assert callers and set(callers) == {threading.main_thread().name}, callers
    for directory in (ledger.state_dir / "spool", ledger.state_dir / "spool" / "locks"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
