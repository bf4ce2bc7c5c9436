"""The pure parts of a lost final reply: the DATA bytes, its classification, and what the run reports."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certbot_smtp_dist._internal import classify, report, smtpwire, transport
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import DeliveryResult, Failure, Phase, Status


@pytest.mark.parametrize(("data", "sent"), [
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\nb", b"a\r\nb\r\n.\r\n"),  # CRLF line ends, and the last line ended (RFC 5321 §2.3.8)
    (b".hidden\r\n.\r\nx\r..y\r\n", b"..hidden\r\n..\r\nx\r\n...y\r\n.\r\n"),  # every leading dot doubled (§4.5.2)
    (b"", b"\r\n.\r\n"),
])
def test_data_lines_are_transparent(data: bytes, sent: bytes) -> None:
    assert transport.data_lines(data) == sent


def _rewritten(data: bytes) -> bytes:
    """data_lines as two regular expressions, every time (what it did before its shortcut for a message already
    in CRLF lines without a leading dot)."""
    body = re.sub(rb"^\.", b"..", re.sub(rb"\r\n|\r|\n", b"\r\n", data), flags=re.MULTILINE)
    return (body if body.endswith(b"\r\n") else body + b"\r\n") + b".\r\n"


@given(st.binary(max_size=60) | st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"a", b"=2E"]),
                                         max_size=30).map(b"".join))
def test_data_lines_are_what_the_rewrite_makes(data: bytes) -> None:
    """The shortcut (bytes already in CRLF lines, no leading dot: sent as they are) gives what rewriting every
    line end and leading dot gives, whatever the bytes: a bare CR or LF, a dot after any of them, a CRLF split."""
    assert transport.data_lines(data) == _rewritten(data)


LOST = [
    smtpwire.SMTPServerDisconnected("Connection lost"),
    smtpwire.SMTPResponseException(-1, "Malformed SMTP response line: queued, probably"),
    smtpwire.SMTPResponseException(-1, smtpwire.TOO_LONG),
    TimeoutError(),
    ConnectionResetError(104, "Connection reset by peer"),
]


@pytest.mark.parametrize("exc", LOST, ids=lambda e: type(e).__name__)
def test_no_reply_after_the_dot_may_be_delivered(exc: BaseException) -> None:
    failure = classify.translate(exc, Phase.DATA, True, dot_sent=True)
    assert failure.maybe_delivered and failure.is_retryable
    assert (failure.code, failure.phase, failure.smtp_code) == (ErrorCode.SMTP_TRANSIENT, Phase.DATA, None)
    assert not classify.translate(exc, Phase.DATA, True).maybe_delivered  # before the dot: an ordinary failure


def test_deadline_after_the_dot_may_be_delivered() -> None:
    assert classify.deadline(Phase.DATA, True, 5, dot_sent=True).maybe_delivered
    assert not classify.deadline(Phase.DATA, True, 5).maybe_delivered


def test_uncertain_is_a_temporary_failure_and_says_so() -> None:
    lost = classify.deadline(Phase.DATA, True, 5, dot_sent=True)
    uncertain = DeliveryResult("a", Status.UNCERTAIN, lost, "<m@x>", attempts=1)
    delivered = DeliveryResult("b", Status.DELIVERED, message_id="<n@x>", attempts=1)
    permanent = DeliveryResult("c", Status.FAILED, Failure(ErrorCode.SMTP_PERMANENT, Phase.RCPT, "550 gone"))
    assert not uncertain.ok
    assert report.exit_status([uncertain, delivered]) == report.EX_TEMPFAIL
    assert report.exit_status([uncertain, permanent]) == report.EX_UNAVAILABLE
    assert uncertain.to_json()["status"] == "uncertain"
    line = report.human_line(uncertain)
    assert line.startswith("a: uncertain SMTP_TRANSIENT in data: ") and "<m@x>" in line
