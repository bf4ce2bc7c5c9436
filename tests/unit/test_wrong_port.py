"""Telling a wrong `tls_mode` from a broken relay: which failed handshakes are worth a probe, and how long to wait."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from certbot_smtp_dist._internal import classify, portprobe, smtpwire


def handshake_against(first_bytes: bytes) -> ssl.SSLError:
    """The real error OpenSSL raises when a ClientHello is answered with `first_bytes`."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="relay.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    incoming.write(first_bytes)
    with pytest.raises(ssl.SSLError) as err:
        tls.do_handshake()
    return err.value


def test_a_plaintext_greeting_met_by_a_handshake_is_worth_a_probe() -> None:
    exc = handshake_against(b"220 relay.test ESMTP ready\r\n")
    assert not classify.peer_spoke_tls(exc)
    # Chained under a lost connection, the cause decides.
    try:
        try:
            raise exc
        except ssl.SSLError as inner:
            raise smtpwire.SMTPServerDisconnected("Connection lost") from inner
    except smtpwire.SMTPServerDisconnected as outer:
        assert not classify.peer_spoke_tls(outer)


def test_a_tls_alert_or_refused_certificate_means_the_relay_speaks_tls() -> None:
    alert = handshake_against(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]))  # fatal protocol_version
    assert classify.peer_spoke_tls(alert), alert.reason
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    assert classify.peer_spoke_tls(verify)


def test_reply_of_reads_only_replies() -> None:
    assert classify.reply_of(smtpwire.SMTPAuthenticationError(535, "5.7.8 no")) == (535, "5.7.8 no")
    assert classify.reply_of(smtpwire.SMTPServerDisconnected("gone")) is None
    assert classify.reply_of(OSError("x")) is None


@pytest.mark.parametrize(("timeout", "wait"), [(1, 0.5), (2, 0.5), (8, 2.0), (30, 5.0), (600, 5.0)])
def test_greeting_wait_is_a_bounded_fraction_of_the_timeout(timeout: float, wait: float) -> None:
    assert portprobe.greeting_wait(timeout) == wait


def test_readable_says_whether_a_greeting_came_and_leaves_it_unread() -> None:
    """The wait before a greeting (transport._await_greeting): False for a port still silent when the wait ends,
    True once it has spoken, and what it said is still there for the session to read; the socket is left as it was
    found (no reader of ours on it), so it can be watched again."""

    async def run() -> tuple[bool, bool, bool, bytes]:
        ours, relay = socket.socketpair()
        with ours, relay:
            ours.setblocking(False)
            silent = await portprobe.readable(ours, 0.05)
            relay.sendall(b"220 relay.test ESMTP\r\n")
            spoke = await portprobe.readable(ours, 5)
            again = await portprobe.readable(ours, 5)
            return silent, spoke, again, ours.recv(100)

    assert asyncio.run(run()) == (False, True, True, b"220 relay.test ESMTP\r\n")
