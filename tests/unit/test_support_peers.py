"""Self-tests of the SMTP test peers, driven by the stdlib ``smtplib`` only.

They prove each mode and knob of tests/support/relay.py and tests/support/faultsmtp.py.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import time
from collections.abc import Callable

import pytest
from support import faultsession
from support.faultsmtp import CLOSE, STALL, FaultServer, Reply, Script
from support.pki import RelayPKI, client_context
from support.polling import wait_until
from support.relay import Relay

RelayFactory = Callable[..., Relay]
FaultFactory = Callable[..., FaultServer]

MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: t\r\n\r\n.dot line\r\nbody\r\n"
pytestmark = pytest.mark.timeout(15)


def client(host: str, port: int, timeout: float = 3.0) -> smtplib.SMTP:
    return smtplib.SMTP(host, port, local_hostname="client.test", timeout=timeout)


def raw_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\r\n") < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[:count]


# =========================================================================== relay


def test_relay_starttls_required_before_mail_and_auth(relay_factory: RelayFactory) -> None:
    relay = relay_factory("starttls", auth=("alice", "s3cret"))
    with client(relay.host, relay.port) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.mail("a@example.org")[0] == 530
        assert smtp.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")[0] == 530
        smtp.starttls(context=relay.client_context())
        smtp.ehlo()
        assert smtp.has_extn("auth") and not smtp.has_extn("starttls")
        smtp.login("alice", "s3cret")
        assert smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE) == {}
    (message,) = relay.messages
    assert message.mail_from == "a@example.org"
    assert message.rcpt_tos == ("b@example.org",)
    assert message.data == MESSAGE  # dot-unstuffed again, CRLF kept
    assert message.tls and message.auth_user == "alice"
    assert relay.auth_successes == 1 and relay.auth_failures == 0


def test_relay_auth_required(relay_factory: RelayFactory) -> None:
    relay = relay_factory("starttls", auth=("alice", "s3cret"))
    with client(relay.host, relay.port) as smtp:
        smtp.starttls(context=relay.client_context())
        smtp.ehlo()
        code, text = smtp.mail("a@example.org")
        assert (code, text) == (530, b"5.7.0 Authentication required")
    assert relay.messages == []


def test_relay_smtps_implicit_tls(relay_factory: RelayFactory) -> None:
    relay = relay_factory("smtps", auth=("alice", "s3cret"))
    with smtplib.SMTP_SSL(
        relay.host, relay.port, context=relay.client_context(), timeout=3
    ) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls") and smtp.has_extn("auth")
        smtp.login("alice", "s3cret")
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert relay.messages[0].tls


def test_relay_smtps_rejects_plaintext_client(relay_factory: RelayFactory) -> None:
    relay = relay_factory("smtps")
    # the server waits for a ClientHello and never greets in clear text
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        client(relay.host, relay.port, timeout=0.5)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("password, ok", [("s3cret", True), ("wrong", False)])
def test_relay_auth_mechanisms(
    relay_factory: RelayFactory, mechanism: str, password: str, ok: bool
) -> None:
    relay = relay_factory("smtps", auth=("alice", "s3cret"))
    with smtplib.SMTP_SSL(
        relay.host, relay.port, context=relay.client_context(), timeout=3
    ) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = "alice", password
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        if ok:
            assert smtp.auth(mechanism, method, initial_response_ok=False)[0] == 235
        else:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                smtp.auth(mechanism, method, initial_response_ok=False)
            assert info.value.smtp_code == 535
    (attempt,) = relay.auth_attempts
    assert (attempt.mechanism, attempt.username, attempt.success) == (mechanism, "alice", ok)
    assert (relay.auth_successes, relay.auth_failures) == ((1, 0) if ok else (0, 1))


def test_relay_partial_recipient_refusal(relay_factory: RelayFactory) -> None:
    relay = relay_factory("plaintext", reject={"Nobody@example.org": "550 5.1.1 No such user"})
    with client(relay.host, relay.port) as smtp:
        refused = smtp.sendmail("a@example.org", ["b@example.org", "nobody@example.org"], MESSAGE)
    assert refused == {"nobody@example.org": (550, b"5.1.1 No such user")}
    (message,) = relay.messages
    assert message.rcpt_tos == ("b@example.org",) and not message.tls


def test_relay_plaintext_auth(relay_factory: RelayFactory) -> None:
    relay = relay_factory("plaintext", auth=("alice", "s3cret"))
    with client(relay.host, relay.port) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("auth") and not smtp.has_extn("starttls")
        smtp.login("alice", "s3cret")
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert relay.messages[0].auth_user == "alice"


def test_relay_starttls_not_offered(relay_factory: RelayFactory) -> None:
    relay = relay_factory("starttls_not_offered")
    with client(relay.host, relay.port) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            smtp.starttls(context=relay.client_context())


@pytest.mark.parametrize(
    "cert, reason",
    [("expired", "certificate has expired"), ("wrong_host", "IP address mismatch")],
)
def test_relay_bad_certificates(relay_factory: RelayFactory, cert: str, reason: str) -> None:
    relay = relay_factory("starttls", cert=cert)
    with (
        client(relay.host, relay.port) as smtp,
        pytest.raises(ssl.SSLCertVerificationError, match=reason),
    ):
        smtp.starttls(context=relay.client_context())


def test_relay_from_async_code(relay_pki: RelayPKI) -> None:
    async def scenario() -> bytes:
        async with Relay(relay_pki, mode="plaintext") as relay:
            reader, writer = await asyncio.open_connection(relay.host, relay.port)
            greeting = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return greeting

    assert asyncio.run(scenario()).startswith(b"220 relay.test")


def test_relay_stop_closes_open_connections(relay_pki: RelayPKI) -> None:
    relay = Relay(relay_pki, mode="plaintext").start()
    with socket.create_connection(relay.address, timeout=3) as sock:
        assert sock.recv(1024).startswith(b"220")
        relay.stop()
        assert sock.recv(1024) == b""  # EOF, not the socket's 3 s timeout


# =========================================================================== fault server


def test_fault_defaults_are_well_behaved(fault_server: FaultFactory) -> None:
    server = fault_server()
    with client(server.host, server.port) as smtp:
        smtp.login("bob", "pw")
        assert smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE) == {}
    assert server.wait_idle()
    assert server.accepted and server.connections == 1
    (message,) = server.messages
    assert (message.mail_from, message.rcpt_tos, message.data) == (
        "a@example.org",
        ("b@example.org",),
        MESSAGE,
    )
    assert message.auth_user == "bob"
    assert server.client_commands == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
    assert ("S", "221 2.0.0 Bye") in server.transcript


@pytest.mark.parametrize("greeting", ["421 4.3.2 try later", "554 no"])
def test_fault_greeting_refusal(fault_server: FaultFactory, greeting: str) -> None:
    server = fault_server(replies={"greeting": greeting})
    with pytest.raises(smtplib.SMTPConnectError) as info:
        client(server.host, server.port)
    assert info.value.smtp_code == int(greeting[:3])


def test_fault_greeting_421_closes(fault_server: FaultFactory) -> None:
    server = fault_server(replies={"greeting": "421 4.3.2 try later"})
    with socket.create_connection(server.address, timeout=2) as sock:
        assert sock.recv(1024) == b"421 4.3.2 try later\r\n"
        assert sock.recv(1024) == b""


def test_fault_greeting_stall_times_out(fault_server: FaultFactory) -> None:
    server = fault_server(replies={"greeting": STALL})
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
        client(server.host, server.port, timeout=1)
    assert time.monotonic() - started >= 0.9  # it waited for the client's timeout, it did not hang up early


def test_fault_stall_ends_when_server_stops() -> None:
    server = FaultServer(Script(replies={"greeting": STALL})).start()
    with socket.create_connection(server.address, timeout=3) as sock:
        assert wait_until(lambda: ("*", "stall") in server.transcript, timeout=2)
        server.stop()
        assert sock.recv(1024) == b""  # EOF, not the socket's 3 s timeout


def test_fault_greeting_trickle(fault_server: FaultFactory) -> None:
    server = fault_server(replies={"greeting": Reply.text("220 slow", trickle=0.05)})
    started = time.monotonic()
    with client(server.host, server.port, timeout=1) as smtp:
        assert smtp.noop()[0] == 250
    assert time.monotonic() - started >= 10 * 0.05  # 10 bytes: "220 slow\r\n"


def test_fault_ehlo_extensions_and_stall(fault_server: FaultFactory) -> None:
    server = fault_server(
        ehlo_extensions=("AUTH PLAIN", "STARTTLS"), replies={"EHLO": Reply(then="stall")}
    )
    with client(server.host, server.port, timeout=1) as smtp:
        assert smtp.ehlo()[0] == 250
        assert smtp.has_extn("starttls") and smtp.esmtp_features["auth"].split() == ["PLAIN"]
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp.mail("a@example.org")


def test_fault_ehlo_malformed_multiline(fault_server: FaultFactory) -> None:
    mismatched = fault_server(
        replies={"EHLO": Reply.text("250-fault.test", "250-8BITMIME", "251 x")}
    )
    with client(mismatched.host, mismatched.port) as smtp:
        assert smtp.ehlo()[0] == 251  # smtplib keeps the last line's code
    no_code = fault_server(replies={"EHLO": "250-fault.test\nno code here"})
    with client(no_code.host, no_code.port) as smtp:
        assert smtp.ehlo()[0] == -1  # smtplib: unparsable reply
    with socket.create_connection(no_code.address, timeout=2) as sock:
        raw_lines(sock, 1)
        sock.sendall(b"EHLO x\r\n")
        assert raw_lines(sock, 2) == [b"250-fault.test", b"no code here"]


def test_fault_starttls_454(fault_server: FaultFactory) -> None:
    server = fault_server(advertise_starttls=True)  # offered, but no tls_context
    with (
        client(server.host, server.port) as smtp,
        pytest.raises(smtplib.SMTPResponseException) as info,
    ):
        smtp.starttls()
    assert info.value.smtp_code == 454


def test_fault_starttls_real_upgrade(fault_server: FaultFactory, relay_pki: RelayPKI) -> None:
    server = fault_server(
        tls_context=relay_pki.server_context(), require_tls=True, credentials=("bob", "pw")
    )
    with client(server.host, server.port) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert smtp.mail("a@example.org") == (530, b"5.7.0 Must issue a STARTTLS command first")
        assert smtp.docmd("AUTH", "PLAIN AGJvYgBwdw==")[0] == 530
        smtp.starttls(context=relay_pki.client_context())
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        smtp.login("bob", "pw")
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert server.messages[0].tls
    assert any(line.startswith("TLS established") for d, line in server.transcript if d == "*")


def test_fault_starttls_fallback_path(
    fault_server: FaultFactory, relay_pki: RelayPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python 3.10 code path (loop.start_tls + new StreamWriter) works too."""
    monkeypatch.setattr(faultsession, "USE_STREAM_START_TLS", False)
    server = fault_server(tls_context=relay_pki.server_context())
    with client(server.host, server.port) as smtp:
        smtp.starttls(context=relay_pki.client_context())
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert server.wait_idle()
    assert server.messages[0].tls


@pytest.mark.parametrize("action", ["close", "garbage"])
def test_fault_starttls_handshake_failure(
    fault_server: FaultFactory, relay_pki: RelayPKI, action: str
) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), tls_action=action)
    with (
        client(server.host, server.port) as smtp,
        pytest.raises((ssl.SSLError, OSError, smtplib.SMTPServerDisconnected)),
    ):
        smtp.starttls(context=relay_pki.client_context())


def test_fault_starttls_expired_certificate(
    fault_server: FaultFactory, relay_pki: RelayPKI
) -> None:
    server = fault_server(tls_context=relay_pki.server_context("expired"))
    with (
        client(server.host, server.port) as smtp,
        pytest.raises(ssl.SSLCertVerificationError, match="expired"),
    ):
        smtp.starttls(context=relay_pki.client_context())
    assert server.wait_idle()
    assert any("TLS handshake failed" in line for _, line in server.transcript)


def tls10_only(relay_pki: RelayPKI) -> ssl.SSLContext:
    return relay_pki.valid.server_context(
        minimum_version=ssl.TLSVersion.TLSv1,
        maximum_version=ssl.TLSVersion.TLSv1,
        seclevel0=True,
    )


def test_fault_tls10_only_refused_by_modern_client(
    fault_server: FaultFactory, relay_pki: RelayPKI
) -> None:
    server = fault_server(tls_context=tls10_only(relay_pki))
    modern = client_context(relay_pki.ca_file, minimum_version=ssl.TLSVersion.TLSv1_2)
    with client(server.host, server.port) as smtp, pytest.raises(ssl.SSLError):
        smtp.starttls(context=modern)


def test_fault_tls10_only_really_offers_tls10(
    fault_server: FaultFactory, relay_pki: RelayPKI
) -> None:
    server = fault_server(tls_context=tls10_only(relay_pki))
    legacy = client_context(relay_pki.ca_file, minimum_version=ssl.TLSVersion.TLSv1, seclevel0=True)
    with client(server.host, server.port) as smtp:
        smtp.starttls(context=legacy)
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert smtp.sock.version() == "TLSv1"
        assert smtp.noop()[0] == 250


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("initial_response", [True, False])
def test_fault_auth_exchanges(
    fault_server: FaultFactory, mechanism: str, initial_response: bool
) -> None:
    server = fault_server(credentials=("bob", "pw"))
    with client(server.host, server.port) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = "bob", "pw"
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        assert smtp.auth(mechanism, method, initial_response_ok=initial_response)[0] == 235
    assert server.wait_idle()
    (attempt,) = server.auth_attempts
    assert (attempt.mechanism, attempt.username, attempt.success) == (mechanism, "bob", True)
    challenges = [line for d, line in server.transcript if d == "S" and line.startswith("334")]
    if mechanism == "LOGIN":
        expected = (
            ["334 UGFzc3dvcmQ6"] if initial_response else ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]
        )
        assert challenges == expected
    else:
        assert challenges == ([] if initial_response else ["334 "])


@pytest.mark.parametrize("reply", ["535 5.7.8 bad", "534 5.7.9 weak", "454 4.7.0 later"])
def test_fault_auth_scripted_failures(fault_server: FaultFactory, reply: str) -> None:
    server = fault_server(auth_replies={"PLAIN": reply})
    with client(server.host, server.port) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = "bob", "pw"
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            smtp.auth("PLAIN", smtp.auth_plain)
        assert info.value.smtp_code == int(reply[:3])
        # the other mechanism is unaffected
        smtp.user, smtp.password = "carol", "pw"
        assert smtp.auth("LOGIN", smtp.auth_login)[0] == 235
    assert server.wait_idle()
    assert [(a.mechanism, a.username, a.code) for a in server.auth_attempts] == [
        ("PLAIN", "bob", int(reply[:3])),
        ("LOGIN", "carol", 235),
    ]


def test_fault_wrong_credentials(fault_server: FaultFactory) -> None:
    server = fault_server(credentials=("bob", "pw"), require_auth=True)
    with client(server.host, server.port) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("bob", "nope")  # smtplib tries PLAIN, then LOGIN
        assert smtp.mail("a@example.org")[0] == 530
    assert [a.code for a in server.auth_attempts] == [535, 535]


@pytest.mark.parametrize("code", [451, 452, 550, 552, 553])
def test_fault_mail_from_refused(fault_server: FaultFactory, code: int) -> None:
    server = fault_server(replies={"MAIL": f"{code} 5.0.0 refused"})
    with client(server.host, server.port) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as info:
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert info.value.smtp_code == code and not server.accepted


def test_fault_partial_rcpt_refusal(fault_server: FaultFactory) -> None:
    server = fault_server(
        rcpt_replies={
            "X@example.org": "550 5.1.1 no such user",
            "y@example.org": "452 4.2.2 mailbox full",
        }
    )
    with client(server.host, server.port) as smtp:
        refused = smtp.sendmail(
            "a@example.org", ["b@example.org", "x@example.org", "y@example.org"], MESSAGE
        )
    assert refused == {
        "x@example.org": (550, b"5.1.1 no such user"),
        "y@example.org": (452, b"4.2.2 mailbox full"),
    }
    assert server.messages[0].rcpt_tos == ("b@example.org",)


@pytest.mark.parametrize("stage", ["DATA", "DATA_END"])
@pytest.mark.parametrize("code", [451, 552, 554])
def test_fault_data_refused(fault_server: FaultFactory, stage: str, code: int) -> None:
    server = fault_server(replies={stage: f"{code} 5.0.0 no thanks"})
    with client(server.host, server.port) as smtp, pytest.raises(smtplib.SMTPDataError) as info:
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert info.value.smtp_code == code
    assert server.wait_idle() and not server.accepted
    data_events = [line for d, line in server.transcript if d == "*" and line.startswith("DATA:")]
    assert len(data_events) == (1 if stage == "DATA_END" else 0)


@pytest.mark.parametrize("stage", ["EHLO", "MAIL", "RCPT", "DATA", "DATA_END"])
def test_fault_421_then_close(fault_server: FaultFactory, stage: str) -> None:
    server = fault_server(replies={stage: "421 4.3.0 shutting down"})
    with client(server.host, server.port) as smtp, pytest.raises(smtplib.SMTPException):
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert server.wait_idle()
    assert server.transcript[-1] == ("*", "server closes the connection")
    assert not server.accepted


def test_fault_drop_mid_data(fault_server: FaultFactory) -> None:
    server = fault_server(drop_data_after=100)
    body = MESSAGE + b"x" * 76 + b"\r\n" * 2000
    with (
        client(server.host, server.port) as smtp,
        pytest.raises((smtplib.SMTPServerDisconnected, OSError)),
    ):
        smtp.sendmail("a@example.org", ["b@example.org"], body)
    assert server.wait_idle() and not server.accepted
    assert any(line.startswith("dropping the connection after") for _, line in server.transcript)


def test_fault_stall_after_data(fault_server: FaultFactory) -> None:
    server = fault_server(replies={"DATA_END": STALL})
    with (
        client(server.host, server.port, timeout=1) as smtp,
        pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"),
    ):
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert not server.accepted


def test_fault_close_without_reply(fault_server: FaultFactory) -> None:
    server = fault_server(replies={"MAIL": CLOSE})
    with client(server.host, server.port) as smtp, pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)


def test_fault_per_connection_transcripts(fault_server: FaultFactory) -> None:
    server = fault_server()
    for _ in range(2):
        with client(server.host, server.port) as smtp:
            smtp.noop()
    assert server.wait_idle() and server.connections == 2
    assert ("C", "noop") in server.transcript_of(2)  # smtplib sends lower-case verbs
    assert server.transcript_of(3) == []


def test_fault_only_first_connections_are_faulty(fault_server: FaultFactory) -> None:
    server = fault_server(replies={"MAIL": "451 4.3.0 Try later"}, faulty_connections=2)
    for _ in range(2):
        with client(server.host, server.port) as smtp, pytest.raises(smtplib.SMTPSenderRefused):
            smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    with client(server.host, server.port) as smtp:
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert server.wait_idle() and server.connections == 3
    assert [m.mail_from for m in server.messages] == ["a@example.org"]


def test_fault_tls_on_connect(fault_server: FaultFactory, relay_pki: RelayPKI) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), tls_on_connect=True)
    with smtplib.SMTP_SSL(
        server.host, server.port, context=relay_pki.client_context(), timeout=3
    ) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        smtp.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert server.wait_idle() and server.messages[0].tls


def test_script_validation() -> None:
    with pytest.raises(ValueError, match="unknown reply stage"):
        Script(replies={"MAIL FROM": "250 ok"})
    assert base64.b64decode("VXNlcm5hbWU6") == b"Username:"
