"""Every smtpwire exception class is mapped, and reply codes map as the README's table says."""

from __future__ import annotations

import inspect
import ssl

import pytest

from certbot_smtp_dist._internal import classify, smtpwire
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Phase


def test_every_smtpwire_exception_class_is_mapped() -> None:
    classes = {n for n, c in inspect.getmembers(smtpwire, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == smtpwire.__name__}
    assert "SMTPResponseException" in classes
    assert classes <= classify.HANDLED_NAMES, classes - classify.HANDLED_NAMES


@pytest.mark.parametrize(("code", "phase", "text", "expected"), [
    (421, Phase.CONNECT, "", ErrorCode.SMTP_TRANSIENT),
    (450, Phase.RCPT, "", ErrorCode.SMTP_TRANSIENT),
    (451, Phase.DATA, "", ErrorCode.SMTP_TRANSIENT),
    (452, Phase.MAIL, "", ErrorCode.SMTP_TRANSIENT),
    (454, Phase.AUTH, "", ErrorCode.SMTP_TRANSIENT),
    (454, Phase.TLS, "", ErrorCode.SMTP_TRANSIENT),
    (530, Phase.MAIL, "5.7.0 Must issue a STARTTLS command first", ErrorCode.SMTP_TLS),
    (530, Phase.MAIL, "5.7.0 Authentication required", ErrorCode.SMTP_AUTH),
    (535, Phase.AUTH, "", ErrorCode.SMTP_AUTH),
    (534, Phase.AUTH, "", ErrorCode.SMTP_AUTH),
    (550, Phase.RCPT, "", ErrorCode.SMTP_PERMANENT),
    (552, Phase.DATA, "", ErrorCode.SMTP_PERMANENT),
    (554, Phase.CONNECT, "", ErrorCode.SMTP_PERMANENT),
    (500, Phase.MAIL, "", ErrorCode.SMTP_VALIDATION),
    (501, Phase.RCPT, "", ErrorCode.SMTP_VALIDATION),
    (503, Phase.DATA, "", ErrorCode.SMTP_VALIDATION),
    (553, Phase.MAIL, "", ErrorCode.SMTP_VALIDATION),
    (557, Phase.DATA, "", ErrorCode.SMTP_PERMANENT),
    (471, Phase.DATA, "", ErrorCode.SMTP_TRANSIENT),
])
def test_reply_codes(code: int, phase: Phase, text: str, expected: ErrorCode) -> None:
    assert classify.code_for_reply(code, phase, text) is expected


def test_enhanced_status_split() -> None:
    r = classify.reply(550, "5.1.1 <x@example.com>: Recipient address rejected\nsecond line")
    assert (r.code, r.enhanced_status) == (550, "5.1.1")
    assert "\n" not in r.text and "second line" in r.text
    assert classify.reply(250, "Ok").enhanced_status is None


def test_both_tls_verification_shapes_map_to_smtp_tls() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate"
    # The handshake's own error, as STARTTLS and implicit TLS both raise it.
    direct = classify.translate(verify, Phase.TLS, True)
    assert direct.code is ErrorCode.SMTP_TLS and "self-signed" in direct.detail
    # A connection lost with it as the cause: the cause decides.
    try:
        try:
            raise verify
        except ssl.SSLError as inner:
            raise smtpwire.SMTPServerDisconnected("Connection lost") from inner
    except smtpwire.SMTPServerDisconnected as outer:
        failure = classify.translate(outer, Phase.TLS, True)
    assert failure.code is ErrorCode.SMTP_TLS and "self-signed" in failure.detail


def test_a_greeting_that_refuses() -> None:
    failure = classify.translate(smtpwire.SMTPConnectResponseError(421, "4.3.2 Service shutting down"),
                                 Phase.CONNECT, True)
    assert (failure.code, failure.smtp_code, failure.enhanced_status) == (ErrorCode.SMTP_TRANSIENT, 421, "4.3.2")


def test_partial_class_follows_refusals() -> None:
    four = classify.reply(450, "4.2.1 busy")
    five = classify.reply(550, "5.1.1 gone")
    assert classify.refusals_failure([("a@x", four)]).is_retryable
    mixed = classify.refusals_failure([("a@x", four), ("b@x", five)])
    assert not mixed.is_retryable and mixed.code is ErrorCode.SMTP_PERMANENT and mixed.smtp_code == 550


def test_not_connected_timeouts_are_connect_failures() -> None:
    assert classify.deadline(Phase.CONNECT, False, 5).code is ErrorCode.SMTP_CONNECT
    assert classify.deadline(Phase.DATA, True, 5).code is ErrorCode.SMTP_TRANSIENT
    assert classify.translate(ConnectionRefusedError(111, "refused"), Phase.CONNECT, False).code is \
        ErrorCode.SMTP_CONNECT


@pytest.mark.parametrize("phase", [Phase.CONNECT, Phase.MAIL, Phase.RCPT, Phase.DATA])
def test_a_reply_too_long_to_read_is_permanent(phase: Phase) -> None:
    """The relay's code is lost with the reply; retrying could resend to a relay that refused (a long 550)."""
    failure = classify.translate(smtpwire.SMTPResponseException(-1, smtpwire.TOO_LONG), phase, True)
    assert (failure.code, failure.is_retryable, failure.smtp_code) == (ErrorCode.SMTP_PERMANENT, False, None)
    assert "too long" in failure.detail


@pytest.mark.parametrize(("read", "code", "retryable"), [
    (451, ErrorCode.SMTP_TRANSIENT, True), (421, ErrorCode.SMTP_TRANSIENT, True),
    (550, ErrorCode.SMTP_PERMANENT, False), (554, ErrorCode.SMTP_PERMANENT, False),
])
def test_a_reply_too_long_to_read_is_classed_by_the_code_read_off_the_wire(read: int, code: ErrorCode,
                                                                          retryable: bool) -> None:
    """RFC 5321 §4.2.1: the first digit decides; the over-long text itself is never kept."""
    exc = smtpwire.SMTPResponseException(-1, smtpwire.TOO_LONG)
    failure = classify.translate(exc, Phase.RCPT, True, reply_code=read)
    assert (failure.code, failure.is_retryable, failure.smtp_code) == (code, retryable, read)
    assert "too long" in failure.detail
    after_dot = classify.translate(exc, Phase.DATA, True, dot_sent=True, reply_code=read)
    assert after_dot.maybe_delivered  # after the final ".", a reply not read whole is still a lost reply


@pytest.mark.parametrize(("codes", "reported", "expected"), [
    ((), 451, 451),  # no line began as a reply line: the last line's code
    ((), None, None),
    ((550, 550), 550, 550),
    ((250, 251), 251, 251),  # one class: the last line's code
    ((550, 451), 451, 550),  # the refusal is not made retryable by a later 4yz line
    ((451, 550), 550, 550),
    ((550, 250), 250, 550),  # nor a success read off a reply that also refuses
    ((451, 250), 250, 451),
    ((550, 554, 451), 451, 554),  # the most severe class, its last line's code
    ((451, 550), None, 550),  # an over-long reply: the codes its lines began with are all there is
    # a last line read for its code that the wire scan did not take for a reply line (`550\t...`, ` 55 ...`): never
    # less severe than what it read, and a code outside 2yz-5yz is no success.
    ((250,), 550, 550),
    ((250, 251), 451, 451),
    ((250,), 55, 55),
    ((451,), 99, 99),
])
def test_a_reply_whose_lines_disagree_is_classed_by_its_most_severe_code(
    codes: tuple[int, ...], reported: int | None, expected: int | None
) -> None:
    """RFC 5321 §4.2.1: every line of a multi-line reply carries the same code."""
    assert classify.code_of_lines(codes, reported) == expected


@pytest.mark.parametrize(("codes", "code", "uncertain"), [
    ((451, 250), 451, True),  # code_of_lines' verdict on the wire codes: a line took the message, another did not
    ((250, 550), 550, True),
    ((250,), 550, True),  # a `550\t` last line read as 550, the wire scan did not take
    ((250,), 55, True),  # a last line with no valid code
    ((250, 251), 251, False),  # lines of one class: the reply as read
    ((250,), 250, False),
    ((451,), 451, False),  # a refusal on every line it has: not re-sent in doubt, retried as a refusal
    ((), 451, False),
    ((550, 451), 550, False),
])
def test_a_final_reply_that_takes_the_message_and_not_is_uncertain(
    codes: tuple[int, ...], code: int, uncertain: bool
) -> None:
    """RFC 5321 §4.2.1, §4.1.1.4: a reply to the final "." with a 2yz line may mean the relay has the message."""
    failure = classify.contradictory_final_reply(codes, code, "4.3.0 busy\n2.0.0 queued")
    if not uncertain:
        assert failure is None
        return
    assert failure is not None and failure.maybe_delivered and failure.is_retryable
    assert (failure.code, failure.phase, failure.smtp_code) == (ErrorCode.SMTP_TRANSIENT, Phase.DATA, code)
    assert failure.detail.startswith('contradictory reply to the final "."')
    assert failure.detail.endswith("it said: 4.3.0 busy / 2.0.0 queued")


def test_an_enhanced_code_of_another_class_than_the_reply_is_not_taken() -> None:
    """RFC 2034 §4: the enhanced code agrees with the reply code; one that does not stays in the text."""
    r = classify.reply(550, "4.3.0 try later\n5.7.1 refused")
    assert (r.code, r.enhanced_status) == (550, None) and r.text.startswith("4.3.0 try later")
    assert classify.reply(451, "4.3.0 try later").enhanced_status == "4.3.0"
