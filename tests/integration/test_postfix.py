"""`certbot-smtp-dist deploy` against a real Debian Postfix on loopback: delivery, RCPT refusal, required STARTTLS."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from support import ci, mtadeploy
from support.deployenv import DeployEnv
from support.pki import LineagePaths, RelayPKI, ServerCertName
from support.polling import wait_until
from support.postfix import Postfix, unavailable


def _require_postfix() -> None:
    reason = unavailable()
    if reason is not None:
        ci.unavailable(reason)


def _instance(relay_pki: RelayPKI, cert: ServerCertName) -> Iterator[Postfix]:
    _require_postfix()
    served = relay_pki.cert(cert)
    with Postfix(served.cert_file, served.key_file) as server:
        yield server


@pytest.fixture(scope="module")
def postfix_valid(relay_pki: RelayPKI) -> Iterator[Postfix]:
    """One instance for the module, serving the test CA's certificate for 127.0.0.1."""
    yield from _instance(relay_pki, "valid")


@pytest.fixture(scope="module")
def postfix_wrong_host(relay_pki: RelayPKI) -> Iterator[Postfix]:
    """A second instance whose certificate names only wrong.example.net."""
    yield from _instance(relay_pki, "wrong_host")


@pytest.fixture
def postfix(postfix_valid: Postfix) -> Postfix:
    postfix_valid.clear()
    return postfix_valid


def target(server: Postfix, relay_pki: RelayPKI, **overrides: Any) -> dict[str, Any]:
    settings = {"auth_method": "none", "to": [server.address("pki")]}
    return mtadeploy.starttls_target(server.host, server.port, relay_pki.ca_file, **(settings | overrides))


def logged(server: Postfix, text: str, count: int = 1) -> bool:
    """Wait (bounded) for ``text`` in the instance's log: postlogd(8) writes what the daemons send it a moment later."""
    return wait_until(lambda: server.log().count(text) >= count, timeout=5)


def assert_nothing_accepted(server: Postfix) -> None:
    """No mail transaction started (smtpd logs "QUEUEID: client=" at MAIL), nothing queued, nothing delivered."""
    assert server.queue() == []
    assert server.delivered() == []
    assert ": client=" not in server.log(), server.log()


def test_delivers_over_starttls_with_bcc_in_envelope_only(
    denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI, postfix: Postfix
) -> None:
    hidden = [postfix.address("audit"), postfix.address("hidden")]

    d = mtadeploy.deploy(denv, lineage, target(postfix, relay_pki, bcc=hidden))

    mtadeploy.assert_delivered(d)
    t = d.target
    assert t["refused_recipients"] == {}, t
    copies = postfix.wait_for_delivery(3)
    assert sorted(c.mailbox for c in copies) == ["audit", "hidden", "pki"]
    for copy in copies:
        msg = copy.parse()
        assert msg["Delivered-To"] == postfix.address(copy.mailbox)
        assert msg["Message-ID"] == t["message_id"]
        assert msg["To"] == postfix.address("pki")
        assert "Bcc" not in msg and "Cc" not in msg  # RFC 5322 §3.6.3: BCC lives in the envelope only
        # The Received header Postfix prepended says the SMTP session was encrypted (RFC 3207 §4.4).
        received = " ".join(str(msg.get_all("Received", [""])[0]).split())
        assert f"by mx.{postfix.domain} (Postfix) with ESMTPS" in received, received
        assert re.search(r"\(using TLSv1\.3 with cipher ", received), received

    [pki_copy] = postfix.delivered("pki")
    for address in hidden:
        assert address.encode() not in pki_copy.raw
    pem = ("application/pem-certificate-chain", lineage.fullchain.read_bytes())
    assert mtadeploy.attachments(pki_copy.parse()) == [pem]
    assert logged(postfix, "TLS connection established from"), postfix.log()
    assert logged(postfix, "status=sent (delivered to maildir)", 3), postfix.log()
    assert postfix.log().count("status=sent") == 3


def test_unknown_recipient_refused_at_rcpt_known_one_delivered(
    denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI, postfix: Postfix
) -> None:
    unknown = postfix.address("no-such-box")

    d = mtadeploy.deploy(denv, lineage, target(postfix, relay_pki, to=[postfix.address("pki"), unknown]))

    mtadeploy.assert_rcpt_refused(d, unknown, "User unknown in virtual mailbox table")
    [copy] = postfix.wait_for_delivery(1)
    assert copy.mailbox == "pki" and copy.parse()["Message-ID"] == d.target["message_id"]
    assert logged(postfix, f"reject: RCPT from unknown[127.0.0.1]: 550 5.1.1 <{unknown}>"), postfix.log()


def test_plaintext_to_postfix_requiring_tls_sends_nothing(
    denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI, postfix: Postfix
) -> None:
    table = target(postfix, relay_pki, tls_mode="plaintext")
    del table["tls_ca_file"]

    d = mtadeploy.deploy(denv, lineage, table)

    t = d.target
    # RFC 3207 §4: a server requiring TLS answers MAIL with 530 5.7.0 until STARTTLS.
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("failed", "SMTP_TLS", "mail", False), t
    assert (t["smtp_code"], t["enhanced_status"]) == (530, "5.7.0")
    assert "Must issue a STARTTLS command first" in t["detail"]
    assert t["attempts"] == 1
    assert d.run.returncode == 69
    # Postfix does not log the 530 itself; its session summary counts one MAIL command, refused.
    assert logged(postfix, "ehlo=1 mail=0/1"), postfix.log()
    assert_nothing_accepted(postfix)


def test_wrong_host_certificate_fails_tls_and_sends_nothing(
    denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI, postfix_wrong_host: Postfix
) -> None:
    postfix_wrong_host.clear()

    d = mtadeploy.deploy(denv, lineage, target(postfix_wrong_host, relay_pki))

    mtadeploy.assert_tls_refused(d, "mismatch")
    # Postfix saw the client abandon the handshake it started; the session never reached MAIL.
    assert logged(postfix_wrong_host, "ehlo=1 starttls=0/1"), postfix_wrong_host.log()
    assert "lost connection after STARTTLS" in postfix_wrong_host.log()
    assert_nothing_accepted(postfix_wrong_host)


def test_check_against_postfix_sends_no_mail(denv: DeployEnv, relay_pki: RelayPKI, postfix: Postfix) -> None:
    """`check` against a real Postfix requiring STARTTLS: healthy, and Postfix's own count of the session's commands
    shows no MAIL, RCPT or DATA."""
    denv.write_config({"archive": target(postfix, relay_pki)})

    run = denv.run("check", "--json")

    assert run.returncode == 0, run.stdout + run.stderr
    doc = run.target("archive")
    assert doc["verdict"] == "ok" and doc["certificate"]["verified"] is True
    assert doc["ehlo_before_tls"]["starttls"] is True and doc["ehlo_after_tls"]["pipelining"] is True
    assert logged(postfix, "disconnect from"), postfix.log()
    [counts] = re.findall(r"disconnect from \S+ (.*commands=\d+)", postfix.log())
    assert counts == "ehlo=2 starttls=1 noop=1 quit=1 commands=5", counts
    assert_nothing_accepted(postfix)


def test_mail_from_asks_postfix_for_headers_only_in_a_bounce(
    denv: DeployEnv, lineage: LineagePaths, relay_pki: RelayPKI, postfix: Postfix
) -> None:
    """Postfix offers DSN: MAIL FROM carries RET=HDRS (RFC 3461 §4.3), so a bounce of a key-bearing message returns
    its headers alone to the sender; Postfix takes the parameter and delivers."""
    d = mtadeploy.deploy(denv, lineage, target(postfix, relay_pki, payload="pem_and_key"), args=["-vv"])

    mtadeploy.assert_delivered(d)
    sent = [line for line in d.run.stderr.splitlines() if "MAIL FROM:<" in line]
    assert len(sent) == 1 and sent[0].endswith("> RET=HDRS"), d.run.stderr
    assert len(postfix.wait_for_delivery(1)) == 1
