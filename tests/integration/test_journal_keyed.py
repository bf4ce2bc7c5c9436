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
    tamper_with(shipped.state_dir / "journal.jsonl", tamper)
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


def tamper_with(journal: os.PathLike[str], tamper: str) -> None:
    path = os.fspath(journal)
    with open(path, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)
    if tamper == "edit line 2":
        doc = json.loads(lines[1])
        lines[1] = lines[1].replace(json.dumps(doc["target"]).encode(), b'"evil"')
    elif tamper == "remove line 2":
        del lines[1]
    elif tamper == "cut the last line":
        del lines[-1]
    elif tamper == "empty":
        lines = []
    with open(path, "wb") as handle:
        handle.write(b"".join(lines))


@pytest.mark.parametrize(("tamper", "first_bad"), [("edit line 2", "2"), ("remove line 2", "2"),
                                                   ("cut the last line", "5")])
def test_status_is_critical_over_a_tampered_journal(shipped: DeployEnv, tamper: str, first_bad: str) -> None:
    """Issue 20: a state command never tells monitoring OK by mistake; nothing pending is not "OK" when the record
    of what was shipped fails verification. Each output names the first bad line and the command that shows it all."""
    assert shipped.run("status").returncode == 0
    tamper_with(shipped.state_dir / "journal.jsonl", tamper)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in shipped.state_dir.rglob("*"))
    run = shipped.run("status")
    assert run.returncode == 2 and "OK:" not in run.stdout, run.stdout + run.stderr
    assert f"first bad line {first_bad}" in run.stdout and "journal verify" in run.stdout, run.stdout
    nagios = shipped.run("status", "--nagios")
    first = nagios.stdout.split("\n")[0]
    assert nagios.returncode == 2 and first.startswith("SMTP-DIST CRITICAL - "), nagios.stdout
    assert f"first bad line {first_bad}" in first and "journal_intact=0;;1:;0;1" in first
    assert "next: certbot-smtp-dist" in nagios.stdout and "journal verify" in nagios.stdout
    doc = json.loads(shipped.run("status", "--json").stdout)
    assert doc["journal"]["ok"] is False and doc["journal"]["first_bad_line"] == int(first_bad)
    assert doc["journal"]["next"] and "journal verify" in doc["journal"]["next"][0]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in shipped.state_dir.rglob("*")) == before  # read-only


def test_status_says_the_journal_verifies(shipped: DeployEnv) -> None:
    run = shipped.run("status", "--nagios")
    assert run.returncode == 0 and "journal_intact=1;;1:;0;1" in run.stdout, run.stdout
    assert json.loads(shipped.run("status", "--json").stdout)["journal"] == {
        "ok": True, "lines": 5, "first_bad_line": None, "problems": [], "next": []}
