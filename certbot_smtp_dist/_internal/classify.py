"""Translate what an SMTP session raises (smtpwire's errors, ssl, socket, OSError, timeouts) into `Failure` facts.

This is the only module that inspects exceptions. smtpwire's classes are matched by name along the MRO (so this
module, which smtpwire imports, never imports it back): SMTPResponseException carries a reply, the others say
what went wrong on the wire.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence

from certbot_smtp_dist._internal import scrub
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Failure, Phase, Reply

# Both compiled on first use (re's cache): only a refusal's or a failure's reply is read.
# RFC 3463 §2: class.subject.detail at the start of the reply text (RFC 2034 §3).
_ENHANCED_RE = r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)"

# smtpwire drops a reply it will not read whole (a line over 8192 octets, or over 32 KiB in all) and reports it
# without a code (-1): the codes its lines began with are read off the wire apart (smtpwire's `code()`).
_TOO_LONG = "Response too long"  # smtpwire.TOO_LONG
MAX_LINE_READ = 8192

TRANSIENT_CODES = frozenset({421, 450, 451, 452, 454})
VALIDATION_CODES = frozenset({500, 501, 503, 553})


def reply(code: int, text: str) -> Reply:
    """An SMTP reply with its RFC 3463 enhanced status code split off the text when present and of the reply's
    class (RFC 2034 §4: "All status codes returned by the server must agree with the primary response code"; one
    that does not, as after a reply whose lines disagree, stays in the text)."""
    clean = _clean(text)
    match = re.match(_ENHANCED_RE, clean)
    if match and match.group(1) == str(code)[:1]:
        return Reply(code, ".".join(match.groups()), clean[match.end():].strip() or clean)
    return Reply(code, None, clean)


def code_of_lines(codes: Sequence[int], reported: int | None = None) -> int | None:
    """The code a reply is classed by, from the codes its lines carried (in order) and the one its last line's
    first three octets read as (`reported`).

    RFC 5321 §4.2.1: "In a multiline reply, the reply code on each of the lines MUST be the same." A reply whose
    lines disagree breaks that, and neither its first line (a `451-` before a `550`) nor its last (a `550-` before a
    `451`, the last line's code) can be taken at its word: it is classed by its most severe class (the first
    digit, §4.2.1: 5yz permanent over 4yz transient over 2yz/3yz), the last line of that class giving the code.
    So a relay that refuses on any line is never retried, and a success is never read off a reply that also refuses.
    Lines that agree in their first digit keep the reported code (a `250-`/`251` is a 251, the last line's).
    The result is never less severe than the reported code: a last line read as a refusal (`550\t...`)
    or as no reply code at all (` 55 ...`) that `codes` lacks (they are the lines that start as RFC 5321 §4.2 says
    a reply line does) is not overruled by the `250-` lines before it."""
    if not codes:
        return reported
    worst = max(code // 100 for code in codes)
    if reported is not None and (reported // 100 >= worst or not 200 <= reported < 600):
        return reported
    return [code for code in codes if code // 100 == worst][-1]


def code_for_reply(code: int, phase: Phase, text: str = "") -> ErrorCode:
    """The error code of a negative reply (RFC 5321 §4.2.1: 4yz transient, 5yz permanent)."""
    if code in TRANSIENT_CODES:
        return ErrorCode.SMTP_TRANSIENT
    # 530 is both "Must issue a STARTTLS command first" (RFC 3207 §4) and "Authentication required" (RFC 4954 §6).
    if code == 530:
        return ErrorCode.SMTP_TLS if "tls" in text.lower() else ErrorCode.SMTP_AUTH
    if phase is Phase.AUTH:
        return ErrorCode.SMTP_AUTH  # 535, 534, 538, 432, 501 to a SASL exchange: all rejections of the login
    if phase is Phase.TLS and code >= 500:
        return ErrorCode.SMTP_TLS
    if code in VALIDATION_CODES:
        return ErrorCode.SMTP_VALIDATION
    if 400 <= code < 500:
        return ErrorCode.SMTP_TRANSIENT
    return ErrorCode.SMTP_PERMANENT


def failure_from_reply(r: Reply, phase: Phase, what: str = "") -> Failure:
    code = code_for_reply(r.code, phase, r.text)
    prefix = f"{what}: " if what else ""
    return Failure(code, phase, f"{prefix}{r.code} {r.enhanced_status + ' ' if r.enhanced_status else ''}{r.text}",
                   smtp_code=r.code, enhanced_status=r.enhanced_status)


def refusals_failure(refused: Iterable[tuple[str, Reply]], phase: Phase = Phase.RCPT) -> Failure:
    """The failure of a partly or wholly refused RCPT set: any 5xx makes it permanent, all 4xx retryable."""
    items = list(refused)
    worst = next((r for _, r in items if r.code >= 500), items[0][1])
    base = failure_from_reply(worst, phase)
    count = len(items)
    return Failure(base.code, phase, f"{count} recipient(s) refused; first: {base.detail}",
                   smtp_code=worst.code, enhanced_status=worst.enhanced_status,
                   retryable=all(400 <= r.code < 500 for _, r in items))


def refusal(exc: BaseException) -> Reply | None:
    """The reply of an RCPT refusal worth recording per recipient; None for anything else (including 421)."""
    if "SMTPRecipientRefused" in _foreign_names(exc):
        code = int(getattr(exc, "code", 0))
        if code != 421:  # 421 closes the session (RFC 5321 §3.8): not a per-recipient answer
            return reply(code, str(getattr(exc, "message", "")))
    return None


def reply_of(exc: BaseException) -> tuple[int, str] | None:
    """The code and text of the reply an smtpwire error carries, for the transcript; None if there was none."""
    if "SMTPResponseException" not in _foreign_names(exc):
        return None
    code = int(getattr(exc, "code", 0) or 0)
    return (code, str(getattr(exc, "message", ""))) if code > 0 else None


def too_long(phase: Phase, code: int | None = None) -> Failure:
    """A reply too long to read. RFC 5321 §4.5.3.1.5 allows 512 octets a line; smtpwire drops a reply over 8192
    and its text is never kept. `code`: the reply code read off the wire from the starts of the reply's lines seen,
    when there was one (`code_of_lines`: the most severe, when they disagree).
    RFC 5321 §4.2.1: the first digit decides, so a 4yz is transient and retried. Without a readable 4yz the failure
    is permanent: a relay that broken will not heal by itself, and retrying could resend to a relay that refused
    (a long 550 must never become retryable)."""
    limit = f"over {MAX_LINE_READ} octets; RFC 5321 allows 512 a line"
    if code is not None and 400 <= code < 500:
        return Failure(ErrorCode.SMTP_TRANSIENT, phase, f"relay reply {code} too long to read ({limit}): a 4yz "
                       "reply is transient (RFC 5321 §4.2.1), so it is retried; its text is not kept", smtp_code=code)
    if code is not None and code >= 500:
        return Failure(ErrorCode.SMTP_PERMANENT, phase, f"relay reply {code} too long to read ({limit}): a 5yz "
                       "reply is permanent (RFC 5321 §4.2.1), so it is not retried; its text is not kept",
                       smtp_code=code, retryable=False)
    return Failure(ErrorCode.SMTP_PERMANENT, phase,
                   f"relay reply too long to read ({limit}): its reply code is unknown, so it is not retried",
                   retryable=False)


# OpenSSL reasons that can only follow a TLS record from the relay (a ServerHello we refused, or its alert).
_TLS_SPEAKER_REASONS = frozenset({"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "WRONG_SSL_VERSION",
                                  "NO_SHARED_CIPHER", "WRONG_CIPHER_RETURNED", "UNSUPPORTED_ELLIPTIC_CURVE"})


def peer_spoke_tls(exc: BaseException) -> bool:
    """Whether a failed handshake shows that the relay speaks TLS: it sent a certificate we refused, a ServerHello
    we could not accept, or an alert. Otherwise it may have greeted in clear, which is worth a look."""
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    reason = str(getattr(cause, "reason", "") or "").upper()
    return isinstance(cause, ssl.SSLError) and ("ALERT" in reason or reason in _TLS_SPEAKER_REASONS)


def deadline(phase: Phase, connected: bool, budget: float, dot_sent: bool = False,
             timeout: float | None = None) -> Failure:
    """`budget`: what this session had; `timeout`: the target's, the deadline a user configured and recognises
    (the session's budget is smaller by whatever the run spent before it: reading files, earlier attempts)."""
    if not connected:
        return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, f"TCP connect did not complete within {budget:.1f}s")
    limit = budget if timeout is None else timeout
    if dot_sent:
        return _lost_final_reply(f"no reply to the final \".\" within the {limit:.1f}s deadline")
    return Failure(ErrorCode.SMTP_TRANSIENT, phase,
                   f"relay stalled during {phase.value}; abandoned at the {limit:.1f}s deadline")


def interrupted_after_dot() -> Failure:
    """A Ctrl-C while the reply to the final "." was awaited: as a lost reply (RFC 5321 §4.1.1.4, RFC 1047), the
    relay may have the message; `uncertain`, so `resend_uncertain = false` holds for it too."""
    return _lost_final_reply("interrupted (Ctrl-C) while awaiting the reply to the final \".\"")


def translate(exc: BaseException, phase: Phase, connected: bool, dot_sent: bool = False,
              reply_code: int | None = None) -> Failure:
    """Map any exception raised during an SMTP session to failure facts.

    `dot_sent`: the final "." of DATA was handed to the relay and its reply was being awaited. The transport
    returns every reply it parsed as a value, so an exception there means no valid reply at all: a lost
    connection, a reply without a code, an oversized reply (code -1), a timeout. The relay may have queued the message all the same (RFC 5321 §4.1.1.4, RFC 1047).
    `reply_code`: the code the relay's last reply began with, read off the wire (an oversized reply keeps it).
    """
    names = _foreign_names(exc)
    if reply_code is not None and not dot_sent and _is_too_long(exc):
        return too_long(phase, reply_code)
    for name, handler in _HANDLERS:
        if name in names:
            failure = handler(exc, phase, connected)
            break
    else:
        failure = _stdlib(exc, phase, connected)
    if dot_sent:  # a code here is smtpwire's (-1), not the relay's: say what went wrong without it
        what = failure.detail if failure.smtp_code is None else _clean(str(getattr(exc, "message", exc)))
        return _lost_final_reply(f"no valid reply to the final \".\" ({what})")
    return failure


def _is_too_long(exc: BaseException) -> bool:
    return ("SMTPResponseException" in _foreign_names(exc) and str(getattr(exc, "message", "")) == _TOO_LONG
            and int(getattr(exc, "code", 0) or 0) == -1)


def contradictory_final_reply(codes: Sequence[int], code: int, text: str) -> Failure | None:
    """The failure of a reply to the final "." of DATA that both takes the message and does not; None for any
    other reply. `codes`: those its lines began with, read off the wire (`code_of_lines`' input); `code` and `text`:
    the reply as read, its code the one `code_of_lines` classed it by (never less severe than its last line's).

    RFC 5321 §4.2.1 wants the same code on every line. When one line is a 2yz (§4.1.1.4: the relay has taken the
    message and is responsible for it) and the reply is classed by a 4yz, a 5yz or no valid code at all, which
    line the relay meant cannot be known: it may have queued the message, exactly as when its reply is lost (RFC
    1047). So it is a lost reply (`uncertain`: not re-sent in this run, once by `retry`): classed by its most
    severe line, as every other reply is, a `451-` line would have the message re-sent at once (a copy per
    attempt from a relay that queued it), a `550-` line would report as refused a message the recipients may have.
    Every other command keeps that severity rule: nothing is handed over before the final "."."""
    success = next((c for c in codes if c // 100 == 2), None)
    if success is None or code // 100 == 2:
        return None
    # The relay's text last, as in every reply's failure: cutting it to scrub.MAX_TEXT keeps what this means.
    return _lost_final_reply(f"contradictory reply to the final \".\" (lines {success} and {code}; RFC 5321 §4.2.1 "
                             "wants one code)", said=_clean(text), smtp_code=code)


def _lost_final_reply(why: str, said: str = "", smtp_code: int | None = None) -> Failure:
    return Failure(ErrorCode.SMTP_TRANSIENT, Phase.DATA,
                   f"{why}; the relay may have accepted the message, so it is not re-sent in this run"
                   + (f"; it said: {said}" if said else ""), smtp_code=smtp_code, maybe_delivered=True)


def _response(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    code = int(getattr(exc, "code", 0) or 0)
    text = str(getattr(exc, "message", "") or "")
    if text == _TOO_LONG and code == -1:
        return too_long(phase)
    if code <= 0:  # -1: no reply code
        return Failure(ErrorCode.SMTP_TRANSIENT if connected else ErrorCode.SMTP_CONNECT, phase, _clean(text))
    return failure_from_reply(reply(code, text), phase)


def _connect_response(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    code = int(getattr(exc, "code", 0) or 0)
    if str(getattr(exc, "message", "")) == _TOO_LONG and code == -1:
        return too_long(Phase.CONNECT)
    return failure_from_reply(reply(code, str(getattr(exc, "message", ""))), Phase.CONNECT, "greeting")


def _timeout(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    if not connected:
        return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, "TCP connect timed out")
    return Failure(ErrorCode.SMTP_TRANSIENT, phase, f"relay stopped answering during {phase.value}")


def _disconnected(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLError) or phase is Phase.TLS:
        return _tls(cause, phase) if isinstance(cause, ssl.SSLError) else Failure(
            ErrorCode.SMTP_TLS, phase, "relay closed the connection during the TLS handshake")
    return Failure(ErrorCode.SMTP_TRANSIENT, phase, f"relay dropped the connection during {phase.value}")


def _unsendable(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    """A command of ours holding a CR or LF (RFC 5321 §2.3.8: CRLF ends a command, so the rest would be a second
    one): an injection attempt that got past the checks above the wire, never written. The same input fails the same
    way on every attempt, so it is permanent; the line itself is not quoted (it holds the control characters)."""
    return Failure(ErrorCode.SMTP_VALIDATION, phase, f"refused to send a {phase.value} command holding a CR or LF "
                   "(a line break would start another command; RFC 5321 §2.3.8); nothing of it was sent")


def _generic(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    cause = _root_cause(exc)
    if cause is not exc:
        return _stdlib(cause, phase, connected)
    return Failure(ErrorCode.SMTP_TRANSIENT if connected else ErrorCode.SMTP_CONNECT, phase, _clean(str(exc)))


# Most specific first. tests/unit/test_classify.py fails if an smtpwire exception class is missing here.
_HANDLERS: tuple[tuple[str, Callable[[BaseException, Phase, bool], Failure]], ...] = (
    ("SMTPConnectResponseError", _connect_response),
    ("SMTPConnectTimeoutError", _timeout),
    ("SMTPServerDisconnected", _disconnected),
    ("SMTPAuthenticationError", _response),
    ("SMTPSenderRefused", _response),
    ("SMTPRecipientRefused", _response),
    ("SMTPDataError", _response),
    ("SMTPHeloError", _response),
    ("SMTPResponseException", _response),
    ("SMTPUnsendableCommand", _unsendable),
    ("SMTPException", _generic),
)
HANDLED_NAMES = frozenset(name for name, _ in _HANDLERS)


def _stdlib(exc: BaseException, phase: Phase, connected: bool) -> Failure:
    if isinstance(exc, ssl.SSLError):
        return _tls(exc, phase)
    if isinstance(exc, socket.gaierror):
        return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, f"cannot resolve host: {exc.strerror or exc}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _timeout(exc, phase, connected)
    if isinstance(exc, OSError) and not connected:
        return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, f"TCP connect failed: {exc.strerror or exc}")
    if isinstance(exc, (OSError, EOFError)):
        if phase is Phase.TLS:
            return Failure(ErrorCode.SMTP_TLS, phase, f"TLS handshake failed: {exc.strerror or exc}"
                           if isinstance(exc, OSError) else "TLS handshake failed")
        return Failure(ErrorCode.SMTP_TRANSIENT, phase, f"connection lost during {phase.value}")
    # Anything else is a defect of ours or a library's; keep the delivery retryable and say what it was.
    return Failure(ErrorCode.SMTP_TRANSIENT, phase, f"unexpected {type(exc).__name__} during {phase.value}")


def _tls(exc: ssl.SSLError, phase: Phase) -> Failure:
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or "verification failed"
        code = getattr(exc, "verify_code", None)  # OpenSSL's X509_V_ERR_*; absent on one raised by hand
        code = code if isinstance(code, int) else None
        detail = f"relay certificate not trusted: {why}"
        from certbot_smtp_dist._internal import x509strict

        if code is not None and x509strict.is_strict_only(code):  # older Pythons accepted it: say what mends it
            detail += f"; {x509strict.hint(code)}"
        return Failure(ErrorCode.SMTP_TLS, Phase.TLS, detail, verify_code=code)
    return Failure(ErrorCode.SMTP_TLS, Phase.TLS, f"TLS handshake failed: {exc.reason or type(exc).__name__}")


def _foreign_names(exc: BaseException) -> set[str]:
    return {k.__name__ for k in type(exc).__mro__ if k.__module__ == _SMTP_ERRORS_FROM}


_SMTP_ERRORS_FROM = "certbot_smtp_dist._internal.smtpwire"


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    cur: BaseException = exc
    while (nxt := cur.__cause__ or cur.__context__) is not None and id(nxt) not in seen:
        if isinstance(nxt, ssl.SSLError):
            return nxt
        seen.add(id(nxt))
        cur = nxt
    return cur


def _clean(text: str) -> str:
    """Relay text is untrusted: one line, printable. (Scrubbed and bounded by scrub.py, which knows the secrets.)"""
    return scrub.one_line(text)
