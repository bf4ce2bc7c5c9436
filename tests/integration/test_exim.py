"""`certbot-smtp-dist deploy` against a real Debian exim4 on loopback (run from its unpacked package).

The relay (tests/support/exim.py) requires STARTTLS before MAIL, offers AUTH PLAIN and LOGIN only after it, relays
for authenticated clients only and captures every accepted message into a Maildir.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

import pytest
from support import exim, mtadeploy
from support.debunpack import Unpacked
from support.deployenv import DeployEnv
from support.exim import AuthPolicy, EximRelay
from support.pki import LineagePaths, RelayPKI

WRONG_PASSWORD = "not-the-exim-password-3f9a"


def target(relay: EximRelay, **overrides: Any) -> dict[str, Any]:
    settings = {"auth_method": "plain", "username": relay.user, "password_credential": "relay",
                "to": ["pki@example.com"]}
    return mtadeploy.starttls_target(relay.host, relay.port, relay.ca_file, **(settings | overrides))


def assert_nothing_accepted(relay: EximRelay) -> None:
    """No message took ("<=" is exim's arrival line), none is queued, none delivered."""
    assert " <= " not in relay.log(), relay.log()
    assert relay.queued() == [] and relay.messages() == []


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_pem_delivered_over_starttls_and_auth_byte_identical(
    denv: DeployEnv, lineage: LineagePaths, exim_relay: EximRelay, mechanism: str
) -> None:
    table = target(exim_relay, auth_method=mechanism, payload="pem")

    d = mtadeploy.deploy(denv, lineage, table, password=exim_relay.password)

    mtadeploy.assert_delivered(d)
    t = d.target
    [copy] = exim_relay.wait_for_messages(1)
    assert copy.envelope_to == ("pki@example.com",)
    msg = copy.parse()
    assert msg["Message-ID"] == t["message_id"]
    assert msg["Return-path"] == "<certbot@example.com>"
    # RFC 3848 §1: "esmtpsa" = ESMTP over STARTTLS with AUTH, as exim recorded the session it received.
    received = " ".join(str(msg.get_all("Received", [""])[0]).split())
    assert "by mx.archive.test with esmtpsa (TLS1." in received, received
    assert mtadeploy.attachments(msg) == [("application/pem-certificate-chain", lineage.fullchain.read_bytes())]
    assert b"PRIVATE KEY" not in copy.raw
    assert f"A={mechanism.upper()}:{exim_relay.user} " in exim_relay.log(), exim_relay.log()
    assert exim_relay.password not in d.output


def test_wrong_password_fails_auth_and_sends_nothing(
    denv: DeployEnv, lineage: LineagePaths, exim_relay: EximRelay
) -> None:
    d = mtadeploy.deploy(denv, lineage, target(exim_relay), password=WRONG_PASSWORD)

    # RFC 4954 §6: 535 5.7.8 Authentication credentials invalid (exim: "Incorrect authentication data").
    mtadeploy.assert_auth_refused(d)
    assert d.target["attempts"] == 1
    assert WRONG_PASSWORD not in d.output
    assert "535 Incorrect authentication data" in exim_relay.log(), exim_relay.log()
    assert_nothing_accepted(exim_relay)


def test_untrusted_relay_certificate_fails_tls_and_sends_nothing(
    denv: DeployEnv, lineage: LineagePaths, exim_relay: EximRelay
) -> None:
    table = target(exim_relay)
    del table["tls_ca_file"]  # the system store does not hold the test CA

    d = mtadeploy.deploy(denv, lineage, table, password=exim_relay.password)

    mtadeploy.assert_tls_refused(d, "not trusted")
    assert exim_relay.password not in d.output
    assert_nothing_accepted(exim_relay)
    assert " A=" not in exim_relay.log()  # no AUTH either: the client stopped at the handshake


def test_relay_offers_auth_only_after_starttls_and_relays_only_when_authenticated(
    exim_relay: EximRelay, relay_pki: RelayPKI
) -> None:
    """The harness itself, as later `check` tests rely on it (RFC 3207 §4, RFC 4954 §4 and §6)."""
    with smtplib.SMTP(exim_relay.host, exim_relay.port, timeout=15) as client:
        client.ehlo("[127.0.0.1]")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.mail("certbot@example.com")[0] == 530
        client.starttls(context=ssl.create_default_context(cafile=str(relay_pki.ca_file)))
        client.ehlo("[127.0.0.1]")
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert client.mail("certbot@example.com")[0] == 250
        assert client.rcpt("pki@example.com")[0] == 530  # not authenticated: no relaying
        client.rset()
        client.login(exim_relay.user, exim_relay.password)
        assert client.mail("certbot@example.com")[0] == 250
        assert client.rcpt("pki@example.com")[0] == 250
        client.rset()
    assert_nothing_accepted(exim_relay)


@pytest.mark.parametrize("auth", ["optional", "off"])
def test_relay_variants_without_required_auth(
    denv: DeployEnv, lineage: LineagePaths, exim_package: Unpacked, relay_pki: RelayPKI, auth: AuthPolicy
) -> None:
    """The MX-like variants later `check` tests use: local mail without AUTH, no relaying; ``off`` offers no AUTH."""
    with exim.running(relay_pki.valid, relay_pki.ca_file, auth=auth, package=exim_package) as relay:
        with smtplib.SMTP(relay.host, relay.port, timeout=15) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(relay_pki.ca_file)))
            client.ehlo("[127.0.0.1]")
            assert client.has_extn("auth") == (auth == "optional")
        table = target(relay, auth_method="none", username=None, password_credential=None,
                       to=[relay.address("pki"), "someone@example.com"])

        d = mtadeploy.deploy(denv, lineage, table)

        t = d.target
        assert (t["status"], t["error_code"], t["phase"]) == ("partial", "SMTP_PERMANENT", "rcpt"), t
        refused = t["refused_recipients"]["someone@example.com"]
        assert (refused["smtp_code"], refused["enhanced_status"]) == (550, "5.7.1"), refused
        assert d.run.returncode == 69
        [copy] = relay.wait_for_messages(1)
        assert copy.envelope_to == (relay.address("pki"),)
        assert copy.parse()["Message-ID"] == t["message_id"]


def test_check_against_exim_sends_no_mail(denv: DeployEnv, exim_relay: EximRelay) -> None:
    """`check` against the real exim: healthy, AUTH PLAIN accepted after STARTTLS, and nothing arrives."""
    denv.set_credential("relay", "smtp_password", exim_relay.password)
    denv.write_config({"archive": target(exim_relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    doc = run.target("archive")
    assert (doc["verdict"], doc["auth"]) == ("ok", "accepted"), doc
    assert doc["certificate"]["verified"] is True and doc["certificate"]["host_matches"] is True
    assert doc["ehlo_before_tls"]["starttls"] is True and doc["ehlo_before_tls"]["auth"] == []
    assert set(doc["ehlo_after_tls"]["auth"]) == {"PLAIN", "LOGIN"}
    assert f"A=PLAIN:{exim_relay.user} " not in exim_relay.log()  # exim logs A= only on a message's arrival
    assert exim_relay.password not in run.stdout + run.stderr
    assert_nothing_accepted(exim_relay)


def test_check_against_exim_with_a_wrong_password(denv: DeployEnv, exim_relay: EximRelay) -> None:
    denv.set_credential("relay", "smtp_password", WRONG_PASSWORD)
    denv.write_config({"archive": target(exim_relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 69
    doc = run.target("archive")
    assert (doc["verdict"], doc["error_code"], doc["auth"]) == ("failed", "SMTP_AUTH", "refused"), doc
    assert WRONG_PASSWORD not in run.stdout + run.stderr
    assert "535 Incorrect authentication data" in exim_relay.log()
    assert_nothing_accepted(exim_relay)
