"""Thread-safe records of what the fault server saw (written by its loop thread)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from .faultscript import AcceptedMessage, FaultAuthAttempt

Direction = Literal["C", "S", "*"]  # client -> server, server -> client, event


@dataclass(frozen=True)
class TranscriptLine:
    connection: int  # numbered from 1
    direction: Direction
    line: str
    command: bool = False  # a client command line (not AUTH or DATA payload)


class Records:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[TranscriptLine] = []
        self._messages: list[AcceptedMessage] = []
        self._data_ends: list[AcceptedMessage] = []
        self._auth: list[FaultAuthAttempt] = []
        self._connections = 0

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def new_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    def line(
        self, connection: int, direction: Direction, text: str, *, command: bool = False
    ) -> None:
        with self._lock:
            self._lines.append(TranscriptLine(connection, direction, text, command))

    def message(self, message: AcceptedMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def data_end(self, message: AcceptedMessage) -> None:
        with self._lock:
            self._data_ends.append(message)

    def auth_attempt(self, attempt: FaultAuthAttempt) -> None:
        with self._lock:
            self._auth.append(attempt)

    def snapshot_lines(self) -> list[TranscriptLine]:
        with self._lock:
            return list(self._lines)

    def snapshot_messages(self) -> list[AcceptedMessage]:
        with self._lock:
            return list(self._messages)

    def snapshot_data_ends(self) -> list[AcceptedMessage]:
        with self._lock:
            return list(self._data_ends)

    def snapshot_auth(self) -> list[FaultAuthAttempt]:
        with self._lock:
            return list(self._auth)
