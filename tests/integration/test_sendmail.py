"""`certbot-smtp-dist deploy` against a real Debian sendmail 8.17 on loopback: STARTTLS, AUTH PLAIN and LOGIN."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from support import mtadeploy, sendmail
from support.deployenv import DeployEnv
from support.pki import LineagePaths, RelayPKI
from support.sendmail import SendmailRelay


@pytest.fixture(scope="module")
def sendmail_valid(relay_pki: RelayPKI) -> Iterator[SendmailRelay]:
    """One instance for the module, serving the test CA's certificate for 127.0.0.1."""
    served = relay_pki.cert("valid")
    yield from sendmail.serve(served.cert_file, served.key_file, relay_pki.ca_file)


@pytest.fixture
def relay(sendmail_valid: SendmailRelay) -> SendmailRelay:
    sendmail_valid.clear()
    return sendmail_valid


def target(relay: SendmailRelay, **overrides: Any) -> dict[str, Any]:
    settings = {"auth_method": "plain", "username": relay.user, "password_credential": "relay", "payload": "pem",
                "to": [relay.address("pki")]}
    return mtadeploy.starttls_target(relay.host, relay.port, relay.ca_file, **(settings | overrides))


def test_relay_offers_auth_only_inside_tls(relay: SendmailRelay) -> None:
    """The harness itself: AuthOptions ``p`` keeps PLAIN and LOGIN off the EHLO list until STARTTLS (RFC 3207 §6)."""
    with smtplib.SMTP(relay.host, relay.port, timeout=15) as client:
        client.ehlo("client.example")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=ssl.create_default_context(cafile=str(relay.ca_file)))
        client.ehlo("client.example")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]


def test_relay_delivers_nowhere_but_its_message_directory(relay: SendmailRelay) -> None:
    """The harness itself: even an authenticated client cannot relay, and no local part can name a path."""
    with smtplib.SMTP(relay.host, relay.port, timeout=15) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(relay.ca_file)))
        client.login(relay.user, relay.password)
        client.mail("certbot@example.com")
        assert client.rcpt("someone@example.org")[0] == 550
        assert client.rcpt(relay.address("../etc"))[0] == 550
        assert client.rcpt(relay.address("a/b"))[0] == 550
        client.rset()
    assert relay.delivered() == []


def test_unknown_recipient_refused_at_rcpt_known_one_delivered(
    denv: DeployEnv, lineage: LineagePaths, relay: SendmailRelay
) -> None:
    unknown = relay.address("no.such.box")

    d = mtadeploy.deploy(denv, lineage, target(relay, to=[relay.address("pki"), unknown]), password=relay.password)

    mtadeploy.assert_rcpt_refused(d, unknown, "User unknown")
    [copy] = relay.wait_for_delivery(1)
    assert copy.mailbox == "pki" and copy.parse()["Message-ID"] == d.target["message_id"]


def test_pem_over_starttls_auth_plain_delivers_the_fullchain(
    denv: DeployEnv, lineage: LineagePaths, relay: SendmailRelay
) -> None:
    d = mtadeploy.deploy(denv, lineage, target(relay, bcc=[relay.address("audit")]), password=relay.password)

    mtadeploy.assert_delivered(d)
    t = d.target
    assert t["refused_recipients"] == {}, t
    copies = relay.wait_for_delivery(2)
    assert sorted(c.mailbox for c in copies) == ["audit", "pki"]
    for copy in copies:
        msg = copy.parse()
        assert msg["Message-ID"] == t["message_id"]
        assert msg["To"] == relay.address("pki")
        assert "Bcc" not in msg  # RFC 5322 §3.6.3: BCC lives in the envelope only
        # sendmail's Received header: ESMTPSA is ESMTP over TLS with AUTH (RFC 3848 §3), and the TLS version.
        received = " ".join(str(msg.get_all("Received", [""])[0]).split())
        assert f"by {sendmail.HOSTNAME} (8.17" in received and " with ESMTPSA " in received, received
        assert "(version=TLSv1.3 " in received, received
        assert msg["X-Test-Auth"] == f"PLAIN {relay.user}"
        assert mtadeploy.attachments(msg) == [("application/pem-certificate-chain", lineage.fullchain.read_bytes())]
    assert relay.address("audit").encode() not in relay.delivered("pki")[0].raw


def test_auth_login_delivers(denv: DeployEnv, lineage: LineagePaths, relay: SendmailRelay) -> None:
    d = mtadeploy.deploy(denv, lineage, target(relay, auth_method="login"), password=relay.password)

    mtadeploy.assert_delivered(d)
    [copy] = relay.wait_for_delivery(1)
    msg = copy.parse()
    assert msg["X-Test-Auth"] == f"LOGIN {relay.user}"  # sendmail accepted it under LOGIN, not PLAIN
    assert [payload for _, payload in mtadeploy.attachments(msg)] == [lineage.fullchain.read_bytes()]


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_wrong_password_fails_auth_and_leaks_nothing(
    denv: DeployEnv, lineage: LineagePaths, relay: SendmailRelay, mechanism: str
) -> None:
    wrong = "not the " + relay.password
    # -vv turns the SMTP transcript on: the AUTH exchange must be masked there too.
    d = mtadeploy.deploy(denv, lineage, target(relay, auth_method=mechanism), password=wrong, args=["-vv"])

    mtadeploy.assert_auth_refused(d)
    output = d.output
    plain_blob = base64.b64encode(f"\0{relay.user}\0{wrong}".encode()).decode()
    login_blob = base64.b64encode(wrong.encode()).decode()
    for secret in (wrong, relay.password, plain_blob, login_blob):
        assert secret not in output
    assert relay.delivered() == []


def test_untrusted_relay_certificate_fails_tls_and_delivers_nothing(
    denv: DeployEnv, lineage: LineagePaths, relay: SendmailRelay
) -> None:
    table = target(relay)
    del table["tls_ca_file"]  # the system trust store does not know the test CA

    d = mtadeploy.deploy(denv, lineage, table, password=relay.password)

    mtadeploy.assert_tls_refused(d, "not trusted")
    assert relay.password not in d.output
    assert relay.delivered() == []


def test_check_against_sendmail_sends_no_mail(denv: DeployEnv, relay: SendmailRelay) -> None:
    """`check` against the real sendmail: healthy, AUTH offered only after STARTTLS and accepted, nothing arrives."""
    denv.set_credential("relay", "smtp_password", relay.password)
    denv.write_config({"archive": target(relay, auth_method="login")})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    doc = run.target("archive")
    assert (doc["verdict"], doc["auth"]) == ("ok", "accepted"), doc
    assert doc["tls"]["version"] == "TLSv1.3" and doc["certificate"]["verified"] is True
    assert doc["ehlo_before_tls"]["auth"] == [] and doc["ehlo_after_tls"]["auth"] == ["PLAIN", "LOGIN"]
    assert doc["ehlo_after_tls"]["enhancedstatuscodes"] is True
    assert relay.password not in run.stdout + run.stderr
    assert relay.delivered() == []


def test_check_against_sendmail_with_a_wrong_password(denv: DeployEnv, relay: SendmailRelay) -> None:
    wrong = "not the " + relay.password
    denv.set_credential("relay", "smtp_password", wrong)
    denv.write_config({"archive": target(relay)})

    run = denv.run("check", "--json")

    assert run.returncode == 69
    doc = run.target("archive")
    assert (doc["error_code"], doc["auth"], doc["smtp_code"]) == ("SMTP_AUTH", "refused", 535), doc
    assert wrong not in run.stdout + run.stderr
    assert relay.delivered() == []
