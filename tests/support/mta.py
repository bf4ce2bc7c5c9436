"""What the real-MTA harnesses share: a free loopback port, the 220 greeting, stopping by PID (bounded), messages."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

__all__ = [
    "LOOPBACK",
    "MtaError",
    "free_port",
    "greets",
    "kill_leftovers",
    "on_free_port",
    "parse_message",
    "proc_pids",
    "terminate",
    "wait_for_greeting",
]

LOOPBACK = "127.0.0.1"
#: Below Linux's default ephemeral range (32768-60999), so no outgoing connection of this machine holds the port.
PORTS = range(20000, 32768)
_POLL = 0.02

T = TypeVar("T")


class MtaError(RuntimeError):
    """A test MTA failed; each harness raises its own subclass, whose message ends with the MTA's log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 from :data:`PORTS` that nothing is bound to right now (bounded: 200 tries)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(PORTS.start, PORTS.stop)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise MtaError(f"no free loopback port in {PORTS.start}..{PORTS.stop - 1}")


def on_free_port(start: Callable[[int], T], taken: Callable[[MtaError], bool], attempts: int = 3) -> T:
    """``start(port)`` on a fresh free port, again while it fails with an error ``taken`` says is "port in use".

    The port is free when chosen but can be taken before the MTA binds it; only that race is retried.
    """
    for attempt in range(attempts):
        try:
            return start(free_port())
        except MtaError as exc:
            if attempt == attempts - 1 or not taken(exc):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def greets(port: int, host: str = LOOPBACK) -> bool:
    """True once something on the port sends the first bytes of a 220 greeting (RFC 5321 §4.2); then QUIT."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.settimeout(2.0)
            if s.recv(4).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return True
    except OSError:
        pass
    return False


def wait_for_greeting(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll :func:`greets` until it is true (True), ``timeout`` passes or ``process`` exits (False)."""
    deadline = time.monotonic() + timeout
    while not greets(port):
        if (process is not None and process.poll() is not None) or time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def terminate(process: subprocess.Popen[bytes], grace: float, targets: Iterable[int] | None = None) -> None:
    """SIGTERM ``targets`` (default: the process itself), wait ``grace`` for the process, then SIGKILL it.

    ``targets`` is for a process that passes signals on badly (``unshare`` ignores SIGTERM): the PIDs to ask.
    Every wait is bounded; a process that survives SIGKILL for ``grace`` raises subprocess.TimeoutExpired.
    """
    if process.poll() is not None:
        return
    for pid in [process.pid] if targets is None else targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


def proc_pids(file: str, matches: Callable[[bytes], bool]) -> list[int]:
    """PIDs (not this process's) whose ``/proc/PID/FILE`` (``cmdline``, ``environ``, ``stat``) ``matches``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            content = (entry / file).read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if matches(content):
            found.append(int(entry.name))
    return found


def kill_leftovers(pids: Callable[[], list[int]], grace: float) -> None:
    """Give the processes ``pids()`` finds ``grace`` seconds to end by themselves, then SIGKILL the rest."""
    deadline = time.monotonic() + grace
    while pids() and time.monotonic() < deadline:
        time.sleep(_POLL)
    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message file an MTA wrote into a mailbox (LF line ends, the MTA's trace headers first)."""

    mailbox: str
    path: Path
    raw: bytes

    def parse(self) -> EmailMessage:
        return parse_message(self.raw)


def parse_message(raw: bytes) -> EmailMessage:
    """A delivered message file (LF line ends, the MTA's trace headers first) as an EmailMessage."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg
