"""Spool entries are authenticated: a forged entry (the attacker's config and root's private key, the 0.1.0 attack),
an altered or copied one is reported by file name in `status` and never acted on; an entry never names a config
file; an entry whose target left the configuration is closed as "target removed" and journalled."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from support.deployenv import DeployEnv, relay_target, to_toml
from support.pki import LineagePaths


def spool_files(denv: DeployEnv) -> list[Path]:
    return sorted((denv.state_dir / "spool").glob("*.json"))


def down(port: int) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 2,
            "from_address": "c@example.com", "to": ["x@example.com"]}


def forged_entry(lineage: LineagePaths, attacker_config: Path, fmt: int) -> dict[str, object]:
    now = "2026-01-01T00:00:00+00:00"
    doc: dict[str, object] = {
        "format": fmt, "id": "f" * 24, "state": "pending", "target": "evil", "config": str(attacker_config),
        "certificate": "test.example.com", "serial": "01", "fingerprint": "00", "message_id": "<x@example.com>",
        "date": now, "envelope_to": ["attacker@example.com"],
        "source": {"cert": str(lineage.cert), "key": str(lineage.privkey), "chain": str(lineage.chain),
                   "fullchain": str(lineage.fullchain), "name": None, "lineage_dir": str(lineage.live_dir)},
        "created": now, "updated": now, "attempts": 0, "last_failure": None, "kind": "delivery",
    }
    if fmt == 2:  # the attacker does not hold the key: the best they can do is a MAC under a guess
        del doc["config"]
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        doc["mac"] = hmac.new(b"guess" * 8, canonical, hashlib.sha256).hexdigest()
    return doc


def test_forged_entry_with_attackers_config_and_roots_key_is_never_sent(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path
) -> None:
    """The issue's attack on 0.1.0: a spool entry naming the attacker's config (plaintext relay, pem_and_key) and
    root's lineage made root's `retry` mail privkey.pem to the attacker. Now: nothing dialled, reported."""
    attacker_relay = relay_factory("plaintext")
    roots_relay = relay_factory("plaintext")
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    attacker_config = attacker / "config.toml"
    attacker_config.write_text(to_toml({"evil": relay_target(attacker_relay, payload="pem_and_key",
                                                             to=["attacker@example.com"])}))
    denv.write_config({"a": relay_target(roots_relay)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0  # creates state and keys
    roots_relay.clear()
    for fmt in (1, 2):
        (denv.state_dir / "spool").mkdir(mode=0o700, exist_ok=True)
        path = denv.state_dir / "spool" / f"{'f' * 24}.json"
        path.write_text(json.dumps(forged_entry(lineage, attacker_config, fmt)))
        path.chmod(0o600)
        retry = denv.run("retry")
        assert retry.returncode != 0 and path.name in retry.stderr
        assert attacker_relay.messages == [] and roots_relay.messages == []
        status = denv.run("status")
        assert status.returncode == 2 and f"REJECTED: spool file {path}" in status.stdout, status.stdout
        assert "never acted on" in status.stdout
        assert json.loads(denv.run("status", "--json").stdout)["entries"][0]["state"] == "rejected"
        assert path.exists()  # evidence kept until dismissed by hand
    assert denv.run("dismiss", "f" * 24).returncode == 0
    assert spool_files(denv) == [] and denv.run("status").returncode == 0
    assert denv.run("journal", "verify").returncode == 0


def test_altered_entry_is_rejected_and_not_sent(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                               unused_port: int) -> None:
    denv.write_config({"a": down(unused_port)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    [path] = spool_files(denv)
    doc = json.loads(path.read_text())
    assert "config" not in doc and doc["format"] == 2 and len(doc["mac"]) == 64
    doc["envelope_to"] = ["attacker@example.com"]
    path.write_text(json.dumps(doc))
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    assert denv.run("retry").returncode == 69  # left for a human (REJECTED): time will not heal it
    assert relay.messages == []
    status = denv.run("status")
    assert status.returncode == 2 and path.name in status.stdout and "MAC mismatch" in status.stdout


def test_entry_copied_under_another_name_is_rejected(denv: DeployEnv, lineage: LineagePaths,
                                                     unused_port: int) -> None:
    denv.write_config({"a": down(unused_port)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    [path] = spool_files(denv)
    copy = path.with_name("0" * 24 + ".json")
    copy.write_bytes(path.read_bytes())
    status = denv.run("status")
    assert status.returncode == 2 and f"spool file {copy}" in status.stdout and "moved or copied" in status.stdout


def test_entry_whose_target_left_the_config_is_closed_and_journalled(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, unused_port: int
) -> None:
    denv.write_config({"a": down(unused_port)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    relay = relay_factory("plaintext")
    denv.write_config({"b": relay_target(relay)})
    retry = denv.run("retry", "--json")
    assert retry.returncode == 0, retry.stderr
    assert retry.json["closed"][0]["reason"] == "target_removed"
    assert relay.messages == [] and spool_files(denv) == []
    events = [json.loads(x) for x in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "target_removed" and events[-1]["target"] == "a"
    assert denv.run("status").returncode == 0


def test_retry_resolves_the_config_as_deploy_does(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, unused_port: int
) -> None:
    """$CERTBOT_SMTP_DIST_CONFIG (as for deploy), read today: the target of that name as it is configured now."""
    denv.write_config({"a": down(unused_port)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay, to=["x@example.com"])})  # the recipient it was spooled for
    assert denv.run("retry").returncode == 0
    assert [m.rcpt_tos for m in relay.messages] == [("x@example.com",)]
