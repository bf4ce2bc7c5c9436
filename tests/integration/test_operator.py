"""The operator's first week: a dry run that validates all it can, versions, exit codes and structured logs."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
from support.deployenv import DeployEnv, relay_target, to_toml
from support.pki import LineagePaths
from support.relay import Relay
from support.secretscan import leaks, spellings

PASSWORD = "pw-Op20-never-leaks"


def auth_target(port: int) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "auth_method": "plain",
            "username": "robot", "password_credential": "relay", "from_address": "c@example.com",
            "to": ["x@example.com"], "timeout": 3}


def test_dry_run_with_a_wrong_master_key_is_a_config_error(denv: DeployEnv, lineage: LineagePaths,
                                                            unused_port: int) -> None:
    denv.set_credential("relay", "smtp_password", PASSWORD)
    master = denv.config_dir / "master.key"
    master.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")  # another key: the stored secret will not open
    denv.write_config({"t": auth_target(unused_port)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run")
    assert run.returncode == 78
    assert ("targets.t.password_credential: credential 'relay' cannot be decrypted: wrong master key"
            in run.stderr)
    assert "Traceback" not in run.stderr


def test_dry_run_with_a_missing_master_key_is_a_config_error(denv: DeployEnv, lineage: LineagePaths,
                                                             unused_port: int) -> None:
    denv.set_credential("relay", "smtp_password", PASSWORD)
    (denv.config_dir / "master.key").unlink()
    denv.write_config({"t": auth_target(unused_port)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run")
    assert run.returncode == 78
    assert "master key" in run.stderr and "is missing" in run.stderr


def test_dry_run_reports_loose_modes_of_master_key_and_credential(denv: DeployEnv, lineage: LineagePaths,
                                                                  unused_port: int) -> None:
    denv.set_credential("relay", "smtp_password", PASSWORD)
    master = denv.config_dir / "master.key"
    cred = denv.config_dir / "credentials" / "relay.cred"
    master.chmod(0o644)
    cred.chmod(0o640)
    denv.write_config({"t": auth_target(unused_port)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert f"master key {master} has mode 0644; it should be 0600 (chmod 600 {master})" in run.stderr
    assert f"credential file {cred} has mode 0640" in run.stderr
    assert PASSWORD not in run.stderr


def test_version_names_python_and_the_libraries(denv: DeployEnv) -> None:
    from importlib import metadata

    run = denv.run("--version")
    assert run.returncode == 0
    lines = run.stdout.splitlines()
    assert lines[0].startswith("certbot-smtp-dist ")
    assert any(line.startswith("Python 3.") for line in lines)
    assert f"aiosmtplib {metadata.version('aiosmtplib')}" in lines
    assert f"cryptography {metadata.version('cryptography')}" in lines
    assert any(line.startswith("certbot ") for line in lines)


@pytest.mark.parametrize("argv", [("--help",), ("deploy", "--help")])
def test_help_lists_the_exit_codes(denv: DeployEnv, argv: tuple[str, ...]) -> None:
    run = denv.run(*argv)
    assert run.returncode == 0
    for code, meaning in (("0", "delivered"), ("64", "EX_USAGE"), ("65", "EX_DATAERR"), ("69", "EX_UNAVAILABLE"),
                          ("75", "EX_TEMPFAIL"), ("78", "EX_CONFIG")):
        assert any(line.split()[:1] == [code] and meaning in line for line in run.stdout.splitlines()), code


def test_json_log_lines_carry_structured_fields(denv: DeployEnv, lineage: LineagePaths, unused_port: int) -> None:
    denv.write_config({"down": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                                "from_address": "c@example.com", "to": ["x@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--log-format", "json")
    assert run.returncode == 75
    records = [json.loads(line) for line in run.stderr.splitlines()]
    (result,) = [r for r in records if r.get("status") == "failed"]
    assert (result["target"], result["phase"], result["code"]) == ("down", "connect", "SMTP_CONNECT")
    assert result["message_id"].startswith("<") and isinstance(result["duration"], float)
    assert result["level"] == "error" and result["message"].startswith("down: failed SMTP_CONNECT")


# ---------------------------------------------------------------------------------------------- wrong port for tls_mode

WRONG_PORT_TIMEOUT = 8  # a greeting is awaited for 2 s of it before the probe


def wrong_port_target(relay: Relay, tls_mode: str) -> dict[str, object]:
    return {**relay_target(relay), "tls_mode": tls_mode, "timeout": WRONG_PORT_TIMEOUT}


def test_starttls_on_an_implicit_tls_port_is_a_tls_error_with_its_hint(denv: DeployEnv, lineage: LineagePaths,
                                                                        relay_factory) -> None:
    relay = relay_factory("smtps")
    denv.write_config({"t": wrong_port_target(relay, "starttls")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("t")
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("failed", "SMTP_TLS", "tls", False)
    assert t["detail"].endswith('this port speaks implicit TLS; set tls_mode = "smtps"')
    assert t["attempts"] == 1 and run.returncode == 69
    # Probed after a bounded wait for the greeting, not abandoned at the deadline and spooled for days.
    assert t["duration_s"] < WRONG_PORT_TIMEOUT - 2
    assert relay.messages == []


def test_smtps_on_a_starttls_port_is_a_tls_error_with_its_hint(denv: DeployEnv, lineage: LineagePaths,
                                                                relay_factory) -> None:
    relay = relay_factory("starttls")
    denv.write_config({"t": wrong_port_target(relay, "smtps")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("t")
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("failed", "SMTP_TLS", "tls", False)
    assert t["detail"].endswith('this port speaks plaintext first; set tls_mode = "starttls"')
    assert t["attempts"] == 1 and run.returncode == 69
    assert t["duration_s"] < WRONG_PORT_TIMEOUT / 2  # the relay greets at once: so is the hint
    assert relay.messages == []


def test_plaintext_on_an_implicit_tls_port_gets_the_same_hint(denv: DeployEnv, lineage: LineagePaths,
                                                              relay_factory) -> None:
    relay = relay_factory("smtps")
    denv.write_config({"t": wrong_port_target(relay, "plaintext")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.target("t")["detail"].endswith('this port speaks implicit TLS; set tls_mode = "smtps"')


def test_a_relay_that_speaks_tls_is_not_probed(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("smtps", cert="expired")
    denv.write_config({"t": wrong_port_target(relay, "smtps")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("t")
    assert t["error_code"] == "SMTP_TLS" and "not trusted" in t["detail"]
    assert "this port speaks" not in t["detail"]
    assert relay.connections == 1


# ---------------------------------------------------------------------------------------------- -v and -vv


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_vv_shows_the_conversation_without_secrets_or_body(denv: DeployEnv, lineage: LineagePaths,
                                                           relay_factory, mechanism: str) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"t": relay_target(relay, auth_method=mechanism)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "-vv")
    assert run.returncode == 0, run.stderr
    assert len(relay.messages) == 1 and relay.auth_successes == 1
    lines = [line.split("target t: ", 1)[1] for line in run.stderr.splitlines() if "target t: " in line]
    said = [line for line in lines if line.startswith(("C: ", "S: ", "*: "))]
    assert said[0].startswith("S: 220 ")  # the greeting
    expected = ["C: EHLO", "C: STARTTLS", f"C: AUTH {mechanism.upper()} ***", "S: 235 ",
                "C: MAIL FROM:<certbot@example.com>", "C: RCPT TO:<pki@example.com>", "C: DATA", "C: QUIT"]
    positions = [next(i for i, line in enumerate(said) if line.startswith(e)) for e in expected]
    assert positions == sorted(positions), said
    tls = next(line for line in said if line.startswith("*: TLS "))
    assert "TLSv1." in tls and "relay certificate subject: CN=" in tls
    (data,) = [line for line in said if line.startswith("C: DATA")]
    assert re.fullmatch(r"C: DATA, then the message \(\d+ bytes, not shown\) and '\.'", data)
    # Every stage of -v is there too.
    for stage in ("loading config", "reading the certificate", "payload pem built", "dialling 127.0.0.1",
                  "connected; relay greeted", "TLS established", "authenticating with AUTH", "authenticated",
                  "sending the message", "t: delivered"):
        assert stage in run.stderr, stage
    found = leaks({"stderr": run.stderr, "stdout": run.stdout},
                  [*spellings(PASSWORD, "robot"), *key_lines(lineage)])
    assert found == []
    # The message itself is left out: no header, no attachment.
    for body in ("Subject:", "Content-Type", "BEGIN CERTIFICATE", "Message-ID: <"):
        assert body not in run.stderr, body


def test_vv_scrubs_secrets_a_hostile_relay_echoes(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    blob = spellings(PASSWORD, "robot")[2]
    echo = fault_server(auth_replies={"PLAIN": f"535 5.7.8 bad credentials {blob} {PASSWORD}"})
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"t": auth_target(echo.port)})
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "-vv", "--log-format", "json")
    assert run.returncode == 69
    records = [json.loads(line) for line in run.stderr.splitlines()]
    transcript = [r["message"] for r in records if r["logger"] == "certbot_smtp_dist.transcript"]
    assert "target t: C: AUTH PLAIN ***" in transcript
    assert "target t: S: 535 5.7.8 bad credentials *** ***" in transcript
    assert leaks({"stderr": run.stderr, "stdout": run.stdout}, spellings(PASSWORD, "robot")) == []


def test_v_shows_stages_but_no_transcript(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("starttls")
    denv.write_config({"t": relay_target(relay)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "-v")
    assert run.returncode == 0
    assert "target t: TLS established" in run.stderr and "target t: dialling" in run.stderr
    assert "C: " not in run.stderr and "S: 220" not in run.stderr
    quiet = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert "dialling" not in quiet.stderr and "loading config" not in quiet.stderr


def key_lines(lineage: LineagePaths) -> list[str]:
    return [line.decode() for line in lineage.privkey.read_bytes().splitlines()[1:-1]]


# ---------------------------------------------------------------------------------------------- hints on the command line


def test_missing_credential_hint_carries_the_config_given(denv: DeployEnv, lineage: LineagePaths,
                                                          unused_port: int) -> None:
    # $CERTBOT_SMTP_DIST_CONFIG still names denv's usual config: only --config leads to this one.
    elsewhere = denv.root / "other dir" / "config.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(to_toml({"relay2": {**auth_target(unused_port), "password_credential": "relay2"}}))
    run = denv.run("deploy", "--config", str(elsewhere), "--lineage", str(lineage.live_dir), "--dry-run")
    assert run.returncode == 78
    hint = f"run: certbot-smtp-dist credentials set relay2 --type smtp_password --config '{elsewhere}'"
    assert hint in run.stderr
    # Pasting the hint (without the quotes a shell removes) stores the secret where the deploy looks.
    stored = denv.run("credentials", "set", "relay2", "--type", "smtp_password", "--config", str(elsewhere),
                      stdin=PASSWORD)
    assert stored.returncode == 0
    assert denv.run("deploy", "--config", str(elsewhere), "--lineage", str(lineage.live_dir),
                    "--dry-run").returncode == 0


def test_validation_warnings_are_printed_by_a_dry_run(denv: DeployEnv, lineage: LineagePaths) -> None:
    denv.write_config({"t": {"host": "127.0.0.1", "port": 465, "tls_mode": "starttls", "payload": "pem",
                             "pkcs12_passphrase_credential": "p12", "from_address": "c@example.com",
                             "to": ["x@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--dry-run")
    assert run.returncode == 0
    warnings = [line for line in run.stderr.splitlines() if ": WARNING: config " in line]
    assert any("targets.t.port: port 465 speaks implicit TLS" in w for w in warnings), run.stderr
    assert any("targets.t.pkcs12_passphrase_credential: is ignored: payload = 'pem'" in w for w in warnings)
