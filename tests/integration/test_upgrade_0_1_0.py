"""A state directory written by 0.1.0 itself (tests/data/state-0.1.0, see make_state_0_1_0.py) is upgraded on
first use: the pending entry is re-validated and re-keyed, then delivered by `retry` with its Message-ID; the
journal is sealed and anchored, so every line of its history stays verifiable and shown by `history`."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from support.deployenv import DeployEnv, relay_target

from certbot_smtp_dist._internal import drain

DATA = Path(__file__).parent.parent / "data" / "state-0.1.0"
MADE_AT = "/tmp/v010-data"


def install(tmp_path: Path, with_master_key: bool = True) -> tuple[DeployEnv, dict[str, object], bytes]:
    """`with_master_key`: as on a 0.1.0 host where a credential was stored (0.1.0 made the key then); the test
    data itself, from a relay without AUTH, has none."""
    root = tmp_path / "host"
    shutil.copytree(DATA, root)
    [entry_file] = (root / "state" / "spool").glob("*.json")
    entry_file.write_text(entry_file.read_text().replace(MADE_AT, str(root)))  # the same state, moved
    denv = DeployEnv(root)
    if with_master_key:
        denv.set_credential("relay-password", "smtp_password", "a-stored-relay-password")
    return denv, json.loads(entry_file.read_text()), (root / "state" / "journal.jsonl").read_bytes()


def test_pending_entry_and_history_survive_the_upgrade(tmp_path: Path, relay_factory) -> None:
    denv, old, old_journal = install(tmp_path)
    assert old["format"] == 1 and old["state"] == "pending" and old["target"] == "down"
    relay = relay_factory("plaintext")
    denv.write_config({"up": relay_target(relay), "down": relay_target(relay)})

    status = denv.run("status", "--json")
    assert status.returncode == 1, status.stdout + status.stderr  # pending, not rejected
    [row] = json.loads(status.stdout)["entries"]
    assert (row["id"], row["state"], row["message_id"], row["attempts"]) == (
        old["id"], "pending", old["message_id"], old["attempts"])
    upgraded = json.loads((denv.state_dir / "spool" / f"{old['id']}.json").read_text())
    assert upgraded["format"] == 2 and "config" not in upgraded and len(upgraded["mac"]) == 64

    now = datetime.fromisoformat(str(old["created"])) + timedelta(hours=1)  # the test data does not age
    outcome = drain.run(denv.state_dir, denv.config, now=now)
    assert outcome.exit_status == 0, outcome
    [received] = relay.messages
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    assert msg["Message-ID"] == old["message_id"]
    assert list((denv.state_dir / "spool").glob("*.json")) == []

    assert (denv.state_dir / "journal-0.1.0.jsonl").read_bytes() == old_journal  # sealed, untouched
    verify = denv.run("journal", "verify")
    assert verify.returncode == 0, verify.stdout
    assert "5 line(s) of 0.1.0 history" in verify.stderr
    history = json.loads(denv.run("history", "--json").stdout)["history"]
    assert [(h["run"], h["target"]) for h in history] == [("deploy", "up"), ("retry", "down")]


def test_entry_for_another_config_is_not_taken_over(tmp_path: Path, relay_factory) -> None:
    """0.1.0 let an entry name its config file; one naming a config other than the one in use stays rejected."""
    denv, old, _ = install(tmp_path)
    entry_file = denv.state_dir / "spool" / f"{old['id']}.json"
    entry_file.write_text(entry_file.read_text().replace(str(denv.config), "/home/mallory/config.toml"))
    relay = relay_factory("plaintext")
    denv.write_config({"up": relay_target(relay), "down": relay_target(relay)})
    status = denv.run("status")
    assert status.returncode == 2 and f"REJECTED: spool file {entry_file}" in status.stdout
    assert "/home/mallory/config.toml" in status.stderr and "dismiss" in status.stderr
    assert denv.run("retry").returncode == 69 and relay.messages == []  # REJECTED: for a human
    assert denv.run("dismiss", str(old["id"])).returncode == 0
    assert denv.run("status").returncode == 0


def test_upgrade_happens_once_and_a_format_1_entry_planted_later_is_not_taken_over(tmp_path: Path,
                                                                                  relay_factory) -> None:
    """The take-over is tied to the state never having been keyed: after the upgrade, a format-1 entry (no MAC)
    that names the config in use can only be a local user's forgery. It is reported as rejected, never re-keyed,
    never sent."""
    denv, old, _ = install(tmp_path)
    relay = relay_factory("plaintext")
    denv.write_config({"up": relay_target(relay), "down": relay_target(relay)})
    assert denv.run("status").returncode == 1  # the upgrade: the real 0.1.0 entry is taken over, pending
    planted_id = "0123456789abcdef01234567"
    planted = denv.state_dir / "spool" / f"{planted_id}.json"
    planted.write_text(json.dumps({**old, "id": planted_id, "message_id": "<planted@mallory.example>"}))
    status = denv.run("status")
    assert status.returncode == 2 and f"REJECTED: spool file {planted}" in status.stdout, status.stdout
    assert json.loads(planted.read_text())["format"] == 1  # not re-keyed
    now = datetime.fromisoformat(str(old["created"])) + timedelta(hours=1)
    drain.run(denv.state_dir, denv.config, now=now)
    assert [m.data for m in relay.messages if b"planted@mallory.example" in m.data] == []
    assert len(relay.messages) == 1  # the genuine entry only
    events = [r["event"] for r in map(json.loads, (denv.state_dir / "journal.jsonl").read_text().splitlines())]
    assert events.count("entry_upgraded") == 1 and events.count("journal_sealed") == 1


def test_read_only_commands_leave_a_keyless_0_1_0_state_for_retry_to_upgrade(tmp_path: Path, relay_factory) -> None:
    """No master key yet: `status` only reads, so it makes none and upgrades nothing; it says `retry` (or the next
    deploy) will. `retry` then creates the key, upgrades, and delivers the entry with its Message-ID."""
    denv, old, old_journal = install(tmp_path, with_master_key=False)
    relay = relay_factory("plaintext")
    denv.write_config({"up": relay_target(relay), "down": relay_target(relay)})
    status = denv.run("status")
    assert status.returncode == 3 and "written by 0.1.0 and is not upgraded yet" in status.stdout, status.stdout
    assert "retry" in status.stdout and not (denv.config_dir / "master.key").exists()
    assert (denv.state_dir / "journal.jsonl").read_bytes() == old_journal  # untouched
    now = datetime.fromisoformat(str(old["created"])) + timedelta(hours=1)
    assert drain.run(denv.state_dir, denv.config, now=now).exit_status == 0
    [received] = relay.messages
    assert email.message_from_bytes(received.data, policy=email.policy.default)["Message-ID"] == old["message_id"]
    assert denv.run("journal", "verify").returncode == 0
