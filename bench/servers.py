"""Loopback peers the benchmark needs beyond tests/support/relay.py: a slow relay and a black hole."""

from __future__ import annotations

import asyncio
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP
from support.loopthread import BackgroundServer
from support.pki import RelayPKI
from support.relay import _Authenticator, _Handler, _Recorder


class _SlowSMTP(SMTP):
    """aiosmtpd's server, each reply (greeting included) sent `delay` seconds late."""

    def __init__(self, *args: Any, delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delay = delay

    async def push(self, status: AnyStr) -> None:
        await asyncio.sleep(self._delay)
        await super().push(status)


class SlowRelay(BackgroundServer):
    """A STARTTLS-required relay with AUTH PLAIN that delays every reply by `delay` seconds (a distant relay)."""

    def __init__(self, pki: RelayPKI, *, auth: tuple[str, str], delay: float = 0.1) -> None:
        super().__init__()
        self.pki = pki
        self.auth = auth
        self.delay = delay
        self.host = "127.0.0.1"
        self.port = 0
        self.mode = "starttls"
        self._recorder = _Recorder()
        self._handler = _Handler(self._recorder, {})
        self._authenticator = _Authenticator(self._recorder, auth)
        self._protocols: list[SMTP] = []

    def _thread_name(self) -> str:
        return "bench-slow-relay"

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self.pki.server_context()

        def protocol() -> SMTP:
            smtp = _SlowSMTP(self._handler, hostname="relay.test", tls_context=tls, require_starttls=True,
                             auth_require_tls=True, auth_required=True, authenticator=self._authenticator,
                             loop=loop, delay=self.delay)
            self._protocols.append(smtp)
            return smtp

        self._server = await loop.create_server(protocol, host=self.host, port=0, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for smtp in self._protocols:
            if smtp.transport is not None:
                smtp.transport.close()
        self._protocols.clear()

    def delivered(self) -> int:
        return len(self._recorder.messages())

    def clear(self) -> None:
        self._recorder.clear()


class _Silent(asyncio.Protocol):
    """Accepts the connection and never writes a byte (RFC 5321 §4.5.3.2.1: the client's greeting timer runs)."""

    def __init__(self, transports: list[asyncio.BaseTransport]) -> None:
        self._transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transports.append(transport)


class BlackHole(BackgroundServer):
    """Completes the TCP handshake, then stays silent until the client gives up."""

    def __init__(self) -> None:
        super().__init__()
        self.host = "127.0.0.1"
        self.port = 0
        self._transports: list[asyncio.BaseTransport] = []

    def _thread_name(self) -> str:
        return "bench-black-hole"

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Silent(self._transports), host=self.host, port=0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in self._transports:
            transport.close()
        self._transports.clear()
