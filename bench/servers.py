"""Loopback peers the benchmark needs beyond tests/support/relay.py's relay: a slow one of it, and a black hole."""

from __future__ import annotations

import asyncio

from support.loopthread import BackgroundServer
from support.pki import RelayPKI
from support.relay import Relay


def slow_relay(pki: RelayPKI, *, auth: tuple[str, str], delay: float = 0.1) -> Relay:
    """A STARTTLS-required relay with AUTH PLAIN that delays every reply by `delay` seconds (a distant relay):
    tests/support/relay.py's own, with its `reply_delay`."""
    return Relay(pki, mode="starttls", auth=auth, reply_delay=delay)


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
