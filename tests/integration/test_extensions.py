"""The pluggy extension API, exercised by a real installed plugin found through its entry point."""

from __future__ import annotations

import email
import email.policy
import json
import os
import time
from pathlib import Path

from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths

PLUGIN = '''
import json, os
from certbot_smtp_dist.hookspecs import hookimpl
from certbot_smtp_dist.model import Attachment, PayloadFormat


def build_der(artefact, secret):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    leaf = x509.load_pem_x509_certificate(artefact.fullchain_pem)
    return (Attachment(artefact.facts.name + ".der", "application/pkix-cert", leaf.public_bytes(Encoding.DER)),)


@hookimpl
def smtp_dist_payload_formats():
    return [PayloadFormat("der", "the leaf certificate as DER", build_der)]


@hookimpl
def smtp_dist_delivery_finished(facts, result):
    with open(os.environ["OBSERVED"], "a") as out:
        out.write(json.dumps({"target": result.target, "status": result.status.value,
                              "fingerprint": facts.sha256_fingerprint}) + "\\n")
    raise RuntimeError("a broken observer must not change the outcome")
'''


def install_plugin(site: Path, module: str, source: str) -> dict[str, str]:
    """A minimal installed distribution (a module plus dist-info with the entry point) under `site`; returns the
    environment that makes a child process find it."""
    site.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[certbot_smtp_dist]\n{module} = {module}\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_plugin_payload_format_and_observer(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                            tmp_path: Path) -> None:
    from cryptography import x509

    env = install_plugin(tmp_path / "site", "smtp_dist_der", PLUGIN)
    observed = tmp_path / "observed.jsonl"
    relay = relay_factory("plaintext")
    denv.write_config({"der": relay_target(relay, payload="der"), "pem": relay_target(relay, to=["b@example.com"])})
    env["OBSERVED"] = str(observed)
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", extra_env=env)
    assert run.returncode == 0, run.stderr
    assert {t["target"]: t["status"] for t in run.json["targets"]} == {"der": "delivered", "pem": "delivered"}
    der_msg = next(m for m in relay.messages if "pki@example.com" in m.rcpt_tos)
    part = next(email.message_from_bytes(der_msg.data, policy=email.policy.default).iter_attachments())
    assert part.get_filename() == "test.example.com.der"
    assert x509.load_der_x509_certificate(part.get_payload(decode=True)) == lineage.leaf.cert
    seen = [json.loads(line) for line in observed.read_text().splitlines()]
    assert sorted(s["target"] for s in seen) == ["der", "pem"]
    assert {s["fingerprint"] for s in seen} == {lineage.leaf.fingerprint}
    assert "observer" in run.stderr and "failed" in run.stderr  # the broken observer is reported, not fatal


def test_unknown_format_without_the_plugin_is_a_config_error(denv: DeployEnv, lineage: LineagePaths,
                                                             relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"der": relay_target(relay, payload="der")})
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 78
    assert run.json["config_errors"][0]["key"] == "payload"
    assert relay.connections == 0


FLAKY_PLUGIN = '''
import json, os
from certbot_smtp_dist.errors import PayloadError
from certbot_smtp_dist.hookspecs import hookimpl
from certbot_smtp_dist.model import Attachment, PayloadFormat


def build(artefact, secret):
    if os.environ.get("FORMAT_BROKEN") == "1":
        raise PayloadError("the format's backend is unavailable")
    return (Attachment(artefact.facts.name + ".txt", "text/plain", b"ok"),)


@hookimpl
def smtp_dist_payload_formats():
    return [PayloadFormat("flaky", "fails while FORMAT_BROKEN=1", build)]


@hookimpl
def smtp_dist_delivery_finished(facts, result):
    with open(os.environ["OBSERVED"], "a") as out:
        out.write(json.dumps({"target": result.target, "status": result.status.value}) + "\\n")
'''


def test_failed_payload_is_kept_and_recovered_by_retry_include_failed(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site", "flaky_fmt", FLAKY_PLUGIN)
    observed = tmp_path / "observed.jsonl"
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay, payload="flaky")})
    env["OBSERVED"] = str(observed)

    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json",
                           extra_env={**env, "FORMAT_BROKEN": "1"})
    assert run.returncode == 69 and run.target("a")["error_code"] == "SMTP_PAYLOAD"
    assert denv.run_process("status", extra_env=env).returncode == 2
    assert denv.run_process("retry", extra_env=env).returncode == 69  # permanent: not retried, still failing
    assert relay.messages == []

    fixed = denv.run_process("retry", "--include-failed", "--json", extra_env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert [t["status"] for t in fixed.json["targets"]] == ["delivered"]
    assert len(relay.messages) == 1
    assert denv.run_process("status", extra_env=env).returncode == 0
    # The observer saw the failure (deploy) and the delivery (retry).
    seen = [json.loads(line)["status"] for line in observed.read_text().splitlines()]
    assert seen == ["failed", "delivered"]


SLOW_PLUGIN = '''
import time
from certbot_smtp_dist.hookspecs import hookimpl
from certbot_smtp_dist.model import Attachment, PayloadFormat


def build(artefact, secret):
    time.sleep(3.5)  # an expensive format (think: a slow HSM-backed signature)
    return (Attachment(artefact.facts.name + ".txt", "text/plain", b"slow"),)


@hookimpl
def smtp_dist_payload_formats():
    return [PayloadFormat("slow", "takes 3.5 s to build", build)]
'''


def test_payload_building_counts_against_the_timeout(denv: DeployEnv, lineage: LineagePaths, fault_server,
                                                     tmp_path: Path) -> None:
    """`timeout` bounds everything one run does for a target, so the ACME client never waits longer than it."""
    from support.faultscript import STALL

    env = install_plugin(tmp_path / "site", "slow_fmt", SLOW_PLUGIN)
    stalled = fault_server(replies={"greeting": STALL})
    denv.write_config({"a": {"host": "127.0.0.1", "port": stalled.port, "tls_mode": "plaintext", "timeout": 4,
                             "payload": "slow", "from_address": "c@example.com", "to": ["x@example.com"]}})
    began = time.monotonic()
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", extra_env=env)
    wall = time.monotonic() - began
    t = run.target("a")
    # Where the deadline lands in the 0.5 s left after building: waiting for the greeting (SMTP_TRANSIENT), or, on a
    # machine loaded enough to hold the process back that long, still connecting (SMTP_CONNECT). Either way a
    # retryable failure at the deadline, which is what this test is about.
    assert t["error_code"] in ("SMTP_TRANSIENT", "SMTP_CONNECT") and t["retryable"], t
    assert 4 - 0.1 <= t["duration_s"] <= 4 + 1.0
    # 3.5 s of building and the stalled relay end at the 4 s deadline, not 3.5 + 4 = 7.5 s later. The slack
    # covers interpreter start-up on a busy machine and stays well clear of 7.5 s.
    assert wall < 4 + 2.5, wall


MESSAGE_HOOK_PLUGIN = '''
import json, os
from dataclasses import replace
from certbot_smtp_dist.hookspecs import hookimpl


@hookimpl
def smtp_dist_message(target, facts, message):
    with open(os.environ["OBSERVED"], "a") as out:
        out.write(json.dumps({"target": target.name, "signed_before_me": message.signed}) + "\\n")
    if target.name == "broken":
        raise RuntimeError("the stamping service is down")
    return replace(message, data=b"X-Stamped: " + facts.sha256_fingerprint.encode() + b"\\r\\n" + message.data)
'''


def test_plugin_message_hook_runs_before_smime_and_a_raising_one_fails_only_its_target(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path) -> None:
    import subprocess

    from support.pki import write_smime

    pki = write_smime(tmp_path / "smime")
    env = install_plugin(tmp_path / "site", "smtp_dist_stamp", MESSAGE_HOOK_PLUGIN)
    observed = tmp_path / "observed.jsonl"
    env["OBSERVED"] = str(observed)
    relay = relay_factory("plaintext")
    denv.write_config({
        "stamped": relay_target(relay, to=["a@example.com"]),
        "signed": relay_target(relay, to=["b@example.com"], smime_sign_cert=str(pki.signer_cert),
                               smime_sign_key=str(pki.signer_key)),
        "broken": relay_target(relay, to=["c@example.com"]),
    })
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", extra_env=env)
    assert run.returncode == 69, run.stderr
    statuses = {t["target"]: (t["status"], t["error_code"]) for t in run.json["targets"]}
    assert statuses == {"stamped": ("delivered", None), "signed": ("delivered", None),
                        "broken": ("failed", "SMTP_PAYLOAD")}
    assert "smtp_dist_stamp failed (RuntimeError)" in run.target("broken")["detail"]
    assert "stamping service" not in run.stdout  # an extension's exception text is not shown
    by_rcpt = {m.rcpt_tos[0]: m.data for m in relay.messages}
    assert sorted(by_rcpt) == ["a@example.com", "b@example.com"]
    stamp = b"X-Stamped: " + lineage.leaf.fingerprint.encode()
    assert by_rcpt["a@example.com"].startswith(stamp)
    # The built-in S/MIME hook is trylast: the extension saw the message unsigned; its header stays outside the
    # signed body, which verifies.
    seen = {json.loads(line)["target"]: json.loads(line)["signed_before_me"] for line in observed.read_text().splitlines()}
    assert seen == {"stamped": False, "signed": False, "broken": False}
    signed = by_rcpt["b@example.com"]
    assert stamp in signed and b"multipart/signed" in signed
    verified = subprocess.run(["openssl", "cms", "-verify", "-CAfile", str(pki.ca_file)], input=signed,
                              capture_output=True, timeout=60, check=False)
    assert verified.returncode == 0, verified.stderr


SECRET_FORMAT_PLUGIN = '''
import hashlib
from certbot_smtp_dist.hookspecs import hookimpl
from certbot_smtp_dist.model import Attachment, PayloadFormat


def build(artefact, secret):
    # Proves the format got its own secret, without shipping it.
    digest = hashlib.sha256(secret.reveal().encode()).hexdigest().encode()
    return (Attachment(artefact.facts.name + ".token-check", "text/plain", digest),)


@hookimpl
def smtp_dist_payload_formats():
    return [PayloadFormat("vault", "checks a vault token", build, credential_type="vault_token",
                          credential_key="vault_token_credential")]
'''


def test_an_extension_format_declares_its_own_credential_key_and_type(
        denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path) -> None:
    """No change to the config parser or the credential store: the format's declaration is enough."""
    import hashlib

    env = install_plugin(tmp_path / "site", "smtp_dist_vault", SECRET_FORMAT_PLUGIN)
    relay = relay_factory("plaintext")
    denv.write_config({"v": relay_target(relay, payload="vault", vault_token_credential="tok",
                                         pkcs12_passphrase_credential="p12")})
    missing = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", extra_env=env)
    assert missing.returncode == 78
    [problem] = missing.json["config_errors"]
    assert problem["key"] == "vault_token_credential"
    assert "credentials set tok --type vault_token" in problem["problem"]
    assert relay.connections == 0

    token = "a-vault-token-of-some-length"
    stored = denv.run_process("credentials", "set", "tok", "--type", "vault_token", stdin=token + "\n", extra_env=env)
    assert stored.returncode == 0, stored.stderr
    refused = denv.run_process("credentials", "set", "x", "--type", "vault_tokn", stdin=token + "\n", extra_env=env)
    assert refused.returncode == 64 and "vault_token" in refused.stderr
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--json", extra_env=env)
    assert run.returncode == 0, run.stderr
    assert "pkcs12_passphrase_credential: is ignored: payload = 'vault' reads vault_token_credential" in run.stderr
    [received] = relay.messages
    part = next(email.message_from_bytes(received.data, policy=email.policy.default).iter_attachments())
    assert part.get_payload(decode=True) == hashlib.sha256(token.encode()).hexdigest().encode()
    assert token.encode() not in received.data
