"""What a relay port speaks first, asked on a connection of its own: a `tls_mode` that does not fit becomes a hint.

An implicit-TLS port (RFC 8314 §3.3) waits for the client's ClientHello and never greets in clear; a STARTTLS or
plaintext port (RFC 5321 §3.1, RFC 3207) greets with `220` before the client says anything. Each probe dials a new
connection, sends no secret and no mail, and is bounded by the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable

PLAINTEXT_FIRST = 'this port speaks plaintext first; set tls_mode = "starttls"'
TLS_FIRST = 'this port speaks implicit TLS; set tls_mode = "smtps"'

# RFC 5321 §4.2: a reply line starts with a three-digit code and a space or hyphen.
_REPLY_LINE = rb"[2-5][0-9][0-9][ -]"  # compiled on first use (re's cache): a slow greeting's probe only
# RFC 8446 §5.1 / RFC 5246 §6.2.1: record content type 22 (handshake); §4: handshake type 2 (ServerHello,
# also a HelloRetryRequest), the first byte after the 5-byte record header.
_HANDSHAKE_RECORD = 0x16
_SERVER_HELLO = 0x02

Dial = Callable[[], Awaitable[socket.socket]]


def greeting_wait(timeout: float) -> float:
    """How long a silent relay is waited for before asking, on a second connection, whether it speaks TLS first.

    RFC 5321 §4.5.3.2.1 lets a client wait five minutes for the greeting, and the session still waits for it until
    the target's deadline; but an implicit-TLS port never greets, and a relay that is alive greets in well under a
    second. A quarter of the target's `timeout`, between 0.5 s and 5 s, leaves most of the budget for the probe and
    the session.
    """
    return min(5.0, max(0.5, timeout / 4))


async def readable(sock: socket.socket, wait: float) -> bool:
    """Whether `sock` has something to read (or was closed) within `wait` seconds; nothing is consumed."""
    if wait <= 0:
        return False
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()

    def settle(readable: bool) -> None:
        if not ready.done():
            ready.set_result(readable)

    loop.add_reader(sock.fileno(), settle, True)
    timer = loop.call_later(wait, settle, False)  # a timer of its own: no second future, no loop turn between
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_reader(sock.fileno())


async def speaks_plaintext_first(dial: Dial, bound: float) -> bool:
    """Whether a new connection is greeted with an SMTP reply line, unasked, within `bound` seconds."""
    return await _bounded(_plaintext_first(dial), bound)


async def speaks_tls_first(dial: Dial, host: str, bound: float) -> bool:
    """Whether a ClientHello on a new connection is answered with a ServerHello within `bound` seconds.

    The handshake is never completed and nothing is trusted: only the first record's header is read.
    """
    return await _bounded(_tls_first(dial, host), bound)


async def _bounded(probe: Awaitable[bool], bound: float) -> bool:
    if bound <= 0:
        return False
    try:
        return await asyncio.wait_for(probe, bound)
    except (asyncio.TimeoutError, TimeoutError, OSError, EOFError):
        return False  # no answer is no proof either way


async def _plaintext_first(dial: Dial) -> bool:
    sock = await dial()
    try:
        head = await _read_at_least(sock, 4)
    finally:
        sock.close()
    return re.match(_REPLY_LINE, head) is not None


async def _tls_first(dial: Dial, host: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # never completed, never trusted: we only look at the record type
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=None if _is_literal(host) else host)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    client_hello = outgoing.read()
    sock = await dial()
    try:
        await asyncio.get_running_loop().sock_sendall(sock, client_hello)
        head = await _read_at_least(sock, 6)
    finally:
        sock.close()
    return len(head) >= 6 and head[0] == _HANDSHAKE_RECORD and head[5] == _SERVER_HELLO


async def _read_at_least(sock: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < count:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
