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
