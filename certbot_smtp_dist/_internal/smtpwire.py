"""The SMTP client side on asyncio's own transports: replies read whole and bounded, commands written one at a time.

transport.py drives it (one session under one deadline); transcript.py wraps it for `-vv`. It speaks only what a
delivery needs: the greeting, EHLO, STARTTLS, AUTH PLAIN/LOGIN and the bearer mechanisms' raw commands, MAIL, RCPT,
DATA in its two steps, NOOP and QUIT (RFC 5321 §3, RFC 3207, RFC 4954). No PIPELINING: every command awaits its
reply before the next is written, so a reply always answers the command before it.

Its errors are classify.py's to read (matched by name: SMTPResponseException and its kinds carry a reply, the
others say what went wrong on the wire). Every reply is bounded: a line at MAX_LINE octets, a reply at MAX_REPLY;
past either the read fails as a reply too long to read, and the codes its lines began with are still noted, for
the classification (`code()`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
from typing import Any, NamedTuple, NoReturn

from certbot_smtp_dist._internal import classify

MAX_LINE = 8192  # octets of one reply line, its end included (RFC 5321 §4.5.3.1.5 allows 512)
MAX_REPLY = 4 * 8192  # octets of one reply, all its lines (an EHLO reply lists a few extensions)
TOO_LONG = "Response too long"  # classify.py's word for it


class Response(NamedTuple):
    """One reply (RFC 5321 §4.2): its code, classed over all its lines (classify.code_of_lines), and its text, the
    lines' texts joined by "\\n"."""

    code: int
    message: str


# -- errors: the names classify.py matches ---------------------------------------------------------------------


class SMTPException(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SMTPUnsendableCommand(SMTPException, ValueError):
    """A command line of ours holding a CR or LF, never written: no retry can make it sendable."""


class SMTPServerDisconnected(SMTPException, ConnectionError):
    """The connection ended, or was never there, while a reply was awaited or a command was to be written."""


class SMTPConnectTimeoutError(SMTPException, TimeoutError):
    """No greeting within the connection's own timeout: the relay was reached ("server ready" says so)."""


class SMTPResponseException(SMTPException):
    """A reply that is not the one the command needs; code -1: no valid reply at all."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class SMTPConnectResponseError(SMTPResponseException):
    pass


class SMTPHeloError(SMTPResponseException):
    pass


class SMTPDataError(SMTPResponseException):
    pass


class SMTPAuthenticationError(SMTPResponseException):
    pass


class SMTPSenderRefused(SMTPResponseException):
    def __init__(self, code: int, message: str, sender: str) -> None:
        super().__init__(code, message)
        self.sender = sender


class SMTPRecipientRefused(SMTPResponseException):
    def __init__(self, code: int, message: str, recipient: str) -> None:
        super().__init__(code, message)
        self.recipient = recipient


# -- the protocol ---------------------------------------------------------------------------------------------


class _Replies(asyncio.Protocol):
    """Octets in, whole replies out, one awaited at a time. Also what transport.py knows of the replies as
    `reply_head`: `read`, the codes the lines of the reply last read began with, and `code()`, the code of a
    reply that failed, from its lines seen so far."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # octets of replies not yet read
        self._scanned = 0  # octets of _buffer split into the complete lines of the reply under way
        self._codes: list[int] = []  # per such line: the code it began with, or -1 (none)
        self._waiter: asyncio.Future[Response] | None = None
        self._lost: BaseException | None = None
        self.closed = False
        self._failed: SMTPResponseException | None = None  # a reply past its bounds: nothing after it is read
        self._failed_codes: tuple[int, ...] = ()
        self._draining = False  # the lines of a failed reply are still arriving (_drain)
        self._drain_head: bytearray | None = None
        self.frozen = False  # set when the session fails: the QUIT after it leaves `read` as the failure saw it
        self.read: tuple[int, ...] = ()

    # -- asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._failed is not None:
            if self._draining:
                self._drain(data)
            return
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            if len(self._buffer) > MAX_REPLY:  # unasked (a 421 before closing, RFC 5321 §3.8), bounded all the same
                with contextlib.suppress(SMTPResponseException):
                    self._too_long()
            return
        try:
            found = self._next()
        except SMTPResponseException as exc:
            _fail_waiter(waiter, exc)
            return
        if found is not None:
            waiter.set_result(found)

    def eof_received(self) -> bool | None:
        return False  # a relay that half-closes has nothing more to say: close

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._lost = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            _fail_waiter(waiter, self._disconnected())

    # -- ours
    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise self._disconnected()
        self.transport.write(data)

    async def read_response(self, timeout: float | None = None) -> Response:
        """The next whole reply: one already buffered (a relay may speak before it is asked, RFC 5321 §3.8),
        else the next to arrive. `timeout`: None waits as long as the caller's deadline lets it."""
        if self._failed is not None:
            raise self._failed
        found = self._next()
        if found is not None:
            return found
        if self.closed:
            raise self._disconnected()
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._waiter = waiter
        # A timer of its own that fails the read, not wait_for: no second future, no loop turn between.
        timer = None if timeout is None else self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def forget_plaintext(self) -> None:
        """After the 220 to STARTTLS: drop whatever came in clear after it (RFC 3207 §4.2; response injection, the
        class of CVE-2011-0411: a man in the middle appends there the replies to the commands we send inside
        TLS)."""
        del self._buffer[:]
        self._scanned = 0
        self._codes.clear()

    def code(self) -> int | None:
        """The code of the reply that failed (or is under way), from the starts of its lines seen so far."""
        return classify.code_of_lines(self._failed_codes if self._failed is not None else self._so_far())

    # -- reading
    def _disconnected(self) -> SMTPServerDisconnected:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = self._lost
        return error

    def _so_far(self) -> tuple[int, ...]:
        head = bytes(self._buffer[self._scanned:self._scanned + 4])
        partial = _line_code(head if len(head) == 4 else head + b"\n")
        return _distinct([*self._codes, partial])

    def _next(self) -> Response | None:
        """The first whole reply buffered, taken out of the buffer; None while it is not whole. Its code is the
        one classify.code_of_lines classes it by, over the codes all its lines began with."""
        if not self._buffer:
            return None
        if not self._scanned:  # a reply read whole as it usually comes, in one piece, by one match
            uniform = _UNIFORM_REPLY.match(self._buffer)
            if uniform is not None and uniform.end() <= MAX_LINE:  # so no line, nor the reply, is past its bound
                return self._take(uniform.end(), (int(uniform.group(1)),))
        end = self._scan()
        if end is None:
            return None
        return self._take(end, _distinct(self._codes))

    def _take(self, end: int, codes: tuple[int, ...]) -> Response:
        """The reply that ends at `end`, its lines having begun with `codes` (each once), out of the buffer."""
        lines = bytes(self._buffer[:end]).split(b"\n")[:-1]
        del self._buffer[:end]
        self._scanned, self._codes = 0, []
        last = int(lines[-1][:3])  # _scan read every line's so
        texts = [line[4:].strip(b" \t\r\n") for line in lines]
        if not self.frozen:
            self.read = codes
        code = classify.code_of_lines(codes, last)
        return Response(last if code is None else code, b"\n".join(texts).decode("utf-8", "surrogateescape"))

    def _scan(self) -> int | None:
        """Split the reply under way into lines from where the last scan stopped: the octets up to its end, or
        None while it has not ended (RFC 5321 §4.2.1: its last line has no "-" after the code). Raises when it
        passes its bounds."""
        buffer = self._buffer
        while True:
            newline = buffer.find(b"\n", self._scanned)
            if newline < 0:
                if len(buffer) - self._scanned > MAX_LINE or len(buffer) > MAX_REPLY:
                    self._too_long()
                return None
            if newline + 1 - self._scanned > MAX_LINE or newline + 1 > MAX_REPLY:
                self._too_long()
            start = self._scanned
            head = bytes(buffer[start:start + 3])
            try:
                # The code as every SMTP library reads it (strict starts: _line_code), but from three octets before
                # the line's end: int() skips whitespace, so "25\n" was code 25, and "\r\n250 ok" code 2, which
                # then raised a bare ValueError out of the read.
                if newline - start < 3 or b"\r" in head:
                    raise ValueError("a line shorter than a reply code")
                int(head)
            except ValueError:
                self._fail(SMTPResponseException(-1, "Malformed SMTP response line: "
                                                 + bytes(buffer[start:newline + 1]).decode("utf-8", errors="ignore")))
            self._codes.append(_line_code(bytes(buffer[start:start + 4])))
            self._scanned = newline + 1
            if buffer[start + 3:start + 4] != b"-":
                return self._scanned

    def _too_long(self) -> None:
        """A reply past MAX_LINE or MAX_REPLY, from the line at `_scanned` on. Its text is dropped; the codes of
        its later lines are still noted as they arrive (`_drain`), so that a reply is classed by all its lines,
        however long one of them was (a `451-` line of 9000 octets before a `550` is a refusal)."""
        start = self._scanned
        rest = bytes(self._buffer[start:]) if self._buffer[start + 3:start + 4] == b"-" else None
        self._fail(SMTPResponseException(-1, TOO_LONG), rest)

    def _fail(self, error: SMTPResponseException, rest: bytes | None = None) -> NoReturn:
        """No valid reply: it is dropped with everything after it, the codes of its lines kept, and every later
        read fails the same way. `rest`: the octets from the start of a line that continues the reply."""
        self._failed_codes = self._so_far()
        del self._buffer[:]
        self._scanned = 0
        self._codes.clear()
        self._failed = error
        if rest is not None:
            self._draining, self._drain_head = True, None
            self._drain(rest)
        raise error

    def _drain(self, data: bytes) -> None:
        """The codes of the lines of a failed reply, up to its last line, noted without keeping any text."""
        at = 0
        while self._draining and at < len(data):
            end = data.find(b"\n", at)
            if self._drain_head is None:  # the rest of the line that failed: its code is noted already
                if end < 0:
                    return
                self._drain_head, at = bytearray(), end + 1
                continue
            head = self._drain_head
            if len(head) < 4:
                head += data[at:len(data) if end < 0 else end + 1][:4 - len(head)]
            if end < 0:
                return
            line = bytes(head)
            head.clear()
            at = end + 1
            self._failed_codes = _distinct([*self._failed_codes, _line_code(line)])
            self._draining = line[3:4] == b"-"


# A whole reply whose lines all begin with one code, as _scan reads them: each line's first three octets that code
# (int() reads it, _line_code takes it), then "-" on every line but the last, and on the last " ", CR or its end.
_UNIFORM_REPLY = re.compile(rb"([2-5][0-9][0-9])(?:-[^\n]*\n\1)*(?:[ \r][^\n]*)?\n")


def _fail_waiter(waiter: asyncio.Future[Response], error: BaseException) -> None:
    """The awaited read fails with `error`, marked as retrieved: should the reading task be cancelled before it
    wakes (the session's deadline in the same loop turn), asyncio would otherwise report "Future exception was
    never retrieved" on the way out. The reader still gets it."""
    waiter.set_exception(error)
    waiter.exception()


def _expire(waiter: asyncio.Future[Response]) -> None:
    """A read's own timeout: it fails as asyncio.wait_for's would, with asyncio.TimeoutError."""
    if not waiter.done():
        _fail_waiter(waiter, asyncio.TimeoutError())


def _line_code(head: bytes) -> int:
    """The reply code a line's first octets carry (RFC 5321 §4.2: three digits, then " ", "-" or the line's end),
    -1 when they carry none. Only 2yz to 5yz are codes a reply can be classed by."""
    if (len(head) >= 4 and b"2" <= head[:1] <= b"5" and head[1:3].isdigit()
            and head[3:4] in (b" ", b"-", b"\r", b"\n")):
        return int(head[:3])
    return -1


def _distinct(codes: list[int]) -> tuple[int, ...]:
    """The codes, each once, in the order of its last line; lines without a code left out."""
    seen: dict[int, None] = {}
    for code in codes:
        if code > 0:
            seen.pop(code, None)
            seen[code] = None
    return tuple(seen)


# -- the client -----------------------------------------------------------------------------------------------


class Client:
    """One SMTP session over a socket already connected (or one dialled here), as transport.py conducts it."""

    def __init__(self, *, sock: socket.socket, hostname: str | None, use_tls: bool,
                 tls_context: ssl.SSLContext | None, timeout: float | None, local_hostname: str) -> None:
        self._sock: socket.socket | None = sock
        self.hostname = hostname
        self.use_tls = use_tls
        self.tls_context = tls_context
        self.timeout = timeout  # for the greeting only; transport.py sets None after connect()
        self.local_hostname = local_hostname
        self.protocol: _Replies | None = None
        self.transport: asyncio.Transport | None = None
        self.esmtp_extensions: dict[str, str] = {}
        self.server_auth_methods: list[str] = []

    @property
    def is_connected(self) -> bool:
        return self.protocol is not None and not self.protocol.closed

    @property
    def reply_head(self) -> _Replies | None:
        return self.protocol

    def get_transport_info(self, key: str) -> Any:
        if self.transport is None:
            raise SMTPServerDisconnected("Connection lost")
        return self.transport.get_extra_info(key)

    def supports_extension(self, name: str) -> bool:
        return name.lower() in self.esmtp_extensions

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self._sock is not None and self.protocol is None:
            self._sock.close()
        self._sock = None

    async def connect(self) -> Response:
        """The connection (implicit TLS first, RFC 8314 §3.3) and the greeting (RFC 5321 §4.3.1: 220)."""
        loop = asyncio.get_running_loop()
        sock, self._sock = self._sock, None
        assert sock is not None
        tls = self.tls_context if self.use_tls else None
        try:
            transport, protocol = await loop.create_connection(
                lambda: _Replies(loop), sock=sock, ssl=tls, server_hostname=self.hostname if tls else None)
        except BaseException:
            sock.close()
            raise
        assert isinstance(transport, asyncio.Transport) and isinstance(protocol, _Replies)
        self.transport, self.protocol = transport, protocol
        try:
            greeting = await protocol.read_response(self.timeout)
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise SMTPConnectTimeoutError("Timed out waiting for server ready message") from exc
        if greeting.code != 220:
            raise SMTPConnectResponseError(greeting.code, greeting.message)
        return greeting

    async def execute_command(self, *args: bytes) -> Response:
        """One command line (RFC 5321 §2.3.8: ended by CRLF) and its reply, whatever it is. A line holding a CR or
        LF of its own is never written: it would be a second command (every caller validated its input; this is the
        last word on it)."""
        line = b" ".join(args)
        if b"\r" in line or b"\n" in line:
            raise SMTPUnsendableCommand("refusing to send a command line holding a line break")
        protocol = self._protocol()
        protocol.write(line + b"\r\n")
        return await protocol.read_response(self.timeout)

    async def ehlo(self, hostname: str | None = None) -> Response:
        """EHLO (RFC 5321 §4.1.1.1); the extensions of its 250 replace those known (RFC 3207 §4.2 after TLS)."""
        reply = await self.execute_command(b"EHLO " + (hostname or self.local_hostname).encode("ascii"))
        if reply.code != 250:
            raise SMTPHeloError(reply.code, reply.message)
        self.esmtp_extensions, self.server_auth_methods = _extensions(reply.message)
        return reply

    async def starttls(self, server_hostname: str | None = None) -> Response:
        """STARTTLS (RFC 3207 §4): the 220, then the handshake on the same connection, verified by tls_context.
        What the relay said before is forgotten: the extensions, and any octets that came in clear after the 220."""
        reply = await self.execute_command(b"STARTTLS")
        if reply.code != 220:
            raise SMTPResponseException(reply.code, reply.message)
        protocol, transport = self._protocol(), self.transport
        assert transport is not None and self.tls_context is not None
        protocol.forget_plaintext()
        self.esmtp_extensions, self.server_auth_methods = {}, []
        loop = asyncio.get_running_loop()
        secured = await loop.start_tls(transport, protocol, self.tls_context,
                                       server_hostname=server_hostname or self.hostname)
        if secured is None:  # pragma: no cover - asyncio returns None only for a transport already closing
            raise SMTPServerDisconnected("Connection lost")
        self.transport = secured
        protocol.transport = secured
        return reply

    async def auth_plain(self, username: str, password: str) -> Response:
        """AUTH PLAIN with its initial response (RFC 4954 §4, RFC 4616: authzid empty, NUL, user, NUL, password)."""
        token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())
        reply = await self.execute_command(b"AUTH PLAIN " + token)
        if reply.code != 235:
            raise SMTPAuthenticationError(reply.code, reply.message)
        return reply

    async def auth_login(self, username: str, password: str) -> Response:
        """AUTH LOGIN: the user name as initial response (RFC 4954 §4), the password at the 334 that follows."""
        reply = await self.execute_command(b"AUTH LOGIN " + base64.b64encode(username.encode()))
        if reply.code == 334:
            reply = await self.execute_command(base64.b64encode(password.encode()))
        if reply.code != 235:
            raise SMTPAuthenticationError(reply.code, reply.message)
        return reply

    async def mail(self, sender: str, options: tuple[str, ...] = ()) -> Response:
        """MAIL FROM (RFC 5321 §4.1.1.2) with the ESMTP parameters in `options` (each `KEYWORD=value`)."""
        params = b"".join(b" " + option.encode("ascii") for option in options)
        reply = await self.execute_command(b"MAIL FROM:<" + sender.encode("ascii") + b">" + params)
        if reply.code != 250:
            raise SMTPSenderRefused(reply.code, reply.message, sender)
        return reply

    async def rcpt(self, recipient: str) -> Response:
        reply = await self.execute_command(b"RCPT TO:<" + recipient.encode("ascii") + b">")
        if reply.code not in (250, 251):
            raise SMTPRecipientRefused(reply.code, reply.message, recipient)
        return reply

    async def noop(self) -> Response:
        reply = await self.execute_command(b"NOOP")
        if reply.code != 250:
            raise SMTPResponseException(reply.code, reply.message)
        return reply

    async def quit(self) -> Response:
        """QUIT (RFC 5321 §4.1.1.10), then the connection closed whatever the reply."""
        try:
            reply = await self.execute_command(b"QUIT")
        finally:
            self.close()
        if reply.code != 221:
            raise SMTPResponseException(reply.code, reply.message)
        return reply

    def _protocol(self) -> _Replies:
        if self.protocol is None or self.protocol.closed:
            raise SMTPServerDisconnected("Connection lost")
        return self.protocol


def _extensions(text: str) -> tuple[dict[str, str], list[str]]:
    """The extensions of an EHLO reply's text (RFC 5321 §4.1.1.1: its first line names the relay; each later line
    is "keyword [params]"), keywords lower-cased, and the AUTH mechanisms (RFC 4954 §3), also from the old
    "AUTH=" spelling some relays still send."""
    extensions: dict[str, str] = {}
    mechanisms: list[str] = []
    for line in text.split("\n")[1:]:
        line = line.strip()
        if not line:
            continue
        if line[:5].upper() == "AUTH=":
            extensions["auth"] = line[5:]
            mechanisms += [m.lower() for m in line[5:].split()]
            continue
        keyword, _, params = line.partition(" ")
        keyword = keyword.lower()
        extensions[keyword] = params
        if keyword == "auth":
            mechanisms += [m.lower() for m in params.split()]
    return extensions, mechanisms
