"""`journal verify` over a real deploy's journal: the key lives in the credential store, never in the state, and
every tampering is named by its first bad line (exit 1); nothing to verify is never "journal OK"."""

from __future__ import annotations

import json
import os
import stat

import pytest
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths


@pytest.fixture
def shipped(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> DeployEnv:  # type: ignore[no-untyped-def]
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay), "b": relay_target(relay)})
    for _ in range(2):  # journal_started, then two attempts per run
        assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    return denv


def test_key_in_credential_store_not_in_state(shipped: DeployEnv) -> None:
    master = shipped.config_dir / "master.key"
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    key_text = master.read_text().strip()
    for path in shipped.state_dir.rglob("*"):
        if path.is_file():
            assert key_text not in path.read_text(errors="replace")
    run = shipped.run("journal", "verify")
    assert run.returncode == 0 and "journal OK: 5 line(s)" in run.stdout, run.stdout


@pytest.mark.parametrize(("tamper", "first_bad"), [
    ("edit line 2", "2"), ("remove line 2", "2"), ("cut the last line", "5"), ("empty", "1"),
])
def test_tampering_names_the_first_bad_line(shipped: DeployEnv, tamper: str, first_bad: str) -> None:
    journal = shipped.state_dir / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    if tamper == "edit line 2":
        doc = json.loads(lines[1])
        lines[1] = lines[1].replace(json.dumps(doc["target"]).encode(), b'"evil"')
    elif tamper == "remove line 2":
        del lines[1]
    elif tamper == "cut the last line":
        del lines[-1]
    else:
        lines = []
    journal.write_bytes(b"".join(lines))
    run = shipped.run("journal", "verify")
    assert run.returncode == 1 and "journal OK" not in run.stdout
    assert f"first bad line: {first_bad}" in run.stdout, run.stdout


@pytest.mark.parametrize("gone", ["journal.jsonl", "journal.head", "both", "the whole state"])
def test_missing_journal_is_never_ok(shipped: DeployEnv, gone: str) -> None:
    for name in {"both": ["journal.jsonl", "journal.head"], "the whole state": []}.get(gone, [gone]):
        os.unlink(shipped.state_dir / name)
    if gone == "the whole state":
        for path in sorted(shipped.state_dir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    run = shipped.run("journal", "verify")
    assert run.returncode == 1 and "journal OK" not in run.stdout
    assert "missing" in run.stdout
