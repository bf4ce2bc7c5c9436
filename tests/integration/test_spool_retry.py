"""Durable spool and retry: a failed delivery is kept, re-sent with the same Message-ID, and closed when done."""

from __future__ import annotations

import email
import email.policy
import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

from support.deployenv import DeployEnv, relay_target
from support.faultscript import Script
from support.pki import LineagePaths, write_lineage
from support.relay import Relay

PASSWORD = "relay-pw-7e1c"
P12 = "p12-pass-93af"


def spool_files(denv: DeployEnv) -> list[Path]:
    return sorted((denv.state_dir / "spool").glob("*.json"))


def test_failed_delivery_is_spooled_then_retried_with_same_message_id(
    denv: DeployEnv, lineage: LineagePaths, relay_pki, unused_port: int
) -> None:
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.set_credential("p12", "smtp_pkcs12_passphrase", P12)
    denv.write_config({"archive": {
        "host": "127.0.0.1", "port": unused_port, "tls_mode": "starttls", "tls_ca_file": str(relay_pki.ca_file),
        "auth_method": "plain", "username": "robot", "password_credential": "relay", "timeout": 3,
        "from_address": "certbot@example.com", "to": ["pki@example.com"], "bcc": ["audit@example.com"],
        "payload": "pkcs12", "pkcs12_passphrase_credential": "p12",
    }})
    first = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert first.returncode == 75
    message_id = first.target("archive")["message_id"]
    [entry_file] = spool_files(denv)
    assert stat.S_IMODE(entry_file.stat().st_mode) == 0o600
    entry = json.loads(entry_file.read_text())
    assert entry["state"] == "pending" and entry["message_id"] == message_id
    assert entry["last_failure"]["error_code"] == "SMTP_CONNECT"
    # No secret and no key material in the spool or the journal.
    key_body = lineage.privkey.read_bytes().splitlines()[1].decode()
    for path in [entry_file, denv.state_dir / "journal.jsonl"]:
        text = path.read_text()
        assert PASSWORD not in text and P12 not in text and key_body not in text and "PRIVATE" not in text

    status = denv.run("status", "--json")
    assert status.returncode == 1  # WARNING: pending
    assert json.loads(status.stdout)["entries"][0]["target"] == "archive"

    with Relay(relay_pki, mode="starttls", auth=("robot", PASSWORD), port=unused_port) as relay:
        retry = denv.run("retry", "--json")
        assert retry.returncode == 0, retry.stderr
        [received] = relay.messages
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
        assert msg["Message-ID"] == message_id
        assert set(received.rcpt_tos) == {"pki@example.com", "audit@example.com"}
    assert spool_files(denv) == []
    assert denv.run("status").returncode == 0
    assert denv.run("journal", "verify").returncode == 0
    history = denv.run("history", "--json")
    [shipped] = json.loads(history.stdout)["history"]
    assert shipped["message_id"] == message_id and shipped["run"] == "retry" and shipped["attempt"] >= 2
    assert shipped["fingerprint"] == lineage.leaf.fingerprint


def test_retry_only_resends_to_refused_recipients(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext", reject={"busy@example.com": "452 4.2.2 Mailbox full"})
    denv.write_config({"list": relay_target(relay, to=["ok@example.com", "busy@example.com"], timeout=2)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 75 and run.target("list")["status"] == "partial"
    [entry_file] = spool_files(denv)
    assert json.loads(entry_file.read_text())["envelope_to"] == ["busy@example.com"]
    relay.clear()
    relay.set_reject({})
    assert denv.run("retry").returncode == 0
    assert [m.rcpt_tos for m in relay.messages] == [("busy@example.com",)]


def test_newer_certificate_supersedes_entry(denv: DeployEnv, tmp_path: Path, relay_factory, unused_port: int) -> None:
    live = tmp_path / "live" / "test.example.com"
    first = write_lineage(live)
    denv.write_config({"a": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                             "from_address": "c@example.com", "to": ["x@example.com"]}})
    assert denv.run("deploy", "--lineage", str(live)).returncode == 75
    [entry] = [json.loads(p.read_text()) for p in spool_files(denv)]
    assert entry["fingerprint"] == first.leaf.fingerprint
    renewed = write_lineage(live)  # the lineage now holds a newer certificate
    retry = denv.run("retry", "--json")
    assert retry.returncode == 0
    assert [c["reason"] for c in retry.json["closed"]] == ["superseded"]
    assert spool_files(denv) == []
    last = json.loads((denv.state_dir / "journal.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "superseded" and last["message_id"] == entry["message_id"]
    assert last["fingerprint"] == renewed.leaf.fingerprint != first.leaf.fingerprint  # closed in favour of the new one


def test_an_older_certificate_put_back_does_not_supersede_the_entry(denv: DeployEnv, tmp_path: Path,
                                                                     unused_port: int) -> None:
    """The lineage's files replaced by an OLDER certificate (restored from a backup by hand): the pending entry's
    newer certificate is not "superseded" by it. It stays, failed for a human, and nothing older is sent."""
    live = tmp_path / "live" / "test.example.com"
    now = datetime.now(timezone.utc)
    older = write_lineage(tmp_path / "old" / "test.example.com", not_before=now - timedelta(days=30),
                          not_after=now + timedelta(days=60))
    newer = write_lineage(live, not_before=now - timedelta(hours=1), not_after=now + timedelta(days=89))
    denv.write_config({"a": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                             "from_address": "c@example.com", "to": ["x@example.com"]}})
    assert denv.run("deploy", "--lineage", str(live)).returncode == 75
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"):
        (live / name).write_bytes((older.live_dir / name).read_bytes())

    retry = denv.run("retry", "--json")

    assert retry.returncode == 69, retry.stdout + retry.stderr  # failed for a human: as every later run says
    assert retry.json["closed"] == []
    [entry] = [json.loads(p.read_text()) for p in spool_files(denv)]
    assert entry["fingerprint"] == newer.leaf.fingerprint and entry["state"] == "failed"
    assert "now holds an older certificate" in entry["last_failure"]["detail"]
    assert denv.run("retry").returncode == 69  # and it waits for a human
    assert [json.loads(p.read_text())["fingerprint"] for p in spool_files(denv)] == [newer.leaf.fingerprint]


def test_permanent_failure_not_retried_but_alerted(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext", reject={"gone@example.com": "550 5.1.1 No such user"})
    denv.write_config({"a": relay_target(relay, to=["gone@example.com"])})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 69
    status = denv.run("status", "--json")
    assert status.returncode == 2  # CRITICAL
    [row] = json.loads(status.stdout)["entries"]
    assert row["state"] == "failed" and row["error_code"] == "SMTP_PERMANENT"
    connections = relay.connections
    assert denv.run("retry").returncode == 69  # not retried, and failing while it needs a human (OnFailure=)
    assert relay.connections == connections  # never retried automatically
    assert denv.run("dismiss", row["id"]).returncode == 0
    assert denv.run("status").returncode == 0


def test_later_successful_deploy_closes_older_entry(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                     unused_port: int) -> None:
    denv.write_config({"a": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                             "from_address": "c@example.com", "to": ["x@example.com"]}})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay, to=["x@example.com"])})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    assert spool_files(denv) == []
    assert denv.run("retry").returncode == 0
    assert len(relay.messages) == 1  # not sent twice


def test_journal_records_every_attempt_and_verifies(denv: DeployEnv, lineage: LineagePaths, unused_port: int) -> None:
    denv.write_config({"a": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 4,
                             "from_address": "c@example.com", "to": ["x@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    started, *lines = [json.loads(x) for x in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    assert started["event"] == "journal_started"  # before the spool entry is written ahead
    assert len(lines) == run.target("a")["attempts"] >= 2
    assert [x["attempt"] for x in lines] == list(range(1, len(lines) + 1))
    for line in lines:
        assert line["target"] == "a" and line["error_code"] == "SMTP_CONNECT" and line["phase"] == "connect"
        assert line["serial"] == run.json["certificate"]["serial"]
        assert line["recipients"] == ["x@example.com"] and line["message_id"] == run.target("a")["message_id"]
    assert stat.S_IMODE((denv.state_dir / "journal.jsonl").stat().st_mode) == 0o600
    assert denv.run("journal", "verify").returncode == 0


def test_partial_then_failed_attempt_never_resends_to_who_has_it(denv: DeployEnv, lineage: LineagePaths,
                                                                 fault_server) -> None:
    """Attempt 1: a accepts, b is busy (450). Attempt 2 (b only) meets a 421 greeting. a must never get it twice."""
    server = fault_server(Script(rcpt_replies={"b@example.com": "450 4.2.1 mailbox busy"}, faulty_connections=1,
                                 later=Script(replies={"greeting": "421 4.3.2 shutting down"})))
    denv.write_config({"t": {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 10,
                             "from_address": "c@example.com", "to": ["a@example.com", "b@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("t")
    assert run.returncode == 75 and t["attempts"] >= 2
    assert t["status"] == "partial" and t["error_code"] == "SMTP_TRANSIENT"
    assert list(t["refused_recipients"]) == ["b@example.com"]
    [entry] = [json.loads(p.read_text()) for p in spool_files(denv)]
    assert entry["envelope_to"] == ["b@example.com"]
    server.script = Script()  # the relay recovers
    assert denv.run("retry").returncode == 0
    assert [m.rcpt_tos for m in server.messages] == [("a@example.com",), ("b@example.com",)]


def test_retry_never_sends_to_a_recipient_removed_from_the_target(denv: DeployEnv, lineage: LineagePaths,
                                                                  relay_pki, unused_port: int) -> None:
    """Attack: a deploy fails (relay down) and is spooled for pki@ and former@; the operator removes former@ (who
    left) from the target, because its messages carry the private key. retry sent to the recipients the entry
    recorded, whatever the configuration now says, so former@ got the key all the same. The target's recipients
    now are what retry may send to (as the target itself and its filter already are); an entry none of whose
    recipients remain is closed as `recipients_removed` (journalled), nothing sent."""
    table = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "starttls", "tls_ca_file": str(relay_pki.ca_file),
             "timeout": 3, "from_address": "certbot@example.com", "payload": "pem_and_key"}
    denv.write_config({"a": {**table, "to": ["pki@example.com", "former@example.com"]},
                       "b": {**table, "to": ["gone@example.com"]}})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    assert len(spool_files(denv)) == 2
    denv.write_config({"a": {**table, "to": ["pki@example.com"]}, "b": {**table, "to": ["new@example.com"]}})
    with Relay(relay_pki, mode="starttls", port=unused_port) as relay:
        retry = denv.run("retry", "--json")
        assert retry.returncode == 0, retry.stderr
        assert [m.rcpt_tos for m in relay.messages] == [("pki@example.com",)]
    assert spool_files(denv) == []
    records = [json.loads(line) for line in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    assert ("b", "recipients_removed") in [(r.get("target"), r.get("event")) for r in records], records
