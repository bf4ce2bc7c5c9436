"""One client connection of the fault server: a small ESMTP state machine."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import ssl
import sys
from collections.abc import Awaitable, Callable

from .faultrecords import Direction, Records
from .faultscript import (
    AUTH_BAD_REPLY,
    AUTH_OK_REPLY,
    NEED_AUTH_REPLY,
    NEED_TLS_REPLY,
    AcceptedMessage,
    FaultAuthAttempt,
    Reply,
    Script,
)

_ADDRESS = re.compile(r"<([^>]*)>")
_USERNAME_B64 = "VXNlcm5hbWU6"  # "Username:"
_PASSWORD_B64 = "UGFzc3dvcmQ6"  # "Password:"
#: Python 3.11+ has StreamWriter.start_tls; older versions go through loop.start_tls.
USE_STREAM_START_TLS = sys.version_info >= (3, 11)


def _code(lines: tuple[str, ...]) -> int:
    last = lines[-1] if lines else ""
    return int(last[:3]) if last[:3].isdigit() else 0


def _address(arg: str) -> str:
    match = _ADDRESS.search(arg)
    if match:
        return match.group(1)
    _, _, rest = arg.partition(":")
    return rest.strip().split(" ", 1)[0]


class _Hangup(Exception):
    """The client went away (or was dropped) in the middle of an exchange."""


class Session:
    def __init__(
        self,
        script: Script,
        records: Records,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stopping: asyncio.Event,
    ) -> None:
        self.records = records
        self.reader = reader
        self.writer = writer
        self.stopping = stopping
        self.number = records.new_connection()
        self.script = script.for_connection(self.number)
        self.tls = writer.get_extra_info("ssl_object") is not None
        self.user: str | None = None
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self._commands: dict[str, Callable[[str], Awaitable[bool]]] = {
            "EHLO": self.cmd_ehlo,
            "HELO": self.cmd_helo,
            "STARTTLS": self.cmd_starttls,
            "AUTH": self.cmd_auth,
            "MAIL": self.cmd_mail,
            "RCPT": self.cmd_rcpt,
            "DATA": self.cmd_data,
            "RSET": self.cmd_simple("RSET", "250 2.0.0 OK", reset=True),
            "NOOP": self.cmd_simple("NOOP", "250 2.0.0 OK"),
        }

    # ------------------------------------------------------------------ plumbing

    def log(self, direction: Direction, text: str, *, command: bool = False) -> None:
        self.records.line(self.number, direction, text, command=command)

    def event(self, text: str) -> None:
        self.log("*", text)

    def abort(self) -> None:
        self.writer.transport.abort()

    async def readline(self) -> str:
        raw = await self.reader.readline()
        if not raw:
            raise _Hangup("client closed the connection")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def send(self, lines: tuple[str, ...], trickle: float) -> None:
        for line in lines:
            self.log("S", line)
        payload = "".join(f"{line}\r\n" for line in lines).encode("utf-8")
        if not trickle:
            self.writer.write(payload)
            await self.writer.drain()
            return
        for index in range(len(payload)):
            if self.stopping.is_set():
                raise _Hangup("server stopping")
            self.writer.write(payload[index : index + 1])
            await self.writer.drain()
            await asyncio.sleep(trickle)

    async def respond(
        self,
        reply: Reply,
        default: tuple[str, ...],
        on_code: Callable[[int], None] | None = None,
    ) -> bool:
        """Send ``reply`` (or ``default``); False when the session must end."""
        lines, then = reply.resolve(default)
        await self.send(lines, reply.trickle)
        if on_code is not None:
            on_code(_code(lines))
        if then == "close":
            self.event("server closes the connection")
            return False
        if then == "stall":
            await self.stall()
            return False
        return True

    async def say(self, line: str) -> bool:
        return await self.respond(Reply(), (line,))

    async def stall(self) -> None:
        """Stay silent; record what the client sends until it hangs up (or we stop)."""
        self.event("stall")
        while not self.stopping.is_set():
            raw = await self.reader.readline()
            if not raw:
                self.event("client closed the connection during stall")
                return
            self.log("C", raw.decode("utf-8", "replace").rstrip("\r\n"))

    def reset(self) -> None:
        self.mail_from = None
        self.rcpts = []

    async def close(self) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1)
        except (asyncio.TimeoutError, OSError, ssl.SSLError):
            transport.abort()

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        self.event("connect" + (" (TLS)" if self.tls else ""))
        try:
            if await self.respond(self.script.reply("greeting"), self.default_greeting()):
                await self.serve()
        except _Hangup as exc:
            self.event(str(exc))
        except (ConnectionError, ssl.SSLError, ValueError) as exc:
            self.event(f"connection error: {exc!r}")
        except Exception as exc:  # a bug here must show in the transcript, not vanish
            self.event(f"internal error: {exc!r}")
            raise
        finally:
            await self.close()

    async def serve(self) -> None:
        while True:
            line = await self.readline()
            self.log("C", line, command=True)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                await self.respond(self.script.reply("QUIT"), ("221 2.0.0 Bye",))
                return
            handler = self._commands.get(verb)
            if handler is None:
                go_on = await self.respond(
                    self.script.reply("UNKNOWN"), ("502 5.5.2 Command not recognized",)
                )
            else:
                go_on = await handler(arg.strip())
            if not go_on:
                return

    def default_greeting(self) -> tuple[str, ...]:
        return (f"220 {self.script.hostname} ESMTP fault server ready",)

    # ------------------------------------------------------------------ commands

    def cmd_simple(
        self, stage: str, default: str, *, reset: bool = False
    ) -> Callable[[str], Awaitable[bool]]:
        async def command(arg: str) -> bool:
            if reset:
                self.reset()
            return await self.respond(self.script.reply(stage), (default,))

        return command

    async def cmd_ehlo(self, arg: str) -> bool:
        self.reset()
        return await self.respond(
            self.script.reply("EHLO"), self.script.ehlo_lines(tls_active=self.tls)
        )

    async def cmd_helo(self, arg: str) -> bool:
        self.reset()
        return await self.respond(self.script.reply("HELO"), (f"250 {self.script.hostname}",))

    def refusal(self, *, auth: bool = True) -> str | None:
        if self.script.require_tls and not self.tls:
            return NEED_TLS_REPLY
        if auth and self.script.require_auth and self.user is None:
            return NEED_AUTH_REPLY
        return None

    async def cmd_starttls(self, arg: str) -> bool:
        ctx = self.script.tls_context
        if self.tls:
            default = ("503 5.5.1 TLS already active",)
        elif ctx is None:
            default = ("454 4.7.0 TLS not available",)
        else:
            default = ("220 2.0.0 Ready to start TLS",)
        codes: list[int] = []
        if not await self.respond(self.script.reply("STARTTLS"), default, codes.append):
            return False
        if codes != [220] or ctx is None or self.tls:
            return True
        return await self.upgrade(ctx)

    async def upgrade(self, ctx: ssl.SSLContext) -> bool:
        action = self.script.tls_action
        if action == "close":
            self.event("closing instead of TLS handshake")
            try:
                await asyncio.wait_for(self.reader.read(1), self.script.handshake_timeout)
            except asyncio.TimeoutError:
                pass
            finally:
                self.abort()
            return False
        if action == "garbage":
            self.event("sending garbage instead of TLS handshake")
            self.writer.write(b"this is not a TLS ServerHello\r\n" * 4)
            await self.writer.drain()
            return False
        try:
            await self.start_tls(ctx)
        except (ssl.SSLError, OSError, asyncio.TimeoutError, EOFError) as exc:
            self.event(f"TLS handshake failed: {exc!r}")
            self.abort()
            return False
        self.tls = True
        self.user = None
        self.reset()
        ssl_object = self.writer.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else "?"
        self.event(f"TLS established ({version})")
        return True

    async def start_tls(self, ctx: ssl.SSLContext) -> None:
        timeout = self.script.handshake_timeout
        if USE_STREAM_START_TLS:
            await self.writer.start_tls(  # type: ignore[attr-defined,unused-ignore]
                ctx, ssl_handshake_timeout=timeout
            )
            return
        # Python 3.10: upgrade the transport, then wrap it in a new StreamWriter.
        loop = asyncio.get_running_loop()
        transport = self.writer.transport
        protocol = transport.get_protocol()
        new_transport = await loop.start_tls(
            transport, protocol, ctx, server_side=True, ssl_handshake_timeout=timeout
        )
        if new_transport is None:
            raise ConnectionResetError("transport closed during TLS upgrade")
        if hasattr(protocol, "_over_ssl"):
            protocol._over_ssl = True
        self.writer = asyncio.StreamWriter(new_transport, protocol, self.reader, loop)

    async def cmd_auth(self, arg: str) -> bool:
        refusal = NEED_TLS_REPLY if self.script.require_tls and not self.tls else None
        if refusal is None and self.user is not None:
            refusal = "503 5.5.1 Already authenticated"
        if refusal is not None:
            return await self.say(refusal)
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        override = self.script.auth_replies.get(mechanism)
        if mechanism not in ("PLAIN", "LOGIN") and override is None:
            return await self.say("504 5.5.4 Unrecognized authentication type")
        credentials = await self.auth_exchange(mechanism, initial.strip())
        if credentials is None:
            self.records.auth_attempt(FaultAuthAttempt(mechanism, None, 501))
            return await self.say("501 5.7.0 Authentication aborted or undecodable")
        username, password = credentials
        expected = self.script.credentials
        good = expected is None or expected == (username, password)
        reply = override if isinstance(override, Reply) else self.script.reply("AUTH")

        def record(code: int) -> None:
            self.records.auth_attempt(FaultAuthAttempt(mechanism, username, code))
            if code == 235:
                self.user = username

        return await self.respond(reply, (AUTH_OK_REPLY if good else AUTH_BAD_REPLY,), record)

    async def challenge(self, text: str) -> str | None:
        await self.send((f"334 {text}",), 0)
        answer = await self.readline()
        self.log("C", answer)
        return None if answer == "*" else answer

    async def auth_exchange(self, mechanism: str, initial: str) -> tuple[str, str] | None:
        """Run the 334 exchange; (username, password) or None (aborted/undecodable)."""
        try:
            if mechanism == "PLAIN":
                blob = initial if initial and initial != "=" else await self.challenge("")
                if blob is None:
                    return None
                parts = base64.b64decode(blob, validate=True).decode("utf-8").split("\0")
                if len(parts) != 3:
                    return None
                return parts[1], parts[2]
            if mechanism == "LOGIN":
                user_b64 = initial or await self.challenge(_USERNAME_B64)
                if user_b64 is None:
                    return None
                password_b64 = await self.challenge(_PASSWORD_B64)
                if password_b64 is None:
                    return None
                return (
                    base64.b64decode(user_b64, validate=True).decode("utf-8"),
                    base64.b64decode(password_b64, validate=True).decode("utf-8"),
                )
            return ("", "")  # scripted mechanism: no exchange
        except (binascii.Error, UnicodeDecodeError):
            return None

    async def cmd_mail(self, arg: str) -> bool:
        refusal = self.refusal()
        if refusal is not None:
            return await self.say(refusal)

        def accept(code: int) -> None:
            if 200 <= code < 300:
                self.mail_from = _address(arg)
                self.rcpts = []

        return await self.respond(self.script.reply("MAIL"), ("250 2.1.0 OK",), accept)

    async def cmd_rcpt(self, arg: str) -> bool:
        refusal = self.refusal()
        if refusal is None and self.mail_from is None:
            refusal = "503 5.5.1 Error: need MAIL command"
        if refusal is not None:
            return await self.say(refusal)
        address = _address(arg)
        reply = self.script.rcpt_replies.get(address.lower())
        if not isinstance(reply, Reply):
            reply = self.script.reply("RCPT")

        def accept(code: int) -> None:
            if 200 <= code < 300:
                self.rcpts.append(address)

        return await self.respond(reply, ("250 2.1.5 OK",), accept)

    async def cmd_data(self, arg: str) -> bool:
        refusal = self.refusal()
        if refusal is None and (self.mail_from is None or not self.rcpts):
            refusal = "503 5.5.1 Error: need RCPT command"
        if refusal is not None:
            return await self.say(refusal)
        codes: list[int] = []
        default = ("354 End data with <CR><LF>.<CR><LF>",)
        if not await self.respond(self.script.reply("DATA"), default, codes.append):
            return False
        if codes != [354]:
            return True
        data = await self.read_data()
        message = AcceptedMessage(
            self.mail_from or "", tuple(self.rcpts), data, self.tls, self.user
        )
        self.reset()
        self.records.data_end(message)  # the final "." arrived, whatever the reply (if any) will be

        def accept(code: int) -> None:
            if 200 <= code < 300:
                self.records.message(message)

        return await self.respond(self.script.reply("DATA_END"), ("250 2.0.0 OK: queued",), accept)

    async def read_data(self) -> bytes:
        limit = self.script.drop_data_after
        received = 0
        chunks: list[bytes] = []
        while True:
            if limit is not None and received >= limit:
                self.event(f"dropping the connection after {received} bytes of DATA")
                self.abort()
                raise _Hangup(f"dropped after {received} bytes of DATA")
            raw = await self.reader.readline()
            if not raw:
                raise _Hangup(f"client closed the connection during DATA ({received} bytes)")
            if raw in (b".\r\n", b".\n"):
                break
            received += len(raw)
            chunks.append(raw[1:] if raw.startswith(b".") else raw)
        self.event(f"DATA: {received} bytes")
        return b"".join(chunks)
