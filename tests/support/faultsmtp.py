"""A scriptable, hand-written ESMTP server for fault injection.

Runs on its own event loop in a background thread, bound to 127.0.0.1 on a free port.
Behaviour comes from a :class:`~support.faultsmtp.Script`; everything it saw is
recorded (transcript, accepted messages, AUTH attempts, connection count).
Stalls end when the client hangs up or the server stops; :meth:`FaultServer.stop`
aborts every open connection.
"""

from __future__ import annotations

import asyncio
from typing import final

from .faultrecords import Records, TranscriptLine
from .faultscript import (
    CLOSE,
    STAGES,
    STALL,
    AcceptedMessage,
    FaultAuthAttempt,
    Reply,
    ReplySpec,
    Script,
)
from .faultsession import Session
from .loopthread import BackgroundServer

__all__ = [
    "CLOSE",
    "STAGES",
    "STALL",
    "AcceptedMessage",
    "FaultAuthAttempt",
    "FaultServer",
    "Reply",
    "ReplySpec",
    "Script",
    "TranscriptLine",
]


@final
class FaultServer(BackgroundServer):
    """``with FaultServer(Script(...)) as server: smtplib.SMTP(server.host, server.port)``."""

    def __init__(self, script: Script | None = None, *, host: str = "127.0.0.1") -> None:
        self.script = script if script is not None else Script()
        self.host = host
        self.port = 0
        self.records = Records()
        super().__init__()
        self._sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._stopping is not None
        session = Session(self.script, self.records, reader, writer, self._stopping)
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(session)
        self._tasks.add(task)
        try:
            await session.run()
        except asyncio.CancelledError:
            # Only stop() cancels (after aborting the transport).  Finish normally:
            # Python 3.12.0/3.12.1's start_server callback logs cancelled handler tasks.
            pass
        finally:
            self._sessions.discard(session)
            self._tasks.discard(task)

    async def _start(self) -> None:
        self._stopping = asyncio.Event()
        tls = self.script.tls_context if self.script.tls_on_connect else None
        self._server = await asyncio.start_server(
            self._on_connect,
            host=self.host,
            port=0,
            ssl=tls,
            ssl_handshake_timeout=self.script.handshake_timeout if tls else None,
            limit=1 << 20,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.abort()  # pending reads see EOF, writes fail: handlers end by themselves
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=1)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass

    async def _idle(self, timeout: float) -> bool:
        tasks = list(self._tasks)
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every connection handler finished (e.g. after the client quit)."""
        if self._loop_thread is None:
            return True
        return self._loop_thread.run(self._idle(timeout), timeout=timeout + 1)

    # ------------------------------------------------------------------ records

    @property
    def transcript(self) -> list[tuple[str, str]]:
        """(direction, line) over all connections; direction is C, S or * (event)."""
        return [(item.direction, item.line) for item in self.records.snapshot_lines()]

    def transcript_of(self, connection: int) -> list[tuple[str, str]]:
        """Transcript of one connection (numbered from 1)."""
        return [
            (item.direction, item.line)
            for item in self.records.snapshot_lines()
            if item.connection == connection
        ]

    @property
    def client_commands(self) -> list[str]:
        """Upper-cased verb of each command line the client sent (not AUTH/DATA payload)."""
        return [
            item.line.split(" ", 1)[0].upper()
            for item in self.records.snapshot_lines()
            if item.direction == "C" and item.command and item.line
        ]

    @property
    def messages(self) -> list[AcceptedMessage]:
        return self.records.snapshot_messages()

    @property
    def data_ends(self) -> list[AcceptedMessage]:
        """Every message whose final "." the server read, whatever it answered (or not): what a relay that
        queues before replying would deliver."""
        return self.records.snapshot_data_ends()

    @property
    def accepted(self) -> bool:
        return bool(self.messages)

    @property
    def auth_attempts(self) -> list[FaultAuthAttempt]:
        return self.records.snapshot_auth()

    @property
    def connections(self) -> int:
        return self.records.connections

    def __repr__(self) -> str:
        return f"<FaultServer {self.host}:{self.port}>"
