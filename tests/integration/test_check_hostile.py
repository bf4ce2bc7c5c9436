"""`check` against a hostile relay: what it prints stays bounded, printable and parseable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import ci
from support.deployenv import DeployEnv, relay_target, starttls_fault_target
from support.pki import LineagePaths, RelayPKI


def fault_target(server: Any, relay_pki: RelayPKI, **overrides: Any) -> dict[str, Any]:
    return starttls_fault_target(server, relay_pki.ca_file, **overrides)


def test_a_size_parameter_of_unicode_digits_is_no_number(denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # RFC 1870 §4: 1*20DIGIT, ASCII. "²" passes str.isdigit() but not int(); "١٢" is read by int() as 12.
    for size in ("\u00b2", "\u0661\u0662"):
        server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=(f"SIZE {size}", "8BITMIME"))
        denv.write_config({"archive": fault_target(server, relay_pki)})

        run = denv.run("check", "--json")

        assert run.returncode == 0, run.stdout + run.stderr
        assert run.target("archive")["ehlo_after_tls"]["size_limit"] == 0  # no number: no limit we can compare
        human = denv.run("check")
        assert human.returncode == 0 and "SIZE (no limit)" in human.stdout, human.stdout + human.stderr


def test_thousands_of_ehlo_lines_are_bounded_and_escapes_made_printable(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # Under the client's 32 KiB bound on a reply (smtpwire.MAX_REPLY): 2500 keywords, one with an ANSI escape and a bell.
    server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=(
        "SIZE 1000", "AUTH " + " ".join(f"M{i}" for i in range(100)), "\x1b[31mRED\x1b[0m x\x07y",
        *(f"X{i} v" for i in range(2500)), "PIPELINING"))
    denv.write_config({"archive": fault_target(server, relay_pki)})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    after = run.target("archive")["ehlo_after_tls"]
    assert after["size_limit"] == 1000 and after["pipelining"] is True  # what a delivery cares about, all kept
    assert len(after["extensions"]) <= 40 and len(after["auth"]) <= 20
    assert "\x1b" not in run.stdout and "\\u001b" not in run.stdout and "\x07" not in run.stdout
    assert any("EHLO reply is long" in n for n in run.target("archive")["notes"])
    human = denv.run("check")
    assert human.returncode == 0 and len(human.stdout) < 4000, human.stdout
    assert "\x1b" not in human.stdout and "PIPELINING" in human.stdout
    assert all(c.isprintable() for line in human.stdout.splitlines() for c in line)


def test_a_refused_ehlo_still_shows_the_name_it_refused(denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # Relays that enforce RFC 5321 §4.1.1.1 refuse the greeting itself: the name is what the operator needs to see.
    server = fault_server(tls_context=relay_pki.server_context(),
                          replies={"EHLO": "550 5.7.1 Helo command rejected: need fully-qualified hostname"})
    denv.write_config({"archive": fault_target(server, relay_pki, helo_name="mail.example.com")})

    run = denv.run("check", "--json")

    assert run.returncode == 69, run.stdout + run.stderr
    assert run.target("archive")["helo_name"] == "mail.example.com"
    denv.write_config({"archive": fault_target(server, relay_pki)})
    text = denv.run("check").stdout
    assert "EHLO as (not sent)" not in text and "EHLO as " in text, text
    assert "need fully-qualified hostname" in text


PASSWORD = "correct horse battery staple"


def test_relay_text_in_a_failure_is_one_printable_line_without_the_password(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    import base64

    echo = base64.b64encode(b"\0robot\0" + PASSWORD.encode()).decode()
    server = fault_server(tls_context=relay_pki.server_context(), auth_replies={"PLAIN": (
        f"535-5.7.8 \x1b[2J\x1b[31mforged\x07 {echo}\n535-5.7.8 {PASSWORD.upper()}\n535 5.7.8 {PASSWORD.encode().hex()}")})
    denv.set_credential("relay", "smtp_password", PASSWORD)
    denv.write_config({"archive": fault_target(server, relay_pki, auth_method="plain", username="robot",
                                               password_credential="relay")})

    for args in (("check",), ("check", "--json")):
        run = denv.run(*args)
        assert run.returncode == 69, run.stdout + run.stderr
        out = run.stdout + run.stderr
        assert "\x1b" not in out and "\x07" not in out and "\\u001b" not in out, out
        assert echo not in out and PASSWORD.upper() not in out.upper() and PASSWORD.encode().hex() not in out
        assert "forged" in out
    text = denv.run("check").stdout
    assert len([line for line in text.splitlines() if "forged" in line]) == 1


def test_a_relay_that_stalls_at_any_step_costs_its_own_timeout_only(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI, relay_factory) -> None:
    from support.faultscript import STALL, Reply

    stalls = {"banner": {"greeting": STALL}, "ehlo": {"EHLO": STALL}, "starttls": {"STARTTLS": STALL},
              "handshake": {"STARTTLS": Reply.text("220 2.0.0 Ready to start TLS", then="stall")},
              "auth": {"AUTH": STALL}, "noop": {"NOOP": STALL}}
    denv.set_credential("relay", "smtp_password", PASSWORD)
    auth = {"auth_method": "plain", "username": "robot", "password_credential": "relay"}
    targets = {name: fault_target(fault_server(tls_context=relay_pki.server_context(), replies=replies), relay_pki,
                                  timeout=3, **auth)
               for name, replies in stalls.items()}
    # smtps to a port that never answers our ClientHello: the handshake itself stalls.
    silent = fault_server(replies={"greeting": STALL})
    targets["smtps-handshake"] = fault_target(silent, relay_pki, tls_mode="smtps", timeout=3, **auth)
    denv.write_config({**targets, "healthy": fault_target(fault_server(tls_context=relay_pki.server_context()),
                                                          relay_pki, **auth)})

    run = denv.run("check", "--json")

    assert run.target("healthy")["verdict"] == "ok", run.stdout
    for name in [*stalls, "smtps-handshake"]:
        doc = run.target(name)
        assert doc["verdict"] == "failed", (name, doc)
        assert doc["duration_s"] < 3 + 5, (name, doc)  # its own deadline, with generous slack
    assert run.json["exit_status"] in (69, 75)


def test_the_unverified_look_at_a_refused_certificate_sends_nothing_after_the_handshake(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    server = fault_server(tls_context=relay_pki.server_context("wrong_host"), credentials=("robot", PASSWORD))
    smtps = fault_server(tls_context=relay_pki.server_context("expired"), tls_on_connect=True,
                         credentials=("robot", PASSWORD))
    denv.set_credential("relay", "smtp_password", PASSWORD)
    auth = {"auth_method": "plain", "username": "robot", "password_credential": "relay"}
    denv.write_config({"archive": fault_target(server, relay_pki, **auth),
                       "implicit": fault_target(smtps, relay_pki, tls_mode="smtps", **auth)})

    run = denv.run("check", "--json")

    assert run.returncode == 69, run.stdout
    assert run.target("archive")["certificate"]["host_matches"] is False
    assert run.target("implicit")["certificate"] is not None
    assert server.wait_idle() and smtps.wait_idle()
    # STARTTLS: the delivery's session, then the look, which ends at the handshake (QUIT, RFC 5321 §4.1.1.10).
    assert server.connections == 2
    look = [line.split(" ", 1)[0].upper() for d, line in server.transcript_of(2) if d == "C" and line]
    assert look == ["EHLO", "STARTTLS", "QUIT"], look  # nothing before QUIT on an unverified channel
    # smtps: the refused handshake never reaches the server's session; the look says QUIT at most.
    assert set(smtps.client_commands) <= {"QUIT"}, smtps.transcript
    assert server.auth_attempts == [] and smtps.auth_attempts == []


# ------------------------------------------------------------------------------- the certbot plugin's relay check


def _plugin(denv: DeployEnv, verb: str, installer: str | None = "smtp-dist", certname: str | None = None,
            domains: tuple[str, ...] = ("a.example",)) -> Any:
    from types import SimpleNamespace

    from certbot_smtp_dist.certbot_plugin import Installer

    namespace = SimpleNamespace(smtp_dist_config=str(denv.config), smtp_dist_targets=None, verb=verb, dry_run=False,
                                backup_dir=str(denv.config.parent / "backups"), strict_permissions=False,
                                live_dir=str(denv.config.parent / "live"), certname=certname, domains=list(domains),
                                installer=installer, configurator=None, disable_renew_updates=False)
    return Installer(namespace, "smtp-dist")


@pytest.mark.parametrize("verb", ["renew", "certonly", "install", "run", "reconfigure"])
def test_the_plugin_checks_relays_in_its_interactive_verbs_only(
        denv: DeployEnv, relay_factory, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    from certbot import errors

    ci.require_module("certbot", "pip install certbot, or apt-get install python3-certbot")
    monkeypatch.setenv("CERTBOT_SMTP_DIST_STATE_DIR", str(denv.state_dir))
    stripped = relay_factory("starttls_not_offered")
    denv.write_config({"stripped": relay_target(stripped)})
    plugin = _plugin(denv, verb)  # certbot's Installer makes its backup directory here

    def files() -> list[Path]:
        return sorted(p for root in (denv.config.parent, denv.state_dir) if root.exists() for p in root.rglob("*"))

    before = files()

    if verb in ("install", "run", "reconfigure"):
        with pytest.raises(errors.Error, match="stripped: FAILED SMTP_TLS"):
            plugin.prepare()
        assert stripped.connections == 1
    else:
        plugin.prepare()  # renew: never raises, never dials; certonly: no installer to set up
        assert stripped.connections == 0
    assert stripped.messages == []
    assert files() == before  # a failed check leaves nothing behind


def test_the_plugin_offered_in_a_menu_dials_nothing(denv: DeployEnv, relay_factory,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ci.require_module("certbot", "pip install certbot, or apt-get install python3-certbot")
    monkeypatch.setenv("CERTBOT_SMTP_DIST_STATE_DIR", str(denv.state_dir))
    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    _plugin(denv, "install", installer=None).prepare()  # certbot prepares every installer to list them
    assert relay.connections == 0


def test_plaintext_sent_with_the_starttls_reply_is_never_read_as_the_encrypted_sessions(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    """STARTTLS response injection (CVE-2011-0411's class): a man in the middle appends to the relay's 220, in
    clear, the replies the client will read after the handshake. RFC 3207 §4.2: nothing from before TLS counts;
    The client drops such bytes (smtpwire.forget_plaintext); 0.1.0 on Debian's aiosmtplib 2.0 read them as the reply to
    the EHLO inside TLS."""
    from support.faultscript import Reply

    server = fault_server(tls_context=relay_pki.server_context(), replies={"STARTTLS": Reply.text(
        "220 2.0.0 Ready to start TLS", "250-injected.example", "250 AUTH XINJECTED", "220 2.0.0 injected too")})
    denv.write_config({"archive": fault_target(server, relay_pki)})

    run = denv.run("check", "--json")

    after = run.target("archive")["ehlo_after_tls"]
    assert after is not None and "XINJECTED" not in after["auth"], after
    assert run.returncode == 0, run.stdout


def test_injected_plaintext_cannot_make_a_refused_delivery_look_accepted(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI, lineage: LineagePaths) -> None:
    """The same injection against deploy: the relay (requiring AUTH) refuses MAIL inside TLS, while the man in the
    middle has appended a whole accepted transaction to the STARTTLS reply."""
    from support.faultscript import Reply

    forged = ("250-injected.example", "250 8BITMIME", "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with .",
              "250 2.0.0 Ok: queued as FORGED")
    server = fault_server(tls_context=relay_pki.server_context(), require_auth=True, replies={
        "STARTTLS": Reply.text("220 2.0.0 Ready to start TLS", *forged, "220 2.0.0 injected too")})
    denv.write_config({"archive": fault_target(server, relay_pki)})

    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")

    assert run.target("archive")["status"] == "failed", run.stdout
    assert run.target("archive")["smtp_code"] == 530
    assert server.messages == []


@pytest.mark.parametrize("fault", ["wrong_host", "expired"])
def test_a_refusal_explained_otherwise_names_no_missing_intermediate(
        denv: DeployEnv, fault_server, tmp_path: Path, fault: str) -> None:
    """Before Python 3.13 the look sees the leaf only: a missing intermediate is a guess, made only when nothing
    else explains the refusal. Here the relay sends its whole chain; the host name, or the date, is the fault."""
    import datetime as dt

    from support import pki

    root = pki.make_ca("hostile-test chained root")
    intermediate = pki.issue(root, common_name="hostile-test intermediate", is_ca=True)
    if fault == "wrong_host":
        leaf = pki.issue(intermediate, sans=("wrong.example.net",))
    else:
        now = dt.datetime.now(dt.timezone.utc)
        leaf = pki.issue(intermediate, sans=("localhost",), ip_sans=("127.0.0.1",),
                         not_before=now - dt.timedelta(days=90), not_after=now - dt.timedelta(days=1))
    (tmp_path / "root.pem").write_bytes(root.cert_pem())
    (tmp_path / "chain.crt").write_bytes(leaf.cert_pem() + intermediate.cert_pem())
    pki.write_private(tmp_path / "leaf.key", leaf.key_pem())
    server = fault_server(tls_context=pki.server_context(tmp_path / "chain.crt", tmp_path / "leaf.key"))
    denv.write_config({"archive": {"host": "127.0.0.1", "port": server.port, "tls_mode": "starttls",
                                   "tls_ca_file": str(tmp_path / "root.pem"), "from_address": "certbot@example.com",
                                   "to": ["pki@example.com"], "timeout": 10}})

    run = denv.run("check", "--json")

    assert run.returncode == 69, run.stdout
    problems = run.target("archive")["certificate"]["problems"]
    assert any(("not among the certificate's names" if fault == "wrong_host" else "expired on") in p
               for p in problems), problems
    assert not any("missing intermediate" in p for p in problems), problems


def test_json_is_one_document_also_when_the_config_is_not_safe_to_trust(denv: DeployEnv, relay_factory) -> None:
    import json
    import os

    relay = relay_factory("starttls")
    denv.write_config({"archive": relay_target(relay)})
    os.chmod(denv.config, 0o666)  # writable by anyone: refused before it is read

    run = denv.run("check", "--json")

    assert run.returncode == 77, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    assert doc["targets"] == [] and "refusing to trust" in doc["path_error"], doc
    assert relay.connections == 0


def test_a_hostile_relay_certificate_stays_inside_its_lines(denv: DeployEnv, fault_server, tmp_path: Path) -> None:
    """Subject and SANs with line breaks and terminal escapes, and 1000 SANs: the look at a certificate that did
    not verify prints it bounded, one printable line per item; the JSON parses."""
    from support import pki

    ca = pki.make_ca("hostile-test CA")
    evil = "\r\nX-Injected: 1\x1b[2J\x1b]0;title\x07"
    leaf = pki.issue(ca, common_name=f"relay{evil}", sans=(f"a{evil}.example", *(f"n{i}.example" for i in range(1000))))
    (tmp_path / "leaf.crt").write_bytes(leaf.cert_pem())
    pki.write_private(tmp_path / "leaf.key", leaf.key_pem())
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    server = fault_server(tls_context=pki.server_context(tmp_path / "leaf.crt", tmp_path / "leaf.key"))
    denv.write_config({"archive": {"host": "127.0.0.1", "port": server.port, "tls_mode": "starttls",
                                   "tls_ca_file": str(tmp_path / "ca.pem"), "from_address": "certbot@example.com",
                                   "to": ["pki@example.com"], "timeout": 10}})

    run = denv.run("check", "--json")
    cert = run.target("archive")["certificate"]
    assert cert["host_matches"] is False and len(cert["sans"]) <= 100
    assert all(len(p) <= 1200 for p in cert["problems"])
    human = denv.run("check")
    assert human.returncode == 69
    for out in (run.stdout, human.stdout):
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\\u001b" not in out
    assert not any(line.startswith("X-Injected") for line in human.stdout.splitlines())
    assert all(c.isprintable() for line in human.stdout.splitlines() for c in line)


def test_a_refused_noop_says_that_no_mail_was_sent(denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # The probe's NOOP stands where a delivery's MAIL would: its failure carries phase "mail", as deploy's would.
    server = fault_server(tls_context=relay_pki.server_context(), replies={"NOOP": "421 4.3.2 Service shutting down"})
    denv.write_config({"archive": fault_target(server, relay_pki)})

    run = denv.run("check")

    assert run.returncode == 75, run.stdout
    assert "in mail" in run.stdout and "at NOOP" in run.stdout and "no MAIL was sent" in run.stdout, run.stdout
    assert "MAIL" not in server.client_commands


def test_a_helo_name_written_with_the_root_dot_is_greeted_without_it(
        denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # RFC 5321 §4.1.2: Domain = sub-domain *("." sub-domain); the DNS root's trailing dot is no part of it.
    server = fault_server(tls_context=relay_pki.server_context())
    denv.write_config({"archive": fault_target(server, relay_pki, helo_name="mail.example.com.")})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.target("archive")["helo_name"] == "mail.example.com"
    assert server.wait_idle()
    assert [line for d, line in server.transcript if d == "C" and line.upper().startswith("EHLO")] == \
        ["EHLO mail.example.com"] * 2


def _odd_relay_cert(ca: Any, key: Any) -> bytes:
    """A relay certificate whose subject holds a PrintableString with a line break and an escape (X.680 forbids
    both there): OpenSSL serves it, cryptography 38 reads it as is, later versions refuse to read it at all.
    Built with a UTF8String, whose tag is then edited in place (same length)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now, odd = dt.datetime.now(dt.timezone.utc), "a\nX-Injected: 1\x1b[2J"
    der = (x509.CertificateBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, odd)]))
           .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("wrong.example.net"),
                                                       x509.IPAddress(ipaddress.ip_address("192.0.2.1"))]),
                          critical=False)
           .sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    value = odd.encode()
    edited = der.replace(b"\x0c" + bytes([len(value)]) + value, b"\x13" + bytes([len(value)]) + value, 1)
    assert edited != der
    return edited


def test_a_relay_certificate_with_a_forbidden_string_is_no_traceback(
        denv: DeployEnv, fault_server, tmp_path: Path) -> None:
    import ssl

    from support import pki

    ca = pki.make_ca("odd-test CA")
    key = pki.new_key("ec")
    (tmp_path / "leaf.crt").write_text(ssl.DER_cert_to_PEM_cert(_odd_relay_cert(ca, key)))
    pki.write_private(tmp_path / "leaf.key", pki.key_pem(key))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    server = fault_server(tls_context=pki.server_context(tmp_path / "leaf.crt", tmp_path / "leaf.key"))
    denv.write_config({"odd": {"host": "127.0.0.1", "port": server.port, "tls_mode": "starttls",
                               "tls_ca_file": str(tmp_path / "ca.pem"), "from_address": "certbot@example.com",
                               "to": ["pki@example.com"], "timeout": 10}})

    for args in (("check", "--json"), ("check",)):
        run = denv.run(*args)
        assert "Traceback" not in run.stderr and run.returncode == 69, run.stdout + run.stderr  # wrong host name
        assert "\x1b" not in run.stdout and "\\u001b" not in run.stdout
        assert not any(line.startswith("X-Injected") for line in run.stdout.splitlines())


@pytest.mark.parametrize("verb", ["install", "reconfigure"])
def test_the_plugin_checks_the_targets_that_want_the_certificate_by_its_names_not_only_its_lineage_name(
        denv: DeployEnv, relay_factory, monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    """`--cert-name test.example.com-0001` and no -d: the targets whose filter names the certificate's SANs are
    the ones every renewal will ship to, so they are the ones checked."""
    from certbot import errors
    from support import pki

    ci.require_module("certbot", "pip install certbot, or apt-get install python3-certbot")
    monkeypatch.setenv("CERTBOT_SMTP_DIST_STATE_DIR", str(denv.state_dir))
    pki.write_lineage(denv.config.parent / "live" / "test.example.com-0001", names=("test.example.com",))
    stripped = relay_factory("starttls_not_offered")
    denv.write_config({"stripped": relay_target(stripped, certificates=["test.example.com"])})

    with pytest.raises(errors.Error, match="stripped: FAILED SMTP_TLS"):
        _plugin(denv, verb, certname="test.example.com-0001", domains=()).prepare()
    assert stripped.connections == 1 and stripped.messages == []
