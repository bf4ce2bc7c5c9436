"""The asyncio floor: SESSIONS sequential STARTTLS sessions over asyncio's own transports with a minimal protocol.

Usage: asyncio_min.py HOST PORT CAFILE MESSAGE FROM TO SESSIONS; AUTH PLAIN with $BENCH_SMTP_USER and
$BENCH_SMTP_PASSWORD when the user is set. The same exchange as smtp_send.py (EHLO, STARTTLS, verified TLS, EHLO,
AUTH, MAIL, RCPT, DATA, the message, QUIT and its reply) and nothing else: no library above asyncio, one future
per reply, no per-reply timer. lib_floor.py sends its one session with `session` below. What a session costs here over smtplib is the
event loop and asyncio's TLS over memory BIOs; what bare aiosmtplib costs over this is aiosmtplib's own.
Prints each session's seconds on one line; exits 1 if a reply is not the expected one.
"""

import asyncio
import base64
import os
import re
import socket
import ssl
import sys
import time


class _Replies(asyncio.Protocol):
    """Complete replies (RFC 5321 §4.2.1: the last line has a space after its code) as their codes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.rfind(b"\n", 0, len(self.buffer) - 1) + 1  # start of the last line
        if self.buffer.endswith(b"\n") and self.buffer[end + 3:end + 4] == b" " and not self.waiter.done():
            self.waiter.set_result(int(self.buffer[end:end + 3]))
            self.buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))
            self.waiter.exception()  # retrieved: after QUIT's reply nobody awaits it

    async def reply(self, expected: int) -> None:
        code = await self.waiter
        self.waiter = self.loop.create_future()
        if code != expected:
            raise RuntimeError(f"reply {code}, expected {expected}")

    async def send(self, data: bytes, expected: int, quickack: bool = False) -> None:
        assert isinstance(self.transport, asyncio.WriteTransport)
        self.transport.write(data)
        if quickack:  # as transport._ack_promptly: no 40 ms delayed-ACK stall on the TLS 1.3 session tickets
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", 12), 1)
        await self.reply(expected)


def data_lines(data: bytes) -> bytes:
    body = re.sub(rb"(?m)^\.", b"..", re.sub(rb"\r\n|\r|\n", b"\r\n", data))
    return body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n"


async def session(host: str, port: int, context: ssl.SSLContext, message: bytes, sender: str, rcpt: str) -> None:
    loop = asyncio.get_running_loop()
    protocol = _Replies(loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    try:
        await protocol.reply(220)
        await protocol.send(b"EHLO [127.0.0.1]\r\n", 250)
        await protocol.send(b"STARTTLS\r\n", 220)
        tls = await loop.start_tls(transport, protocol, context, server_hostname=host)
        assert tls is not None
        transport = protocol.transport = tls
        await protocol.send(b"EHLO [127.0.0.1]\r\n", 250, quickack=True)
        user = os.environ.get("BENCH_SMTP_USER")
        if user:
            secret = b"\0" + user.encode() + b"\0" + os.environ["BENCH_SMTP_PASSWORD"].encode()
            await protocol.send(b"AUTH PLAIN " + base64.b64encode(secret) + b"\r\n", 235)
        await protocol.send(f"MAIL FROM:<{sender}>\r\n".encode(), 250)
        await protocol.send(f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
        await protocol.send(b"DATA\r\n", 354)
        await protocol.send(message, 250)
        await protocol.send(b"QUIT\r\n", 221)
    finally:
        transport.close()


async def main() -> int:
    host, port, cafile, path, sender, rcpt, sessions = sys.argv[1:8]
    with open(path, "rb") as handle:
        message = data_lines(handle.read())
    context = ssl.create_default_context(cafile=cafile)
    times = []
    for _ in range(int(sessions)):
        started = time.perf_counter()
        try:
            await session(host, int(port), context, message, sender, rcpt)
        except (OSError, RuntimeError) as exc:
            print(f"session failed: {exc}", file=sys.stderr)
            return 1
        times.append(time.perf_counter() - started)
    print(" ".join(f"{t:.6f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
