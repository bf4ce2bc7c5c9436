"""smtpwire reads the relay's replies whole however its octets are cut into reads, bounded, and with the codes
their lines began with (classify.code_of_lines classes a reply by them: RFC 5321 §4.2.1)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certbot_smtp_dist._internal import classify, smtpwire, transport
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Message, Phase

CODE = re.compile(rb"([2-5][0-9][0-9])(?:[ \-\r\n]|$)")


def reference(data: bytes) -> list[tuple[int, str, tuple[int, ...]]]:
    """Whole replies read off `data` line by line, as RFC 5321 §4.2 describes them: (code, text, line codes)."""
    replies, lines = [], []
    for line in data.split(b"\n")[:-1]:
        lines.append(line + b"\n")
        if line[3:4] != b"-":
            seen: dict[int, None] = {}
            for whole in lines:
                match = CODE.match(whole[:4])
                if match:
                    seen.pop(int(match.group(1)), None)
                    seen[int(match.group(1))] = None
            codes = tuple(seen)
            last = int(lines[-1][:3])
            code = classify.code_of_lines(codes, last)
            text = b"\n".join(x[4:].strip(b" \t\r\n") for x in lines).decode("utf-8", "surrogateescape")
            replies.append((last if code is None else code, text, codes))
            lines = []
    return replies


def read_all(reads: list[bytes], count: int) -> list[tuple[int, str, tuple[int, ...]]]:
    """Feed `reads` to a protocol as the loop would, one per turn, while `count` replies are read in turn."""

    async def run() -> list[tuple[int, str, tuple[int, ...]]]:
        protocol = smtpwire._Replies(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        for at, chunk in enumerate(reads):
            loop.call_later(0.001 * (at + 1), protocol.data_received, chunk)
        found = []
        for _ in range(count):
            reply = await asyncio.wait_for(protocol.read_response(), 5)
            found.append((reply.code, reply.message, protocol.read))
        return found

    return asyncio.run(run())


REPLY_LINES = st.lists(st.sampled_from([b"250-", b"451-", b"550-", b"250-SIZE 1000", b"250-AUTH PLAIN",
                                        b"250-\t", b"553-x"]).map(lambda x: x + b"\r\n"), max_size=5)
LAST = st.sampled_from([b"250 ok", b"221 Bye", b"354 go", b"550 no", b"451 later", b"250", b"550\tx",
                        b"220 relay ESMTP", b"999 odd"]).map(lambda x: x + b"\r\n")
REPLIES = st.lists(st.tuples(REPLY_LINES, LAST).map(lambda t: b"".join(t[0]) + t[1]), min_size=1, max_size=4)


@given(REPLIES, st.lists(st.integers(0, 120), max_size=8))
def test_every_cut_of_the_octets_reads_the_same_replies(replies: list[bytes], cuts: list[int]) -> None:
    data = b"".join(replies)
    points = sorted({min(c, len(data)) for c in cuts})
    reads = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert read_all([r for r in reads if r], len(replies)) == reference(data)


def read_at_once(data: bytes) -> list[object]:
    """Every reply read off `data` handed over in one piece, then the failure that ended the reading if any (its
    class, code, text and the code it is classed by), and what was left unread."""
    loop = asyncio.new_event_loop()
    loop.close()  # never run: nothing is awaited here
    protocol = smtpwire._Replies(loop)
    protocol.data_received(data)
    found: list[object] = []
    while True:
        try:
            reply = protocol._next()
        except smtpwire.SMTPResponseException as exc:
            found.append((type(exc).__name__, exc.code, exc.message, protocol.code()))
            break
        except ValueError as exc:  # a line shorter than a code, whose int() read on into the next line
            found.append((type(exc).__name__, str(exc)))
            break
        if reply is None:
            break
        found.append((reply.code, reply.message, protocol.read))
    found.append(bytes(protocol._buffer))
    return found


START = st.one_of(st.sampled_from([b"250", b"251", b"550", b"451"]),  # well-formed half the time
                  st.sampled_from([b"220", b"199", b"999", b"2 5", b" 25", b"+25", b"2_5", b"25", b"2", b"", b"25a",
                                   b"\xd9\xa25"]))
SEPARATOR = st.one_of(st.sampled_from([b"-", b" "]), st.sampled_from([b"\r", b"\t", b"", b"\n", b"x"]))
BODY = st.one_of(st.sampled_from([b"", b"ok", b" \t", b"2.1.0 Ok", b"\r", b"\xff"]),
                 st.integers(smtpwire.MAX_LINE - 8, smtpwire.MAX_LINE - 3).map(lambda n: b"x" * n))
LINE = st.tuples(START, SEPARATOR, BODY, st.sampled_from([b"\r\n", b"\r\n", b"\n", b""])).map(b"".join)


@settings(max_examples=400)
@given(st.lists(LINE, min_size=1, max_size=12))
def test_a_reply_read_in_one_match_reads_as_line_by_line(lines: list[bytes]) -> None:
    """The one-match reading of a reply whose lines all begin with one code (_UNIFORM_REPLY, the usual reply)
    gives what the line-by-line reading gives, for any octets: replies, codes, failures, bounds, what is left."""
    data = b"".join(lines)
    matched = read_at_once(data)
    general = smtpwire._UNIFORM_REPLY
    smtpwire._UNIFORM_REPLY = re.compile(rb"(?!)")  # matches nothing: every reply read line by line
    try:
        assert matched == read_at_once(data)
    finally:
        smtpwire._UNIFORM_REPLY = general


def test_a_reply_whose_lines_disagree_is_classed_by_the_most_severe() -> None:
    # RFC 5321 §4.2.1 wants one code; a `250-` then `550` is a refusal, a `550-` then `250` too.
    assert read_all([b"250-fine\r\n550 no\r\n"], 1) == [(550, "fine\nno", (250, 550))]
    assert read_all([b"550-no\r\n250 fine\r\n"], 1) == [(550, "no\nfine", (550, 250))]


def failure_of(reads: list[bytes], awaited: bool = False) -> tuple[smtpwire.SMTPResponseException, int | None]:
    """The failed read and the code it is classed by; `awaited`: the octets arrive while the read awaits them,
    one read a loop turn, and the code is taken after all have arrived."""
    async def run() -> tuple[smtpwire.SMTPResponseException, int | None]:
        loop = asyncio.get_running_loop()
        protocol = smtpwire._Replies(loop)
        for at, chunk in enumerate(reads):
            if awaited:
                loop.call_later(0.001 * (at + 1), protocol.data_received, chunk)
            else:
                protocol.data_received(chunk)
        with pytest.raises(smtpwire.SMTPResponseException) as caught:
            await asyncio.wait_for(protocol.read_response(), 5)
        await asyncio.sleep(0.001 * (len(reads) + 2))
        return caught.value, protocol.code()

    return asyncio.run(run())


def test_a_line_past_max_line_is_too_long_and_keeps_its_code() -> None:
    error, code = failure_of([b"451-" + b"x" * smtpwire.MAX_LINE])
    assert (error.code, error.message, code) == (-1, smtpwire.TOO_LONG, 451)


def test_a_line_at_max_line_is_read() -> None:
    line = b"250 " + b"x" * (smtpwire.MAX_LINE - 6) + b"\r\n"
    assert len(line) == smtpwire.MAX_LINE
    assert read_all([line], 1)[0][0] == 250


def test_a_reply_past_max_reply_is_too_long_and_keeps_its_codes() -> None:
    line = b"550-" + b"x" * 1000 + b"\r\n"
    error, code = failure_of([line * (smtpwire.MAX_REPLY // len(line) + 1)])
    assert (error.message, code) == (smtpwire.TOO_LONG, 550)


def test_a_line_without_a_code_is_malformed() -> None:
    error, code = failure_of([b"hello there\r\n"])
    assert error.code == -1 and error.message.startswith("Malformed SMTP response line")


@pytest.mark.parametrize("reply", [b"25\r\n", b"25\n", b"\r\n250 ok\r\n", b"\n250 ok\r\n", b"2\n",
                                   b"250-ok\r\n25\r\n", b"250-ok\r\n\r\n250 ok\r\n"])
def test_a_line_shorter_than_a_reply_code_is_malformed(reply: bytes) -> None:
    """RFC 5321 §4.2: a code's three octets begin every line. int() read on past a short line's end ("25\n" was
    code 25; "\r\n250 ok" code 2, and then a bare ValueError out of the read)."""
    error, _ = failure_of([reply])
    assert error.code == -1 and error.message.startswith("Malformed SMTP response line"), error


def test_unasked_octets_are_bounded_too() -> None:
    """A relay talking while nobody awaits a reply keeps at most MAX_REPLY octets; the next read fails."""
    error, _ = failure_of([b"250-" + b"x" * 1000 + b"\r\n"] * (smtpwire.MAX_REPLY // 1000 + 2))
    assert error.message == smtpwire.TOO_LONG


def test_plaintext_after_the_starttls_reply_is_forgotten() -> None:
    """RFC 3207 §4.2 (CVE-2011-0411): what came in clear after the 220 is never read as a later reply."""

    async def run() -> str:
        protocol = smtpwire._Replies(asyncio.get_running_loop())
        protocol.data_received(b"220 go ahead\r\n250 injected\r\n")
        assert (await protocol.read_response()).code == 220
        protocol.forget_plaintext()
        protocol.data_received(b"250 the real one\r\n")
        return (await protocol.read_response()).message

    assert asyncio.run(run()) == "the real one"


def test_a_read_with_a_timeout_fails_as_timed_out_and_the_next_read_gets_the_late_reply() -> None:
    """The greeting's own timeout (Client.connect: SMTPConnectTimeoutError, "server ready"): a read given one fails
    with asyncio.TimeoutError when nothing came; a reply arriving afterwards is not lost, and a read whose reply
    comes in time is not failed later by its timer."""

    async def run() -> tuple[str, str]:
        protocol = smtpwire._Replies(asyncio.get_running_loop())
        with pytest.raises(asyncio.TimeoutError):
            await protocol.read_response(0.02)
        protocol.data_received(b"220 late\r\n")
        late = (await protocol.read_response(5)).message
        asyncio.get_running_loop().call_later(0.01, protocol.data_received, b"250 in time\r\n")
        in_time = (await protocol.read_response(0.05)).message
        await asyncio.sleep(0.1)  # past the second read's timeout: its timer must be gone
        return late, in_time

    assert asyncio.run(run()) == ("late", "in time")


def test_a_lost_connection_fails_the_read_with_its_cause() -> None:
    async def run() -> BaseException:
        protocol = smtpwire._Replies(asyncio.get_running_loop())
        reading = asyncio.ensure_future(protocol.read_response())
        await asyncio.sleep(0)
        protocol.connection_lost(ConnectionResetError("reset"))
        with pytest.raises(smtpwire.SMTPServerDisconnected) as caught:
            await reading
        return caught.value

    error = asyncio.run(run())
    assert isinstance(error.__cause__, ConnectionResetError)


@pytest.mark.parametrize(("text", "extensions", "mechanisms"), [
    ("relay.example\nSIZE 1000\nAUTH PLAIN LOGIN\nSTARTTLS", {"size": "1000", "auth": "PLAIN LOGIN", "starttls": ""},
     ["plain", "login"]),
    ("relay.example\nAUTH=LOGIN", {"auth": "LOGIN"}, ["login"]),
    ("relay.example", {}, []),
])
def test_ehlo_extensions(text: str, extensions: dict[str, str], mechanisms: list[str]) -> None:
    assert smtpwire._extensions(text) == (extensions, mechanisms)


def test_the_lines_after_an_over_long_one_still_class_the_reply() -> None:
    """Its text is dropped, but a `451-` line too long to read followed by a `550` is a refusal (RFC 5321 §4.2.1),
    whether the rest comes in the same read or in later ones."""
    long_line = b"451-" + b"x" * smtpwire.MAX_LINE + b"\r\n"
    assert failure_of([long_line + b"250-fine\r\n550 5.7.1 no\r\n"])[1] == 550
    assert failure_of([long_line[:5000], long_line[5000:] + b"550-5.7", b".1 no\r\n"], awaited=True)[1] == 550
    assert failure_of([long_line[:9000], long_line[9000:], b"250-ok\r\n", b"550 no\r\n"], awaited=True)[1] == 550
    # The reply ends with its last line: what comes after it is not the failed reply's.
    assert failure_of([long_line + b"451 later\r\n550 next reply\r\n"])[1] == 451
    # An over-long last line: nothing after it belongs to the reply.
    assert failure_of([b"451 " + b"x" * smtpwire.MAX_LINE + b"\r\n550 next\r\n"])[1] == 451


def test_a_command_holding_a_line_break_is_never_written() -> None:
    """Defence in depth under the address and header checks: CR or LF in a command would start a second one."""

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        sent: list[bytes] = []

        class Transport(asyncio.Transport):
            def write(self, data: bytes | bytearray | memoryview) -> None:
                sent.append(bytes(data))

            def is_closing(self) -> bool:
                return False

        client = smtpwire.Client(sock=None, hostname="relay.test", use_tls=False,  # type: ignore[arg-type]
                                 tls_context=None, timeout=None, local_hostname="client.test")
        client.protocol = smtpwire._Replies(loop)
        client.protocol.transport = Transport()
        for bad in ("a@example.com>\r\nRCPT TO:<b@example.com", "a@example.com\n"):
            with pytest.raises(smtpwire.SMTPException, match="line break"):
                await client.mail(bad)
        return sent

    assert asyncio.run(run()) == []


@pytest.mark.parametrize("sender", ["a@example.com>\r\nRCPT TO:<b@example.com", "a@example.com\n", "a\r@example.com"])
def test_a_command_holding_a_line_break_fails_as_validation_never_retried(relay_factory: Any, sender: str) -> None:
    """The refusal above, as a delivery ends with it against a real relay: no retry can make the command sendable,
    so it is SMTP_VALIDATION (permanent, never spooled for retry; README's table of error codes), not a transient
    failure, and its detail names the problem without the control characters."""
    relay = relay_factory(mode="plaintext")
    doc = {"targets": {"t": {"host": "127.0.0.1", "port": relay.port, "tls_mode": "plaintext",
                             "from_address": "a@example.com", "to": ["b@example.com"], "timeout": 10}}}
    target = parse_settings(doc, Path("c.toml"), {}, {f.name: f for f in BUILTIN_FORMATS}).targets[0]
    message = Message(message_id="<m@example.com>", subject="s", envelope_from=sender,
                      envelope_to=("b@example.com",), data=b"Subject: s\r\n\r\nbody\r\n")
    outcome = asyncio.run(transport.deliver(target, message, None, 10.0))
    failure = outcome.failure
    assert failure is not None and not outcome.accepted
    assert (failure.code, failure.phase, failure.is_retryable) == (ErrorCode.SMTP_VALIDATION, Phase.MAIL, False)
    assert "CR or LF" in failure.detail
    assert failure.detail.isprintable()
    assert relay.messages == []
