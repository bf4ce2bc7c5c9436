"""`certbot-smtp-dist check` against real relays on loopback: what it reports, and that it never sends mail."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from support.deployenv import DeployEnv, Run, relay_target, starttls_fault_target
from support.faultscript import STALL
from support.pki import LineagePaths, RelayPKI, relay_chain_certs, write_smime

PASSWORD = "correct horse battery staple"
# What a session that sends no mail may say (RFC 5321 §4.1.1): never MAIL, RCPT or DATA.
ALLOWED_VERBS = {"EHLO", "STARTTLS", "AUTH", "NOOP", "QUIT"}
ADDRESS_LITERAL = re.compile(r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9a-fA-F:.]+)\]")


def block(run: Run, name: str) -> str:
    """The human block of one target: from its verdict line to the next block."""
    text = run.stdout
    start = text.index(f"{name}: ")
    end = text.find("\n\n", start)
    return text[start:] if end < 0 else text[start:end]


def fault_target(server: Any, relay_pki: RelayPKI, **overrides: Any) -> dict[str, Any]:
    return starttls_fault_target(server, relay_pki.ca_file, **overrides)


def ehlo_names(server: Any) -> list[str]:
    return [line.split(" ", 1)[1] for direction, line in server.transcript
            if direction == "C" and line.upper().startswith("EHLO ")]


def test_healthy_relay_reports_tls_certificate_extensions_and_auth_and_sends_no_mail(
        denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check")

    assert run.returncode == 0, run.stdout + run.stderr
    text = block(run, "archive")
    assert text.startswith("archive: OK"), text
    assert re.search(r"TLS\s+TLSv1\.[23], \S+", text), text
    assert "verifies: yes; host name matches: yes" in text
    assert "issuer CN=certbot-smtp-dist test relay CA" in text
    assert re.search(r"before TLS .*STARTTLS", text) and re.search(r"after TLS .*AUTH LOGIN PLAIN", text), text
    assert "AUTH         accepted" in text
    assert "message size not checked: pass --lineage DIR" in text
    assert relay.auth_successes == 1
    assert relay.messages == []  # the relay never received a message


def test_the_relay_sees_no_mail_transaction_and_a_proper_ehlo_name(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), require_tls=True, credentials=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": fault_target(server, relay_pki, auth_method="plain", username="robot",
                                               password_credential="relay")})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    assert server.wait_idle()
    verbs = server.client_commands
    assert set(verbs) <= ALLOWED_VERBS, verbs
    assert verbs == ["EHLO", "STARTTLS", "EHLO", "AUTH", "NOOP", "QUIT"], verbs
    assert server.messages == [] and server.data_ends == []
    # RFC 5321 §4.1.1.1: a fully qualified domain name or an address literal, never a bare host name.
    names = ehlo_names(server)
    assert len(names) == 2 and names[0] == names[1]
    from certbot_smtp_dist._internal.greeting import is_fqdn

    assert is_fqdn(names[0]) or ADDRESS_LITERAL.fullmatch(names[0]), names
    assert run.target("archive")["helo_name"] == names[0]


def test_deploy_greets_with_an_fqdn_or_an_address_literal(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI, lineage: LineagePaths) -> None:
    server = fault_server(tls_context=relay_pki.server_context())
    denv.write_config({"archive": fault_target(server, relay_pki)})

    run = denv.run("deploy", "--lineage", str(lineage.live_dir))

    assert run.returncode == 0, run.stderr
    from certbot_smtp_dist._internal.greeting import is_fqdn

    names = ehlo_names(server)
    assert names and all(is_fqdn(n) or ADDRESS_LITERAL.fullmatch(n) for n in names), names
    assert "vm" not in names


def test_helo_name_is_honoured_by_check_and_deploy(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI, lineage: LineagePaths) -> None:
    server = fault_server(tls_context=relay_pki.server_context())
    denv.write_config({"archive": fault_target(server, relay_pki)}, defaults={"helo_name": "mail.example.org"})

    run = denv.run("check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "EHLO as mail.example.org" in block(run, "archive")
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    assert ehlo_names(server) == ["mail.example.org"] * 4


@pytest.mark.parametrize("value", ["vm", "bad_name.example", "[300.1.1.1]", "[::1]"])
def test_a_helo_name_that_is_no_fqdn_or_address_literal_is_a_config_error(
        denv: DeployEnv, relay_factory, value: str) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"archive": relay_target(relay, helo_name=value)})

    run = denv.run("check")

    assert run.returncode == 78
    assert "targets.archive.helo_name" in run.stdout + run.stderr
    assert relay.connections == 0


def test_missing_intermediate_is_named_and_a_full_chain_passes(
        denv: DeployEnv, relay_factory, tmp_path: Path) -> None:
    chained = relay_chain_certs(tmp_path / "chained")
    broken = relay_factory("starttls", tls_context=chained.leaf_only.server_context())
    whole = relay_factory("starttls", tls_context=chained.full_chain.server_context())
    denv.write_config({"broken": relay_target(broken, tls_ca_file=str(chained.root_file)),
                       "whole": relay_target(whole, tls_ca_file=str(chained.root_file))})

    run = denv.run("check")

    assert run.returncode == 69, run.stdout
    text = block(run, "broken")
    assert text.startswith("broken: FAILED SMTP_TLS in tls (not retryable)"), text
    assert "missing intermediate" in text and "CN=certbot-smtp-dist test intermediate" in text
    assert "verifies: no; host name matches: yes" in text
    assert block(run, "whole").startswith("whole: OK")
    assert "missing intermediate" not in block(run, "whole")
    assert broken.messages == [] and whole.messages == []


def test_host_name_mismatch(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("starttls", cert="wrong_host")
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 69
    doc = run.target("archive")
    assert doc["error_code"] == "SMTP_TLS" and doc["verdict"] == "failed"
    cert = doc["certificate"]
    assert cert["host_matches"] is False and cert["verified"] is False
    assert cert["sans"] == ["wrong.example.net"]
    assert any("'127.0.0.1' is not among the certificate's names" in p for p in cert["problems"])
    assert not any("missing intermediate" in p for p in cert["problems"])


def test_expired_relay_certificate(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("starttls", cert="expired")
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check")

    assert run.returncode == 69
    text = block(run, "archive")
    assert text.startswith("archive: FAILED SMTP_TLS"), text
    assert "the relay's certificate expired on" in text


def test_stripped_starttls_fails_and_never_continues_in_clear(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # A middlebox that removes STARTTLS from the EHLO reply (RFC 3207 §6): the relay still takes AUTH in clear.
    server = fault_server(advertise_starttls=False, ehlo_extensions=("AUTH PLAIN LOGIN", "SIZE 1000000"))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": fault_target(server, relay_pki, auth_method="plain", username="robot",
                                               password_credential="relay")})

    run = denv.run("check", "--json")

    assert run.returncode == 69
    doc = run.target("archive")
    assert doc["error_code"] == "SMTP_TLS" and doc["phase"] == "tls"
    assert "does not advertise STARTTLS" in doc["detail"]
    assert doc["tls"] is None and doc["certificate"] is None and doc["auth"] == "not_reached"
    assert server.wait_idle()
    assert "AUTH" not in server.client_commands and "STARTTLS" not in server.client_commands
    assert server.connections == 1  # no second, "diagnostic" session either


def test_auth_not_offered_fails_and_is_a_warning_with_no_auth(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=("SIZE 1000000", "8BITMIME"))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": fault_target(server, relay_pki, auth_method="plain", username="robot",
                                               password_credential="relay")})

    run = denv.run("check")
    assert run.returncode == 69
    assert block(run, "archive").startswith(
        "archive: FAILED SMTP_AUTH in auth (not retryable): relay does not offer AUTH PLAIN"), run.stdout

    quiet = denv.run("check", "--no-auth")
    assert quiet.returncode == 0, quiet.stdout
    text = block(quiet, "archive")
    assert text.startswith("archive: OK with 1 warning(s)")
    assert "warning      auth_method = plain, but the relay does not offer AUTH PLAIN" in text
    assert "AUTH         not attempted (--no-auth)" in text


def test_size_limit_below_the_next_email(denv: DeployEnv, fault_server, relay_pki: RelayPKI,
                                         lineage: LineagePaths) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=("SIZE 1000", "8BITMIME"))
    denv.write_config({"archive": fault_target(server, relay_pki)})

    run = denv.run("check", "--lineage", str(lineage.live_dir), "--json")

    assert run.returncode == 0, run.stdout
    doc = run.target("archive")
    assert doc["verdict"] == "warning" and doc["ehlo_after_tls"]["size_limit"] == 1000
    assert doc["message_size"] > 1000
    assert any("SIZE limit (1000 bytes) is below this target's next email" in w for w in doc["warnings"])
    # Without the lineage the size is not known, and the output says how to know it.
    plain = denv.run("check", "--json").target("archive")
    assert plain["verdict"] == "ok" and plain["message_size"] is None
    assert any("pass --lineage DIR" in n for n in plain["notes"])
    assert server.messages == []


def test_next_email_size_includes_the_message_hooks(denv: DeployEnv, fault_server, relay_pki: RelayPKI,
                                                    lineage: LineagePaths, tmp_path: Path) -> None:
    """The size compared with SIZE is the message as it would leave: S/MIME-encrypted (base64 of an enveloped
    structure holding the signed message) it is larger than the same email in clear."""
    server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=("SIZE 100000000",))
    smime = write_smime(tmp_path / "smime")
    denv.write_config({"clear": fault_target(server, relay_pki),
                       "sealed": fault_target(server, relay_pki, smime_sign_cert=str(smime.signer_cert),
                                              smime_sign_key=str(smime.signer_key),
                                              smime_encrypt_to=[str(smime.recipient_certs[0])])})

    run = denv.run("check", "--lineage", str(lineage.live_dir), "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    clear, sealed = run.target("clear")["message_size"], run.target("sealed")["message_size"]
    assert sealed > clear * 4 // 3, (clear, sealed)
    assert server.messages == []


def test_wrong_password_is_smtp_auth_69_and_prints_no_secret(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    wrong = "not the right password at all"
    denv.set_credential("relay", "smtp_password", wrong)
    denv.write_config({"archive": relay_target(relay)})

    for args in (("check",), ("check", "--json"), ("check", "-vv")):
        run = denv.run(*args)
        assert run.returncode == 69
        out = run.stdout + run.stderr
        assert "SMTP_AUTH" in out
        for spelling in (wrong, base64.b64encode(f"\0robot\0{wrong}".encode()).decode(),
                         base64.b64encode(wrong.encode()).decode()):
            assert spelling not in out
    assert relay.auth_failures == 3 and relay.auth_successes == 0
    assert relay.messages == []


def test_no_auth_attempts_no_auth(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", "a wrong password, never sent")
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check", "--no-auth", "--json")

    assert run.returncode == 0, run.stdout
    assert run.target("archive")["auth"] == "skipped"
    assert relay.auth_attempts == []


def test_plaintext_and_skip_verify_are_warned_about(denv: DeployEnv, relay_factory) -> None:
    plain = relay_factory("plaintext")
    unverified = relay_factory("starttls", cert="wrong_host")
    denv.write_config({"plain": relay_target(plain), "unverified": relay_target(unverified, tls_skip_verify=True)})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout
    assert any("tls_mode = plaintext" in w for w in run.target("plain")["warnings"])
    assert run.target("plain")["tls"] is None and run.target("plain")["ehlo_before_tls"] is not None
    skip = run.target("unverified")
    assert any("tls_skip_verify = true" in w for w in skip["warnings"])
    assert skip["certificate"]["verified"] is False and skip["tls"]["version"].startswith("TLSv1.")


def test_targets_are_checked_concurrently_each_within_its_timeout(
        denv: DeployEnv, fault_server, relay_factory, relay_pki: RelayPKI) -> None:
    stalled = fault_server(replies={"greeting": STALL})
    healthy = relay_factory("starttls")
    denv.write_config({"stalled": fault_target(stalled, relay_pki, timeout=2), "healthy": relay_target(healthy)})

    run = denv.run("check", "--json")

    assert run.returncode == 75  # the only failure is retryable
    assert run.target("stalled")["error_code"] in ("SMTP_TRANSIENT", "SMTP_TLS")
    assert run.target("healthy")["verdict"] == "ok"
    assert run.target("stalled")["duration_s"] < 2 + 5  # bounded by its own deadline, with generous slack


def test_json_document_schema(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("starttls", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": relay_target(relay)})

    doc = denv.run("check", "--json").json

    assert set(doc) == {"schema", "checked_at", "targets", "config_errors", "exit_status"}
    assert doc["schema"] == 1 and doc["exit_status"] == 0 and doc["config_errors"] == []
    [target] = doc["targets"]
    assert set(target) == {"target", "verdict", "host", "port", "tls_mode", "helo_name", "error_code", "retryable",
                           "phase", "smtp_code", "enhanced_status", "detail", "tls", "certificate",
                           "ehlo_before_tls", "ehlo_after_tls", "auth", "message_size", "warnings", "notes",
                           "duration_s"}
    assert set(target["tls"]) == {"version", "cipher"}
    assert set(target["certificate"]) == {"subject", "sans", "issuer", "not_after", "days_left", "verified",
                                          "host_matches", "problems", "sans_total"}
    assert target["certificate"]["sans_total"] == len(target["certificate"]["sans"])
    assert set(target["ehlo_after_tls"]) == {"size_limit", "auth", "pipelining", "8bitmime", "smtputf8",
                                             "requiretls", "enhancedstatuscodes", "starttls", "extensions"}
    assert target["ehlo_after_tls"]["auth"] == ["LOGIN", "PLAIN"]
    assert target["ehlo_before_tls"]["starttls"] is True and target["ehlo_after_tls"]["starttls"] is False
    assert target["auth"] == "accepted" and target["verdict"] == "ok"


def test_config_errors_are_one_json_document_and_78(denv: DeployEnv) -> None:
    denv.write_config({"archive": {"host": "127.0.0.1", "port": 0, "from_address": "a@example.com",
                                   "to": ["b@example.com"]}})

    run = denv.run("check", "--json")

    assert run.returncode == 78
    assert run.json["targets"] == [] and run.json["config_errors"][0]["key"] == "port"
    human = denv.run("check")
    assert human.returncode == 78 and human.stdout == ""
    assert "targets.archive.port: 0 is out of range 1..65535" in human.stderr


def test_unknown_target_is_a_usage_error(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"archive": relay_target(relay)})
    run = denv.run("check", "--target", "nope")
    assert run.returncode == 64 and "unknown target(s): nope" in run.stderr
    as_json = denv.run("check", "--target", "nope", "--json")
    assert as_json.returncode == 64 and "unknown target(s): nope" in as_json.json["usage_error"]
    assert relay.connections == 0


def test_an_unusable_lineage_is_65_and_nothing_is_dialled(denv: DeployEnv, relay_factory, tmp_path: Path) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"archive": relay_target(relay)})
    run = denv.run("check", "--lineage", str(tmp_path / "no-such-lineage"))
    assert run.returncode == 65 and "nothing was dialled" in run.stderr
    assert relay.connections == 0


def test_implicit_tls_relay(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("smtps", auth=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    doc = run.target("archive")
    assert doc["ehlo_before_tls"] is None and "PLAIN" in doc["ehlo_after_tls"]["auth"]
    assert doc["tls"]["version"].startswith("TLSv1.") and doc["certificate"]["verified"] is True
    assert ADDRESS_LITERAL.fullmatch(doc["helo_name"]) or "." in doc["helo_name"]
    assert doc["auth"] == "accepted" and relay.messages == []


def test_expired_implicit_tls_relay_is_diagnosed(denv: DeployEnv, relay_factory) -> None:
    relay = relay_factory("smtps", cert="expired")
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 69
    doc = run.target("archive")
    assert doc["error_code"] == "SMTP_TLS" and doc["tls"] is None
    assert any("expired on" in p for p in doc["certificate"]["problems"])


def test_a_relay_certificate_expiring_within_14_days_is_a_warning(
        denv: DeployEnv, relay_factory, relay_pki: RelayPKI, tmp_path: Path) -> None:
    import datetime as dt

    from support.pki import issue, server_context, utcnow, write_private

    soon = issue(relay_pki.ca, sans=("localhost",), ip_sans=("127.0.0.1",), not_after=utcnow() + dt.timedelta(days=5))
    cert_file, key_file = tmp_path / "soon.crt", tmp_path / "soon.key"
    cert_file.write_bytes(soon.cert_pem())
    write_private(key_file, soon.key_pem())
    relay = relay_factory("starttls", tls_context=server_context(cert_file, key_file))
    denv.write_config({"archive": relay_target(relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 0
    doc = run.target("archive")
    assert doc["verdict"] == "warning" and doc["certificate"]["verified"] is True
    assert 4 <= doc["certificate"]["days_left"] <= 5
    assert any("the relay's certificate expires in" in w for w in doc["warnings"]), doc["warnings"]


def test_the_plugin_check_names_each_target_that_cannot_work_and_skips_unwanted_ones(
        denv: DeployEnv, relay_factory, unused_port: int) -> None:
    from certbot_smtp_dist._internal.certbot_adapter import Options, SetupError, check_relays

    healthy, stripped, elsewhere = relay_factory("starttls"), relay_factory("starttls_not_offered"), \
        relay_factory("plaintext")
    denv.write_config({
        "healthy": relay_target(healthy),
        "stripped": relay_target(stripped),
        "down": {**relay_target(healthy), "port": unused_port, "timeout": 3},
        "elsewhere": relay_target(elsewhere, certificates=["*.elsewhere.example"]),
    })

    with pytest.raises(SetupError) as raised:
        check_relays(Options(denv.config), ("test.example.com",))

    assert "nothing was saved" in raised.value.headline
    assert [p.split(":", 1)[0] for p in raised.value.problems] == ["stripped", "down"]
    assert "FAILED SMTP_TLS" in raised.value.problems[0] and "FAILED SMTP_CONNECT" in raised.value.problems[1]
    assert elsewhere.connections == 0  # its `certificates` filter does not want this certificate
    check_relays(Options(denv.config, targets=("healthy",)), ("test.example.com",))  # a working target passes
    assert healthy.messages == []


def test_a_short_secret_withholds_relay_text_but_not_the_extensions_we_know(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    short = "pw123"
    server = fault_server(tls_context=relay_pki.server_context(), credentials=("robot", short),
                          ehlo_extensions=("SIZE 1000000", "AUTH PLAIN LOGIN", f"X-ECHO {short}"))
    denv.set_credential("relay", "smtp_password", short)
    denv.write_config({"archive": fault_target(server, relay_pki, auth_method="plain", username="robot",
                                               password_credential="relay")})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout
    after = run.target("archive")["ehlo_after_tls"]
    assert after["auth"] == ["PLAIN", "LOGIN"] and after["size_limit"] == 1000000
    withheld = "(relay text withheld: a secret of this run is too short to scrub safely)"
    assert after["extensions"][withheld] == withheld and "x-echo" not in after["extensions"]
    assert run.target("archive")["ehlo_before_tls"]["starttls"] is True
    assert short not in run.stdout + run.stderr


def test_reading_the_trust_anchors_for_a_refused_handshake_runs_off_the_event_loop(
        denv: DeployEnv, relay_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refused handshake reads the trust store's anchors and parses them (milliseconds per target): on the event
    loop, hundreds of failing targets would stall every other probe. The real diagnosis runs, in a thread where no
    event loop runs; the result is the same."""
    import asyncio
    import threading

    from certbot_smtp_dist._internal import check, relaycert

    relays = [relay_factory("starttls", cert="wrong_host") for _ in range(2)]
    denv.write_config({f"r{i}": relay_target(r) for i, r in enumerate(relays)})
    real, seen = relaycert.diagnose, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        seen.append((on_loop, threading.current_thread() is threading.main_thread()))
        return real(*args, **kwargs)

    monkeypatch.setattr(relaycert, "diagnose", spy)
    report = check.run(check.CheckRequest(denv.config, environ={}))

    assert seen and seen == [(False, False)] * len(relays), seen
    for target in report.checks:
        assert target.certificate is not None and target.certificate.host_matches is False
        assert any("is not among the certificate's names" in p for p in target.certificate.problems)
