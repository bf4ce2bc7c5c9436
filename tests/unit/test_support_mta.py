"""Self-tests of the lifecycle the real-MTA harnesses share (tests/support/mta.py), on loopback and real processes."""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from support import mta

_IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
                "time.sleep(60)"


def _python(code: str, *args: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its signal handling is in place
    return process


@pytest.fixture
def greeter() -> Iterator[tuple[socket.socket, list[bytes]]]:
    """A loopback listener that sends each connection the next queued greeting, then closes it."""
    listener = socket.create_server((mta.LOOPBACK, 0))
    greetings: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(greetings.pop(0) if greetings else b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener, greetings
    listener.close()
    thread.join(5)


def test_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    port = mta.free_port()
    assert port in mta.PORTS
    with socket.socket() as s:
        s.bind((mta.LOOPBACK, port))


def test_on_free_port_retries_only_a_taken_port_and_at_most_three_times() -> None:
    ports: list[int] = []

    def taken_twice(port: int) -> int:
        ports.append(port)
        if len(ports) < 3:
            raise mta.MtaError("bind: Address already in use")
        return port

    def in_use(exc: mta.MtaError) -> bool:
        return "Address already in use" in str(exc)

    assert mta.on_free_port(taken_twice, in_use) == ports[-1] and len(ports) == 3

    calls: list[int] = []

    def fails(message: str) -> Callable[[int], int]:
        def start(port: int) -> int:
            calls.append(port)
            raise mta.MtaError(message)
        return start

    with pytest.raises(mta.MtaError, match="already in use"):
        mta.on_free_port(fails("Address already in use"), in_use)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(mta.MtaError, match="bad configuration"):
        mta.on_free_port(fails("bad configuration"), in_use)
    assert len(calls) == 1


def test_greets_only_on_a_220_and_wait_for_greeting_is_bounded(
    greeter: tuple[socket.socket, list[bytes]],
) -> None:
    listener, greetings = greeter
    port = listener.getsockname()[1]
    greetings += [b"554 5.3.2 not now\r\n", b"220 mx.archive.test ESMTP\r\n"]
    assert not mta.greets(port)  # RFC 5321 §4.2: only a 220 is a greeting to talk to
    assert mta.wait_for_greeting(port, 30)
    assert not mta.wait_for_greeting(mta.free_port(), 0.2)  # nothing listens: false once the time is up


def test_wait_for_greeting_gives_up_when_the_process_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    process.wait(30)
    assert not mta.wait_for_greeting(mta.free_port(), 600, process)  # returns at once, not after 600 s


def test_terminate_sends_sigterm_then_sigkill_to_a_process_that_ignores_it() -> None:
    polite = _python("import time; print('ready', flush=True); time.sleep(60)")
    mta.terminate(polite, 30)
    assert polite.returncode == -signal.SIGTERM
    stubborn = _python(_IGNORES_TERM)
    mta.terminate(stubborn, 0.2)
    assert stubborn.returncode == -signal.SIGKILL
    mta.terminate(stubborn, 0.2)  # already gone: nothing to do


def test_terminate_signals_only_the_targets_given() -> None:
    process = _python("import time; print('ready', flush=True); time.sleep(60)")
    mta.terminate(process, 0.2, targets=[])
    assert process.returncode == -signal.SIGKILL  # no SIGTERM reached it; SIGKILL after the grace time


def test_proc_pids_and_kill_leftovers_find_and_end_an_instance_by_argv() -> None:
    marker = f"certbot-smtp-dist-test-{secrets.token_hex(8)}"
    process = _python(_IGNORES_TERM, marker)

    def instance() -> list[int]:
        return mta.proc_pids("cmdline", lambda cmdline: marker.encode() in cmdline.split(b"\0"))

    try:
        assert instance() == [process.pid]
        mta.kill_leftovers(instance, 0.2)
        assert process.wait(30) == -signal.SIGKILL
        assert instance() == []
    finally:
        process.kill()
        process.wait(30)


def test_parse_message_reads_a_delivered_file_with_lf_line_ends() -> None:
    msg = mta.parse_message(b"Return-Path: <certbot@example.com>\nSubject: renewed\n\nbody\n")
    assert (msg["Return-Path"], msg["Subject"], msg.get_content()) == ("<certbot@example.com>", "renewed", "body\n")
