"""Spool entries over their whole life: races with other processes, blocked deploys, payloads that failed,
configurations that broke, and a state directory that cannot be written."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths
from support.relay import Relay

from certbot_smtp_dist._internal import drain
from certbot_smtp_dist._internal.credentials import CredentialStore
from certbot_smtp_dist._internal.spool import Entry, Spool
from certbot_smtp_dist._internal.state import StateKeys, state_keys


def keys(denv: DeployEnv) -> StateKeys:
    return state_keys(CredentialStore(denv.config_dir, environ={}), denv.state_dir)


def entries(denv: DeployEnv) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((denv.state_dir / "spool").glob("*.json"))]


def down_target(port: int) -> dict:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 2,
            "from_address": "c@example.com", "to": ["x@example.com"]}


def test_entry_closed_after_retry_listed_it_is_not_sent(denv: DeployEnv, lineage: LineagePaths,
                                                         unused_port: int) -> None:
    """retry lists entries, then locks each: what another process closed in between must not go out."""
    denv.write_config({"a": down_target(unused_port)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    [listed] = [e for e in Spool(denv.state_dir, keys(denv).spool).entries() if isinstance(e, Entry)]
    assert denv.run("dismiss", listed.id).returncode == 0  # "another process" closes it
    with Relay(None, mode="plaintext", port=unused_port) as relay:
        stale = drain._Drain(denv.state_dir, denv.config, keys(denv), False, drain.datetime.now(drain.timezone.utc))
        with ExitStack() as claims:
            assert stale._plan_all([listed], claims) == []  # the stale listing: claimed, re-read, gone
        assert stale.run().exit_status == 0
        assert relay.messages == []


def renewal(lineage: LineagePaths) -> dict[str, str]:
    """certbot's deploy-hook environment: only a renewal leaves a blocked entry behind."""
    return {"RENEWED_LINEAGE": str(lineage.live_dir)}


def test_broken_config_blocks_then_alerts_then_recovers(denv: DeployEnv, lineage: LineagePaths,
                                                         relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.config.write_text("[targets.a]\nport = 'not a number'\n")
    assert denv.run("deploy", extra_env=renewal(lineage)).returncode == 78
    [blocked] = entries(denv)
    assert (blocked["kind"], blocked["state"], blocked["target"]) == ("blocked", "failed", "*")
    assert "configuration unusable" in blocked["last_failure"]["detail"]
    status = denv.run("status")
    assert status.returncode == 2 and "FAILED" in status.stdout  # monitoring sees it
    assert denv.run("deploy", extra_env=renewal(lineage)).returncode == 78
    [again] = entries(denv)
    assert again["id"] == blocked["id"] and again["attempts"] == 2  # one entry per lineage, not one per run
    assert denv.run("retry").returncode == 69  # not retried automatically, and failing while it stays blocked
    assert relay.messages == []
    denv.write_config({"a": relay_target(relay)})  # the operator fixes the file
    fixed = denv.run("retry", "--include-failed", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert [c["reason"] for c in fixed.json["closed"]] == ["unblocked"]
    assert len(relay.messages) == 1
    assert entries(denv) == [] and denv.run("status").returncode == 0


def test_unusable_certificate_blocks_and_the_renewal_unblocks(denv: DeployEnv, lineage: LineagePaths,
                                                              relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    good_key = lineage.privkey.read_bytes()
    lineage.privkey.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert denv.run("deploy", extra_env=renewal(lineage)).returncode == 65
    [blocked] = entries(denv)
    assert blocked["kind"] == "blocked" and blocked["last_failure"]["error_code"] == "SMTP_PAYLOAD"
    assert denv.run("status").returncode == 2
    lineage.privkey.write_bytes(good_key)  # the next renewal's deploy finds good files
    assert denv.run("deploy", extra_env=renewal(lineage)).returncode == 0
    assert entries(denv) == [] and len(relay.messages) == 1


def test_config_broken_while_pending_needs_a_human(denv: DeployEnv, lineage: LineagePaths,
                                                   unused_port: int) -> None:
    denv.write_config({"a": down_target(unused_port)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    assert denv.run("status").returncode == 1  # pending: retries continue
    denv.config.write_text("[targets.a]\nhost = 42\n")
    assert denv.run("retry").returncode == 69  # the entry is failed for a human now, as status says
    [entry] = entries(denv)
    assert entry["state"] == "failed" and "configuration" in entry["last_failure"]["detail"]
    assert denv.run("status").returncode == 2  # CRITICAL: waiting would not help
    denv.write_config({"a": down_target(unused_port)})
    with Relay(None, mode="plaintext", port=unused_port) as relay:
        assert denv.run("retry", "--include-failed").returncode == 0
        assert len(relay.messages) == 1
    assert entries(denv) == []


def test_unwritable_state_is_reported_not_claimed(denv: DeployEnv, lineage: LineagePaths, unused_port: int,
                                                  tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("")
    denv.write_config({"a": down_target(unused_port)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--state-dir", str(not_a_dir))
    assert run.returncode == 75
    assert "will NOT be retried automatically" in run.stderr
