"""`certbot-smtp-dist deploy` against real aiosmtpd relays on loopback: payloads, envelope, TLS, AUTH, failures."""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import stat
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
from support import ci
from support.deployenv import DeployEnv, relay_target
from support.faultscript import STALL
from support.pki import LineagePaths, not_after_utc, write_lineage

PASSWORD = "correct horse battery staple"
P12_PASS = "p12-Pass-phrase!"


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def attachments(msg: EmailMessage) -> dict[str, tuple[str, bytes, str]]:
    out = {}
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[part.get_filename() or ""] = (part.get_content_type(), payload, part["Content-Transfer-Encoding"])
    return out


def test_pem_ships_fullchain_and_never_the_key(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": relay_target(relay, subject_prefix="PROD", from_name="Cert robot")})

    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")

    assert run.returncode == 0, run.stderr
    assert run.target("archive")["status"] == "delivered"
    [received] = relay.messages
    assert received.tls and received.auth_user == "robot"
    msg = parse(received.data)
    atts = attachments(msg)
    assert list(atts) == ["test.example.com.fullchain.pem"]
    ctype, data, cte = atts["test.example.com.fullchain.pem"]
    assert ctype == "application/pem-certificate-chain" and cte == "base64"
    assert data == lineage.fullchain.read_bytes()
    assert b"PRIVATE KEY" not in received.data and b"PRIVATE KEY" not in data
    key_b64_line = lineage.privkey.read_bytes().splitlines()[1]
    assert key_b64_line not in received.data
    expires = not_after_utc(lineage.leaf.cert).strftime("%Y-%m-%d")
    assert msg["Subject"] == f"[PROD] Certificate for test.example.com issued, expires {expires}"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == run.target("archive")["message_id"]
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg["From"] == "Cert robot <certbot@example.com>"
    assert msg["Date"]
    body = msg.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    fp = lineage.leaf.fingerprint.upper()
    assert "www.test.example.com" in text
    assert ":".join(fp[i:i + 2] for i in range(0, len(fp), 2)) in text
    assert hashlib.sha256(data).hexdigest() in text
    assert run.json["certificate"]["sha256_fingerprint"] == lineage.leaf.fingerprint


def test_bcc_only_in_envelope(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"ops": relay_target(relay, to=["a@example.com"], cc=["c@mail.internal"],
                                           bcc=["hidden@corp.local", "root@localhost"])})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 0, run.stderr
    [received] = relay.messages
    assert received.mail_from == "certbot@example.com"
    assert set(received.rcpt_tos) == {"a@example.com", "c@mail.internal", "hidden@corp.local", "root@localhost"}
    msg = parse(received.data)
    assert msg["To"] == "a@example.com" and msg["Cc"] == "c@mail.internal"
    assert msg["Bcc"] is None
    assert b"hidden@corp.local" not in received.data and b"root@localhost" not in received.data


def test_pem_and_key_ships_key_with_loud_warning(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("smtps", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"ceremony": relay_target(relay, payload="pem_and_key", auth_method="login")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    assert "PRIVATE KEY" in run.stderr and "WARNING" in run.stderr
    [received] = relay.messages
    atts = attachments(parse(received.data))
    assert atts["test.example.com.key.pem"][1] == lineage.privkey.read_bytes()
    assert atts["test.example.com.fullchain.pem"][1] == lineage.fullchain.read_bytes()
    assert [a.mechanism.upper() for a in relay.auth_attempts] == ["LOGIN"]


def _need(tool: str) -> str:
    hints = {"openssl": "apt-get install openssl", "keytool": "apt-get install openjdk-17-jre-headless"}
    return ci.require_tool(tool, hints[tool])


def test_pkcs12_opens_with_openssl_and_keytool(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                               tmp_path: Path) -> None:
    relay = relay_factory("starttls")
    denv.set_credential("archive-p12", "smtp_pkcs12_passphrase", P12_PASS)
    denv.write_config({"vault": relay_target(relay, payload="pkcs12", pkcs12_passphrase_credential="archive-p12")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    [received] = relay.messages
    atts = attachments(parse(received.data))
    assert list(atts) == ["test.example.com.p12"]
    ctype, p12, cte = atts["test.example.com.p12"]
    assert ctype == "application/pkcs12" and cte == "base64"
    assert P12_PASS.encode() not in received.data
    p12_file = tmp_path / "bundle.p12"
    p12_file.write_bytes(p12)
    info = subprocess.run([_need("openssl"), "pkcs12", "-info", "-in", str(p12_file), "-passin", f"pass:{P12_PASS}",
                           "-nodes"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "MAC: sha256" in info.stderr
    assert "PBES2, PBKDF2, AES-256-CBC" in info.stderr and "hmacWithSHA256" in info.stderr
    assert "friendlyName: test.example.com" in info.stdout
    assert info.stdout.count("BEGIN CERTIFICATE") == 2 and "BEGIN PRIVATE KEY" in info.stdout
    wrong = subprocess.run([_need("openssl"), "pkcs12", "-info", "-in", str(p12_file), "-passin", "pass:wrong",
                            "-nokeys"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0
    keytool = subprocess.run([_need("keytool"), "-list", "-storetype", "PKCS12", "-keystore", str(p12_file),
                              "-storepass", P12_PASS], capture_output=True, text=True, timeout=120)
    assert keytool.returncode == 0, keytool.stdout + keytool.stderr
    assert "test.example.com, " in keytool.stdout and "PrivateKeyEntry" in keytool.stdout


def test_starttls_not_advertised_sends_nothing(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("starttls_not_offered")
    denv.write_config({"strict": relay_target(relay, tls_mode="starttls")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("strict")
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("failed", "SMTP_TLS", "tls", False)
    assert run.returncode == 69
    assert relay.messages == []


def test_wrong_password_costs_one_attempt(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", "not-the-password")
    denv.write_config({"archive": relay_target(relay)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("archive")
    assert (t["error_code"], t["phase"], t["smtp_code"], t["retryable"]) == ("SMTP_AUTH", "auth", 535, False)
    assert run.returncode == 69
    assert len(relay.auth_attempts) == 1 and not relay.auth_attempts[0].success
    assert relay.messages == []
    assert "not-the-password" not in run.stdout + run.stderr


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_untrusted_relay_certificate(denv: DeployEnv, lineage: LineagePaths, relay_factory, mode: str) -> None:
    relay = relay_factory(mode)
    table = relay_target(relay)
    del table["tls_ca_file"]
    denv.write_config({"relay": table})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("relay")
    assert (t["error_code"], t["phase"], t["retryable"]) == ("SMTP_TLS", "tls", False)
    assert "not trusted" in t["detail"]
    assert relay.messages == []
    # The same relay, trusted through tls_ca_file, delivers.
    denv.write_config({"relay": relay_target(relay)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    assert len(relay.messages) == 1


def test_wrong_host_and_expired_relay_certs_fail_tls(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    wrong, expired = relay_factory("starttls", cert="wrong_host"), relay_factory("smtps", cert="expired")
    denv.write_config({"wrong": relay_target(wrong), "expired": relay_target(expired)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.target("wrong")["error_code"] == "SMTP_TLS"
    assert run.target("expired")["error_code"] == "SMTP_TLS"
    assert "expired" in run.target("expired")["detail"]
    assert wrong.messages == [] and expired.messages == []


def test_skip_verify_is_explicit_and_warned(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("starttls", cert="wrong_host")
    table = relay_target(relay, tls_skip_verify=True)
    del table["tls_ca_file"]
    denv.write_config({"internal": table})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0, run.stderr
    assert "NOT verified" in run.stderr
    assert relay.messages[0].tls


def test_stalled_relay_abandoned_at_deadline_while_other_delivers(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, fault_server
) -> None:
    good = relay_factory("plaintext")
    stall = fault_server(replies={"greeting": STALL})
    denv.write_config({
        "good": relay_target(good),
        "stalled": {"host": "127.0.0.1", "port": stall.port, "tls_mode": "plaintext", "timeout": 2,
                    "from_address": "certbot@example.com", "to": ["x@example.com"]},
    })
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    s = run.target("stalled")
    assert (s["status"], s["error_code"], s["phase"], s["retryable"]) == ("failed", "SMTP_TRANSIENT", "connect", True)
    assert "deadline" in s["detail"]
    assert run.target("good")["status"] == "delivered" and len(good.messages) == 1
    assert run.target("good")["duration_s"] < s["duration_s"]
    # The stalled relay was waited for until its 2 s deadline, not abandoned early, and the deadline held
    # (1 s: event-loop scheduling latency on a busy two-core machine; 0.1 s: timers, millisecond rounding).
    assert 2 - 0.1 <= s["duration_s"] <= 2 + 1.0
    assert run.returncode == 75


def test_connection_refused_is_retryable(denv: DeployEnv, lineage: LineagePaths, unused_port: int) -> None:
    denv.write_config({"down": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 3,
                                "from_address": "certbot@example.com", "to": ["x@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("down")
    assert (t["error_code"], t["phase"], t["retryable"]) == ("SMTP_CONNECT", "connect", True)
    assert t["attempts"] >= 2  # retried within the run
    assert run.returncode == 75


@pytest.mark.parametrize(("reply", "code", "exit_status"), [
    ("550 5.1.1 No such user", "SMTP_PERMANENT", 69),
    ("450 4.2.1 Mailbox busy", "SMTP_TRANSIENT", 75),
])
def test_partial_refusal(denv: DeployEnv, lineage: LineagePaths, relay_factory, reply: str, code: str,
                         exit_status: int) -> None:
    relay = relay_factory("plaintext", reject={"gone@example.com": reply})
    denv.write_config({"list": relay_target(relay, to=["ok@example.com", "gone@example.com"])})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("list")
    assert t["status"] == "partial" and t["error_code"] == code
    refused = t["refused_recipients"]["gone@example.com"]
    assert refused["smtp_code"] == int(reply[:3]) and refused["enhanced_status"] == reply.split()[1]
    assert run.returncode == exit_status
    assert any(m.rcpt_tos == ("ok@example.com",) for m in relay.messages)
    assert "gone@example.com" in run.stderr


def test_bad_pem_dials_nothing(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("plaintext")
    broken = write_lineage(tmp_path / "live" / "broken", garbage=("fullchain.pem",))
    denv.write_config({"a": relay_target(relay), "b": relay_target(relay, to=["b@example.com"])})
    run = denv.run("deploy", "--lineage", str(broken.live_dir), "--json")
    assert run.returncode == 65
    assert [t["error_code"] for t in run.json["targets"]] == ["SMTP_PAYLOAD", "SMTP_PAYLOAD"]
    assert relay.connections == 0


@pytest.mark.parametrize("knob", ["expired", "key_mismatch", "bad_chain_signature"])
def test_unusable_artefact_dials_nothing(denv: DeployEnv, tmp_path: Path, relay_factory, knob: str) -> None:
    relay = relay_factory("plaintext")
    broken = write_lineage(tmp_path / "live" / "broken", **{knob: True})
    denv.write_config({"a": relay_target(relay)})
    run = denv.run("deploy", "--lineage", str(broken.live_dir), "--json")
    assert run.returncode == 65
    assert run.target("a")["error_code"] == "SMTP_PAYLOAD"
    assert {"expired": "expired", "key_mismatch": "does not match", "bad_chain_signature": "signature"}[knob] \
        in run.target("a")["detail"]
    assert relay.connections == 0


def test_only_the_targets_that_want_the_certificate_are_warned_about(denv: DeployEnv, lineage: LineagePaths,
                                                                      relay_factory) -> None:
    """The loud per-run warnings (key in clear, plaintext relay) name each target that wants this certificate, once,
    and never one whose `certificates` filter leaves it out (deploy tells them apart by name, not by comparing
    every target with every other)."""
    relay = relay_factory("plaintext")
    denv.write_config({
        "wants": relay_target(relay, payload="pem_and_key"),
        "elsewhere": relay_target(relay, payload="pem_and_key", certificates=["example.org"]),
        "also": relay_target(relay, payload="pem_and_key", certificates=["*.example.com"]),
    })
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 0, run.stderr
    for name in ("wants", "also"):
        assert run.stderr.count(f"target {name}: payload pem_and_key ships the PRIVATE KEY") == 1
        assert run.stderr.count(f"target {name}: tls_mode = plaintext") == 1
    assert "target elsewhere:" not in run.stderr
    assert [(t["target"], t["status"]) for t in run.json["targets"]] == [
        ("wants", "delivered"), ("elsewhere", "skipped"), ("also", "delivered")]


def test_filter_skips_and_target_selection(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({
        "match": relay_target(relay, certificates=["*.test.example.com"]),
        "other": relay_target(relay, certificates=["example.org"]),
        "unselected": relay_target(relay),
    })
    run = denv.run("deploy", "--target", "match", "--target", "other", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 0
    assert [(t["target"], t["status"]) for t in run.json["targets"]] == [("match", "delivered"), ("other", "skipped")]
    assert len(relay.messages) == 1
    assert denv.run("deploy", "--target", "nope", "--lineage", str(lineage.live_dir)).returncode == 64


def test_dry_run_renders_and_connects_to_nothing(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                 tmp_path: Path) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": relay_target(relay, bcc=["secret-bcc@example.com"])})
    out = tmp_path / "eml"
    run = denv.run("deploy", "--dry-run", "--output", str(out), "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 0, run.stderr
    assert run.target("archive")["status"] == "rendered"
    eml = out / "archive.eml"
    assert stat.S_IMODE(eml.stat().st_mode) == 0o600
    msg = parse(eml.read_bytes())
    assert msg["Message-ID"] == run.target("archive")["message_id"]
    assert b"secret-bcc@example.com" not in eml.read_bytes()
    assert relay.connections == 0


def test_global_options_after_subcommand_and_cold_process(denv: DeployEnv, lineage: LineagePaths,
                                                          relay_factory) -> None:
    relay = relay_factory("plaintext")
    other = denv.root / "other.toml"
    other.write_text(f'[targets.x]\nhost = "127.0.0.1"\nport = {relay.port}\ntls_mode = "plaintext"\n'
                     'from_address = "a@example.com"\nto = ["b@example.com"]\n')
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "--config", str(other), "--json")
    assert run.returncode == 0, run.stderr
    assert run.target("x")["status"] == "delivered"


def _loaded_by_deploy(denv: DeployEnv, lineage: LineagePaths, unwanted: str) -> subprocess.CompletedProcess[str]:
    """A cold process running `deploy`; exits 1 when it failed or loaded a module `unwanted` (a Python expression
    over a module's name `m`) names."""
    code = (
        "import sys; from certbot_smtp_dist._internal.cli import main; rc = main(['deploy', '--lineage', sys.argv[1]]);"
        f"bad = sorted(m for m in sys.modules if {unwanted});"
        "print(rc, bad); sys.exit(1 if bad or rc else 0)"
    )
    return subprocess.run([os.sys.executable, "-c", code, str(lineage.live_dir)], env=denv.env(),
                          capture_output=True, text=True, timeout=120)


def test_deploy_never_imports_certbot(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"x": relay_target(relay)})
    proc = _loaded_by_deploy(denv, lineage, "m.split('.')[0] in ('certbot', 'acme', 'josepy')")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(relay.messages) == 1


def test_deploy_imports_only_what_its_targets_need(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    """A cold `deploy` of a password (or no-auth) `pem` target loads neither the OAuth 2.0 client (urllib,
    http.client) nor the `check` use case, nor the extension walker a certificate whose extensions decode never
    needs (certext): the hook pays only for what its targets and its certificate use (issue 16)."""
    relay = relay_factory("plaintext")
    denv.write_config({"x": relay_target(relay)})
    unwanted = ("certbot_smtp_dist._internal.oauth2", "urllib.request", "http.client",
                "certbot_smtp_dist._internal.check", "certbot_smtp_dist._internal.cli_check",
                "certbot_smtp_dist._internal.cli_state", "certbot_smtp_dist._internal.cli_inspect",
                "certbot_smtp_dist._internal.certext")
    proc = _loaded_by_deploy(denv, lineage, f"m in {unwanted!r}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(relay.messages) == 1


def test_cold_deploy_leaves_unneeded_modules_unloaded(denv: DeployEnv, lineage: LineagePaths,
                                                     relay_factory) -> None:
    """The hook's own case, STARTTLS + AUTH `pem` delivered: none of the modules only another command, another
    payload, S/MIME, OAuth 2.0, `retry`, a prompt or a failure's hint uses is loaded (issue 16: each costs the cold
    start its import; the regression this guards is an eager import added back at the top of a module)."""
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"x": relay_target(relay)})
    unwanted = tuple(f"certbot_smtp_dist._internal.{m}" for m in (
        "certbot_adapter", "certext", "check", "cli_check", "cli_inspect", "cli_nagios", "cli_state", "cms", "drain",
        "history", "inspection", "manpage", "metrics", "nagios", "oauth2", "probe", "quiet", "relaycert",
        "smimecerts", "textfile", "x509strict")) + ("getpass", "shlex", "urllib.request", "http.client")
    proc = _loaded_by_deploy(denv, lineage, f"m in {unwanted!r}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [received] = relay.messages
    assert received.tls and received.auth_user == "robot"


def test_renewed_lineage_environment(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"x": relay_target(relay)})
    run = denv.run("deploy", "--json", extra_env={"RENEWED_LINEAGE": str(lineage.live_dir),
                                                   "RENEWED_DOMAINS": "test.example.com www.test.example.com"})
    assert run.returncode == 0, run.stderr
    assert run.json["certificate"]["name"] == "test.example.com"
    assert denv.run("deploy").returncode == 64  # nothing to ship: usage error


def test_hostile_certificate_names_cannot_inject_headers(denv: DeployEnv, tmp_path: Path, relay_factory) -> None:
    """A CN or SAN with CR/LF (attacker-influenced text) renders harmlessly instead of crashing or injecting."""
    relay = relay_factory("plaintext")
    hostile = write_lineage(tmp_path / "live" / "evil", names=("evil.example.com\r\nBcc: thief@example.net",
                                                                "ok.example.com"))
    denv.write_config({"a": relay_target(relay)})
    run = denv.run("deploy", "--lineage", str(hostile.live_dir), "--json")
    assert run.returncode == 0, run.stderr
    [received] = relay.messages
    assert received.rcpt_tos == ("pki@example.com",)
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc:") for line in head.split(b"\r\n"))


def test_usage_error_still_prints_json(denv: DeployEnv, relay_factory) -> None:
    denv.write_config({"a": relay_target(relay_factory("plaintext"))})
    run = denv.run("deploy", "--json")
    assert run.returncode == 64
    assert run.json["targets"] == [] and "no certificate given" in run.json["usage_error"]
