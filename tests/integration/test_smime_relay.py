"""S/MIME end to end: a deploy through a real aiosmtpd relay on loopback, what the recipients' OpenSSL makes of what
arrived, the journal's record of it, a dry run's .eml, and a configuration error that dials nothing."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths, SmimeFiles, expired_window, issue_smime, write_smime

from certbot_smtp_dist._internal import cms


@pytest.fixture
def pki(tmp_path: Path) -> SmimeFiles:
    return write_smime(tmp_path / "smime")


@pytest.fixture(params=["cryptography", "openssl"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "openssl":
        monkeypatch.setattr(cms, "FORCED", cms.Backend.OPENSSL)  # the runs below are in-process
    yield str(request.param)


def smime_target(relay: Any, pki: SmimeFiles, **overrides: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {"payload": "pem_and_key", "cc": ["ops@example.com"],
                            "smime_sign_cert": str(pki.signer_cert), "smime_sign_key": str(pki.signer_key),
                            "smime_encrypt_to": [str(p) for p in pki.recipient_certs]}
    return relay_target(relay, **{**keys, **overrides})


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60, check=False)


def opened(raw: bytes, pki: SmimeFiles, index: int) -> dict[str, bytes]:
    """Decrypt as recipient `index`, verify against the S/MIME CA, and return the attachments."""
    done = openssl("cms", "-decrypt", "-inkey", str(pki.recipient_keys[index]), "-recip",
                   str(pki.recipient_certs[index]), data=raw)
    assert done.returncode == 0, done.stderr
    verified = openssl("cms", "-verify", "-CAfile", str(pki.ca_file), data=done.stdout)
    assert verified.returncode == 0, verified.stderr
    inner = email.message_from_bytes(verified.stdout, policy=email.policy.default)
    return {str(p.get_filename()): p.get_payload(decode=True) for p in inner.iter_attachments()}  # type: ignore[attr-defined, misc]


def test_signed_and_encrypted_delivery_through_a_relay(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                       pki: SmimeFiles, backend: str) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"team": smime_target(relay, pki)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 0, run.stderr
    assert "encrypted (S/MIME) to" in run.stderr and "in clear text" not in run.stderr
    [received] = relay.messages
    assert set(received.rcpt_tos) == {"pki@example.com", "ops@example.com"}
    assert b"PRIVATE KEY" not in received.data and b"smime-type=enveloped-data" in received.data
    for index in (0, 1):
        assert opened(received.data, pki, index) == {
            "test.example.com.fullchain.pem": lineage.fullchain.read_bytes(),
            "test.example.com.key.pem": lineage.privkey.read_bytes()}
    lines = [json.loads(line) for line in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    [attempt] = [line for line in lines if line.get("event") == "attempt"]
    assert attempt["signed"] is True
    assert attempt["encrypted_to"] == [r.fingerprint for r in pki.recipients]
    assert denv.run("journal", "verify").returncode == 0


def test_a_dry_run_writes_the_final_encrypted_eml(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                  pki: SmimeFiles, tmp_path: Path) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"team": smime_target(relay, pki, smime_encryption="aes256-gcm")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run", "--output", str(tmp_path / "eml"))
    assert run.returncode == 0, run.stderr
    raw = (tmp_path / "eml" / "team.eml").read_bytes()
    assert b"smime-type=authEnveloped-data" in raw and b"PRIVATE KEY" not in raw
    assert opened(raw, pki, 1)["test.example.com.key.pem"] == lineage.privkey.read_bytes()
    assert relay.connections == 0


def test_an_expired_recipient_certificate_is_a_config_error_and_nothing_is_dialled(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, pki: SmimeFiles, tmp_path: Path) -> None:
    relay = relay_factory("plaintext")
    before, after = expired_window()
    old = tmp_path / "old.pem"
    old.write_bytes(issue_smime(pki.ca, "old@example.com", not_before=before, not_after=after).cert_pem())
    denv.write_config({"team": smime_target(relay, pki, smime_encrypt_to=[str(old)]),
                       "other": relay_target(relay, to=["b@example.com"])})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 78
    assert [(e["target"], e["key"]) for e in run.json["config_errors"]] == [("team", "smime_encrypt_to")]
    assert relay.connections == 0


def test_two_recipients_in_one_certificate_file_is_a_config_error_and_nothing_is_dialled(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, pki: SmimeFiles, tmp_path: Path) -> None:
    """Concatenated into one file, the second recipient's certificate was ignored: only the first could decrypt,
    while the operator believed both could. Refused (exit 78), keyed by target and key, saying what to do."""
    relay = relay_factory("plaintext")
    both = tmp_path / "team.pem"
    both.write_bytes(pki.recipient_certs[0].read_bytes() + pki.recipient_certs[1].read_bytes())
    denv.write_config({"team": smime_target(relay, pki, smime_encrypt_to=[str(both)]),
                       "other": relay_target(relay, to=["b@example.com"])})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 78, run.stderr
    [error] = run.json["config_errors"]
    assert (error["target"], error["key"]) == ("team", "smime_encrypt_to")
    assert f"{both} holds 2 certificates" in error["problem"] and "its own file" in error["problem"]
    assert "Traceback" not in run.stderr and relay.connections == 0


def test_retry_signs_and_encrypts_again_with_the_same_message_id(
        denv: DeployEnv, lineage: LineagePaths, relay_pki, pki: SmimeFiles, unused_port: int) -> None:
    from support.relay import Relay

    table = {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 3,
             "from_address": "certbot@example.com", "to": ["pki@example.com"], "payload": "pem_and_key",
             "smime_sign_cert": str(pki.signer_cert), "smime_sign_key": str(pki.signer_key),
             "smime_encrypt_to": [str(pki.recipient_certs[0])]}
    denv.write_config({"team": table})
    first = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert first.returncode == 75, first.stderr
    message_id = first.target("team")["message_id"]
    with Relay(relay_pki, mode="plaintext", port=unused_port) as relay:
        retry = denv.run("retry", "--json")
        assert retry.returncode == 0, retry.stderr
        [received] = relay.messages
    outer = email.message_from_bytes(received.data, policy=email.policy.default)
    assert outer["Message-ID"] == message_id and outer.get_content_type() == "application/pkcs7-mime"
    assert opened(received.data, pki, 0)["test.example.com.key.pem"] == lineage.privkey.read_bytes()
    lines = [json.loads(line) for line in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    attempts = [(a["outcome"], a["signed"], a["encrypted_to"]) for a in lines if a.get("event") == "attempt"]
    assert attempts[-1] == ("delivered", True, [pki.recipients[0].fingerprint])
    assert all(a[1:] == (True, [pki.recipients[0].fingerprint]) for a in attempts)


def test_an_uncertain_encrypted_delivery_is_re_encrypted_once_with_the_same_message_id(
        denv: DeployEnv, lineage: LineagePaths, fault_server, pki: SmimeFiles) -> None:
    """The final reply lost after the "." (RFC 5321 §4.1.1.4): `retry` signs and encrypts again (a new content
    key), keeps the Message-ID a recipient can recognise the copy by, and journals both attempts as protected."""
    from support.faultscript import CLOSE, Script

    server = fault_server(replies={"DATA_END": CLOSE})
    table = {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 3,
             "from_address": "certbot@example.com", "to": ["pki@example.com"], "payload": "pem_and_key",
             "smime_sign_cert": str(pki.signer_cert), "smime_sign_key": str(pki.signer_key),
             "smime_encrypt_to": [str(pki.recipient_certs[0])]}
    denv.write_config({"team": table})
    first = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert first.returncode == 75 and first.target("team")["status"] == "uncertain", first.stderr
    assert server.wait_idle()
    server.script = Script()  # the relay answers again
    retry = denv.run("retry", "--json")
    assert retry.returncode == 0, retry.stderr
    assert server.wait_idle()
    lost, again = server.data_ends
    ids = {str(email.message_from_bytes(c.data, policy=email.policy.default)["Message-ID"]) for c in (lost, again)}
    assert ids == {first.target("team")["message_id"]}
    assert lost.data != again.data  # encrypted afresh, not a stored copy
    for copy in (lost, again):
        assert b"PRIVATE KEY" not in copy.data
        assert opened(copy.data, pki, 0)["test.example.com.key.pem"] == lineage.privkey.read_bytes()
    lines = [json.loads(line) for line in (denv.state_dir / "journal.jsonl").read_text().splitlines()]
    attempts = [(a["outcome"], a["signed"], a["encrypted_to"]) for a in lines if a.get("event") == "attempt"]
    assert attempts == [("uncertain", True, [pki.recipients[0].fingerprint]),
                        ("delivered", True, [pki.recipients[0].fingerprint])]


def test_a_hung_openssl_costs_only_its_own_targets_budget(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                          pki: SmimeFiles, tmp_path: Path) -> None:
    """Messages are prepared one target after another before anything is sent, and each target's timeout counts
    from the run's start. An openssl that hangs (here one that sleeps on `cms`) may spend its own target's budget,
    not each target's anew: the S/MIME targets prepared after it fail at once (SMTP_PAYLOAD), and a plain target
    whose timeout outlasts the first still gets its mail (it waited 3 x 3 s, past its 8 s, before the fix)."""
    fake = tmp_path / "bin" / "openssl"
    fake.parent.mkdir(mode=0o700)
    real = shutil.which("openssl")
    assert real is not None
    fake.write_text(f'#!/bin/sh\nif [ "$1" = cms ]; then exec sleep 60; fi\nexec {real} "$@"\n')
    fake.chmod(0o700)
    relay = relay_factory("plaintext")
    hung = {f"s{i}": smime_target(relay, pki, smime_encryption="aes256-gcm", timeout=3) for i in range(3)}
    denv.write_config({**hung, "plain": relay_target(relay, timeout=8)})

    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json", extra_env={cms.OPENSSL_ENV: str(fake)})

    assert "Traceback" not in run.stderr, run.stderr
    assert run.target("plain")["status"] == "delivered", run.stdout
    assert [tuple(m.rcpt_tos) for m in relay.messages] == [("pki@example.com",)]
    for name in hung:
        assert run.target(name)["status"] == "failed" and run.target(name)["error_code"] == "SMTP_PAYLOAD"
    assert "took longer than" in run.target("s0")["detail"]
    assert all("ran out while the messages were prepared" in run.target(n)["detail"] for n in ("s1", "s2"))
