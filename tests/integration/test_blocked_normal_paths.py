"""A renewal's blocked entry (certificate unusable the run before) on the uninterrupted paths every renewal takes:
closed exactly once when the deploy runs again and gets its deliveries written ahead (sent, or pending for `retry`),
kept (one entry, counted) while the certificate is still unusable, and held by the deploy while it delivers, so a
concurrent `retry` (the timer's, or `retry --include-failed`) does not run the same deploy a second time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.deployenv import DeployEnv
from support.faultscript import STALL
from support.faultsmtp import FaultServer
from support.pki import LineagePaths, write_lineage
from support.polling import interrupt_when

BAD_KEY = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def lineage(tmp_path: Path) -> LineagePaths:
    return write_lineage(tmp_path / "live" / "test.example.com")


def _target(server: FaultServer, timeout: int = 60) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": timeout,
            "from_address": "c@example.com", "to": ["a@example.com"]}


def _renewal(lineage: LineagePaths) -> dict[str, str]:
    return {"RENEWED_LINEAGE": str(lineage.live_dir)}


def _entries(denv: DeployEnv) -> list[dict[str, object]]:
    return json.loads(denv.run("status", "--json").stdout)["entries"]  # type: ignore[no-any-return]


def _journalled(denv: DeployEnv, event: str) -> int:
    lines = (denv.state_dir / "journal.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("event") == event for line in lines)


def _blocked(denv: DeployEnv, lineage: LineagePaths) -> bytes:
    """A renewal's deploy that could not read the key: one blocked entry. Returns the good key."""
    good_key = lineage.privkey.read_bytes()
    lineage.privkey.write_bytes(BAD_KEY)
    assert denv.run("deploy", extra_env=_renewal(lineage)).returncode == 65
    assert [(e["kind"], e["state"]) for e in _entries(denv)] == [("blocked", "failed")]
    return good_key


def _run_again(denv: DeployEnv, lineage: LineagePaths, how: str) -> int:
    if how == "renewal":
        return denv.run("deploy", extra_env=_renewal(lineage)).returncode
    return denv.run("retry", "--include-failed").returncode


@pytest.mark.parametrize("how", ["renewal", "retry --include-failed"])
def test_a_blocked_deploy_that_succeeds_closes_its_entry_once_and_status_is_ok(
        denv: DeployEnv, lineage: LineagePaths, fault_server, how: str) -> None:
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    lineage.privkey.write_bytes(_blocked(denv, lineage))
    assert _run_again(denv, lineage, how) == 0
    assert len(relay.messages) == 1
    assert _entries(denv) == [] and denv.run("status").returncode == 0
    assert _journalled(denv, "unblocked") == 1
    assert _run_again(denv, lineage, "renewal") == 0  # nothing left to close
    assert _journalled(denv, "unblocked") == 1 and len(relay.messages) == 2


@pytest.mark.parametrize("how", ["renewal", "retry --include-failed"])
def test_a_blocked_deploy_whose_relay_is_down_leaves_its_pending_entry_in_place_of_the_blocked_one(
        denv: DeployEnv, lineage: LineagePaths, fault_server, how: str) -> None:
    busy = fault_server(replies={"greeting": "421 4.3.2 busy"})
    denv.write_config({"relay": _target(busy)}, defaults={"retry_attempts": 1})
    lineage.privkey.write_bytes(_blocked(denv, lineage))
    assert _run_again(denv, lineage, how) == 75
    assert [(e["kind"], e["state"]) for e in _entries(denv)] == [("delivery", "pending")]
    assert _journalled(denv, "unblocked") == 1
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    assert denv.run("retry").returncode == 0 and len(relay.messages) == 1
    assert _entries(denv) == [] and denv.run("status").returncode == 0


@pytest.mark.parametrize("how", ["renewal", "retry --include-failed"])
def test_a_blocked_deploy_still_unusable_keeps_one_entry(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                         how: str) -> None:
    relay = fault_server()
    denv.write_config({"relay": _target(relay)})
    _blocked(denv, lineage)
    assert _run_again(denv, lineage, how) == (65 if how == "renewal" else 69)
    [entry] = _entries(denv)
    assert (entry["kind"], entry["state"], entry["attempts"]) == ("blocked", "failed", 2)
    assert _journalled(denv, "unblocked") == 0 and relay.connections == 0


@pytest.mark.parametrize("argv", [["retry"], ["retry", "--include-failed"]])
def test_a_retry_while_a_blocked_deploy_delivers_does_not_run_it_again(denv: DeployEnv, lineage: LineagePaths,
                                                                      fault_server, argv: list[str]) -> None:
    # The deploy left the blocked entry in place until its deliveries were saved: a `retry` meanwhile (the timer's,
    # the entry pending once the configuration loads again; or --include-failed) found it unclaimed and ran the
    # whole deploy a second time, mailing the certificate twice.
    relay = fault_server(replies={"DATA_END": STALL}, faulty_connections=1)  # the deploy's session stalls
    if argv == ["retry"]:  # a configuration that did not load: the entry turns pending once it does
        denv.config.write_text("[targets.a]\nport = 'not a number'\n")
        assert denv.run("deploy", extra_env=_renewal(lineage)).returncode == 78
        denv.write_config({"relay": _target(relay)})
    else:
        denv.write_config({"relay": _target(relay)})
        lineage.privkey.write_bytes(_blocked(denv, lineage))
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "deploy"], env=denv.env(_renewal(lineage)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    retried: list[int] = []

    def retry_once_stalled() -> bool:
        if relay.data_ends:
            retried.append(denv.run(*argv).returncode)
        return bool(retried)

    _, err = interrupt_when(proc, retry_once_stalled)
    assert proc.returncode == 130, err
    assert retried and relay.connections == 1  # the retry dialled nobody: the deploy held its own entry
    entries = _entries(denv)  # the Ctrl-C came after the final dot: the relay may have it
    assert [(e["kind"], e["state"]) for e in entries] == [("delivery", "uncertain")], entries


def test_the_blocked_entry_is_recorded_when_the_journal_cannot_be_started(denv: DeployEnv, tmp_path: Path,
                                                                          fault_server) -> None:
    # Ledger.block starts the journal first: a journal that cannot be written must not keep the entry from the spool.
    lineage = write_lineage(tmp_path / "live" / "other.example.com")
    denv.write_config({"relay": _target(fault_server())})
    denv.state_dir.mkdir(mode=0o700, exist_ok=True)
    (denv.state_dir / "journal.jsonl").mkdir()  # not a file: every append fails
    lineage.privkey.write_bytes(BAD_KEY)
    run = denv.run("deploy", extra_env=_renewal(lineage))
    assert run.returncode == 65, run.stderr
    assert "cannot write the journal" in run.stderr
    [entry] = [p for p in (denv.state_dir / "spool").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert entry.stat().st_size > 0


@pytest.mark.parametrize("case", ["every target held back by min_interval", "no target wants the certificate",
                                  "--target naming one of two"])
def test_a_blocked_renewal_that_sends_nothing_or_part_still_closes_its_entry_once(
        denv: DeployEnv, lineage: LineagePaths, fault_server, case: str) -> None:
    # Nothing (or only part) written ahead: the run got past every check all the same, as at 3818e7d.
    relay, other = fault_server(), fault_server()
    extra = ({"min_interval": "7d"} if "min_interval" in case else
             {"certificates": ["nothing.example"]} if "no target" in case else {})
    denv.write_config({"relay": _target(relay) | extra, "other": _target(other)} if "--target" in case
                      else {"relay": _target(relay) | extra})
    if "min_interval" in case:
        assert denv.run("deploy", extra_env=_renewal(lineage)).returncode == 0
    lineage.privkey.write_bytes(_blocked(denv, lineage))
    argv = ["deploy", "--target", "relay"] if "--target" in case else ["deploy"]
    assert denv.run(*argv, extra_env=_renewal(lineage)).returncode == 0
    assert _entries(denv) == [] and _journalled(denv, "unblocked") == 1
    assert len(relay.messages) == (1 if "min_interval" in case or "--target" in case else 0)
    assert other.connections == 0
