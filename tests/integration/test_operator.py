"""The operator's first week: a dry run that validates all it can, versions, exit codes and structured logs."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
from support.deployenv import DeployEnv, Run, relay_target, to_toml
from support.faultscript import CLOSE
from support.pki import LineagePaths
from support.relay import Relay
from support.spellings import USER, encodings, leaks

from certbot_smtp_dist._internal import tlspolicy
from certbot_smtp_dist._internal.scrub import WITHHELD

PASSWORD = "pw-Op20-never-leaks"


def auth_target(port: int) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "auth_method": "plain",
            "username": USER, "password_credential": "relay", "from_address": "c@example.com",
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
    assert (f"master key {master} is open to group and others (mode 0644); it should be 0600; fix: chmod 600 {master}"
            in run.stderr)
    assert f"credential file {cred} is open to group (mode 0640); it should be 0600" in run.stderr
    assert PASSWORD not in run.stderr


def test_version_names_python_and_the_libraries(denv: DeployEnv) -> None:
    from importlib import metadata

    run = denv.run("--version")
    assert run.returncode == 0
    lines = run.stdout.splitlines()
    assert lines[0].startswith("certbot-smtp-dist ")
    assert any(line.startswith("Python 3.") for line in lines)
    assert not any(line.startswith("aiosmtplib") for line in lines)  # the SMTP client is our own (smtpwire)
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


@pytest.mark.parametrize(("relay_mode", "tls_mode", "hint", "within"), [
    # Probed after a bounded wait for the greeting, not abandoned at the deadline and spooled for days.
    ("smtps", "starttls", 'this port speaks implicit TLS; set tls_mode = "smtps"', WRONG_PORT_TIMEOUT - 2),
    # The relay greets at once: so is the hint.
    ("starttls", "smtps", 'this port speaks plaintext first; set tls_mode = "starttls"', WRONG_PORT_TIMEOUT / 2),
], ids=["starttls-on-implicit-tls-port", "smtps-on-starttls-port"])
def test_wrong_port_for_the_tls_mode_is_a_tls_error_with_its_hint(denv: DeployEnv, lineage: LineagePaths,
                                                                  relay_factory, relay_mode: str, tls_mode: str,
                                                                  hint: str, within: float) -> None:
    relay = relay_factory(relay_mode)
    denv.write_config({"t": wrong_port_target(relay, tls_mode)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("t")
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("failed", "SMTP_TLS", "tls", False)
    assert t["detail"].endswith(hint)
    assert t["attempts"] == 1 and run.returncode == 69
    assert t["duration_s"] < within
    assert relay.messages == []


def test_plaintext_on_an_implicit_tls_port_gets_the_same_hint(denv: DeployEnv, lineage: LineagePaths,
                                                              relay_factory) -> None:
    relay = relay_factory("smtps")
    denv.write_config({"t": wrong_port_target(relay, "plaintext")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.target("t")["detail"].endswith('this port speaks implicit TLS; set tls_mode = "smtps"')


@pytest.mark.parametrize("cert", ["wrong_host", "expired"])
def test_a_relay_that_speaks_tls_is_not_probed(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                               cert: str) -> None:
    relay = relay_factory("smtps", cert=cert)
    denv.write_config({"t": wrong_port_target(relay, "smtps")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    t = run.target("t")
    assert t["error_code"] == "SMTP_TLS" and "not trusted" in t["detail"]
    assert "this port speaks" not in t["detail"]
    # No probe: one connection per session. A refused chain (expired) is judged again under the whole system store
    # in a session of its own (TlsContexts.second_look); a host name mismatch is final at once.
    assert relay.connections == (2 if cert == "expired" and tlspolicy.lookup_differs() else 1)


# ---------------------------------------------------------------------------------------------- -v and -vv


def said(run: Run, target: str = "t") -> list[str]:
    """The transcript lines (client, server, notes) of one target, in order."""
    lines = [line.split(f"target {target}: ", 1)[1] for line in run.stderr.splitlines() if f"target {target}: " in line]
    return [line for line in lines if line.startswith(("C: ", "S: ", "*: "))]


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_vv_shows_the_conversation_without_secrets_or_body(denv: DeployEnv, lineage: LineagePaths,
                                                           relay_factory, mechanism: str) -> None:
    relay = relay_factory("starttls", auth=(USER, PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    # pem_and_key: the message carries the private key, which the transcript must never show.
    denv.write_config({"t": relay_target(relay, auth_method=mechanism, payload="pem_and_key")})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "-vv")
    assert run.returncode == 0, run.stderr
    assert len(relay.messages) == 1 and relay.auth_successes == 1
    transcript = said(run)
    assert transcript[0].startswith("S: 220 ")  # the greeting
    # DATA in its two steps (RFC 5321 §4.1.1.4): the command and its 354, the body by size only, the final reply.
    expected = ["C: EHLO", "C: STARTTLS", f"C: AUTH {mechanism.upper()} ***", "S: 235 ",
                "C: MAIL FROM:<certbot@example.com>", "C: RCPT TO:<pki@example.com>", "C: DATA", "S: 354 ",
                "C: <message body, ", "S: 250 ", "C: QUIT"]
    positions: list[int] = []
    for e in expected:  # each in turn, after the one before
        start = positions[-1] + 1 if positions else 0
        positions.append(next((i for i in range(start, len(transcript)) if transcript[i].startswith(e)), -1))
    assert -1 not in positions, (expected, positions, transcript)
    tls = next(line for line in transcript if line.startswith("*: TLS "))
    assert "TLSv1." in tls and "relay certificate subject: CN=" in tls
    data = positions[expected.index("C: DATA")]
    body = transcript[data + 2]
    size = re.fullmatch(r"C: <message body, (\d+) bytes>", body)
    assert size is not None, transcript
    rendered = re.search(r"target t: payload pem_and_key built, message rendered: (\d+) bytes", run.stderr)
    assert rendered is not None and size.group(1) == rendered.group(1)
    assert transcript[data + 3].startswith("S: 250 ")  # the final reply, right after the body
    # Every stage of -v is there too.
    for stage in ("loading config", "reading the certificate", "payload pem_and_key built", "dialling 127.0.0.1",
                  "connected; relay greeted", "TLS established", "authenticating with AUTH", "authenticated",
                  "sending the message", "t: delivered"):
        assert stage in run.stderr, stage
    assert leaks(PASSWORD, run.stderr + run.stdout) == []
    assert [line for line in key_lines(lineage) if line in run.stderr] == []
    # The message itself is left out: no header, no attachment, no key.
    for part in ("Subject:", "Content-Type", "BEGIN CERTIFICATE", "Message-ID: <", "BEGIN PRIVATE KEY"):
        assert part not in run.stderr, part
    assert [line for line in transcript if "PRIVATE KEY" in line] == []


def test_vv_scrubs_secrets_a_hostile_relay_echoes(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    echoed = [encodings(PASSWORD)[form] for form in ("b64-plain-blob", "plain", "hex", "percent")]
    echo = fault_server(auth_replies={"PLAIN": "535 5.7.8 bad credentials " + " ".join(echoed)})
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"t": auth_target(echo.port)})
    run = denv.run_process("deploy", "--lineage", str(lineage.live_dir), "-vv", "--log-format", "json")
    assert run.returncode == 69
    records = [json.loads(line) for line in run.stderr.splitlines()]
    transcript = [r["message"] for r in records if r["logger"] == "certbot_smtp_dist.transcript"]
    assert "target t: C: AUTH PLAIN ***" in transcript
    (refused,) = [line for line in transcript if line.startswith("target t: S: 535 ")]
    assert refused.startswith("target t: S: 535 5.7.8 bad credentials ") and refused.count("***") >= len(echoed)
    assert leaks(PASSWORD, run.stderr + run.stdout) == []


def test_vv_withholds_relay_text_while_a_secret_is_too_short(denv: DeployEnv, lineage: LineagePaths,
                                                             fault_server) -> None:
    # Masking a 5-character password would itself tell which characters it has (scrub.py): the transcript, like
    # every other place relay text goes, shows the reply codes and withholds the text.
    short = "a5b7c"
    echo = fault_server(auth_replies={"PLAIN": f"535 5.7.8 bad credentials {short}"})
    denv.set_credential("relay", "smtp_password", short)
    denv.write_config({"t": auth_target(echo.port)})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "-vv")
    assert run.returncode == 69
    transcript = said(run)
    server = [line for line in transcript if line.startswith("S: ")]
    assert [line[:7] for line in server[:1]] == ["S: 220 "] and any(line.startswith("S: 535 ") for line in server)
    assert all(line[7:] == WITHHELD for line in server), server
    assert "C: AUTH PLAIN ***" in transcript and any(line.startswith("C: EHLO ") for line in transcript)
    assert short not in run.stderr + run.stdout and leaks(short, run.stderr + run.stdout) == []


def test_vv_shows_a_final_reply_that_never_came(denv: DeployEnv, lineage: LineagePaths, fault_server) -> None:
    server = fault_server(replies={"DATA_END": CLOSE})
    denv.write_config({"t": {"host": "127.0.0.1", "port": server.port, "tls_mode": "plaintext", "timeout": 4,
                             "from_address": "c@example.com", "to": ["x@example.com"]}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "-vv", "--json")
    assert run.returncode == 75 and run.target("t")["status"] == "uncertain"
    transcript = said(run)
    data = transcript.index("C: DATA")
    assert transcript[data + 1].startswith("S: 354 ")
    assert re.fullmatch(r"C: <message body, \d+ bytes>", transcript[data + 2])
    assert transcript[data + 3].startswith("*: no reply ("), transcript


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


def test_deleting_a_credential_the_config_still_uses_warns_by_key(denv: DeployEnv) -> None:
    """Issue 20: deleting a credential a target still names gave no warning; the next renewal then failed."""
    denv.write_config({"relay2": {"host": "127.0.0.1", "tls_mode": "starttls", "auth_method": "plain",
                                  "username": "u@example.com", "password_credential": "relay",
                                  "from_address": "c@example.com", "to": ["x@example.com"]}},
                      defaults={"pkcs12_passphrase_credential": "relay"})
    denv.set_credential("relay", "smtp_password", "a-long-enough-password")
    denv.set_credential("other", "smtp_password", "another-long-password")

    used = denv.run("credentials", "delete", "relay")
    unused = denv.run("credentials", "delete", "other")

    assert used.returncode == 0 and unused.returncode == 0
    assert "targets.relay2.password_credential still names credential relay" in used.stderr
    assert "defaults.pkcs12_passphrase_credential still names credential relay" in used.stderr
    assert "warning" not in unused.stderr
