"""Name lookups (getaddrinfo) and other calls a waiter may abandon (offloop.py: the OAuth 2.0 token endpoint, the
token cache) in threads that are not daemons, and a process end that never waits for one abandoned.

getaddrinfo cannot be cancelled or given a timeout, so a lookup runs in a thread of its own that its waiter gives up
on at its deadline (greeting's `LOOKUP_WAIT`, a session's budget). A daemon thread still inside the C library when
the interpreter exits can crash it: C-level cleanup at exit runs under its feet (OpenSSL's did, under the trust-store
prefetch thread, which is not a daemon since). So these threads are not daemons either: an interpreter that hosts
us (the certbot plugin) waits for them at exit, as long as the resolver itself takes (its resolv.conf `timeout` and
`attempts`). Our own process (the command, which an ACME client waits on) does not: once the run is over, every
lookup still under way was abandoned at its deadline, and `end_process` ends the process at once, without running
exit-time cleanup at all, so nothing runs under the thread's feet either.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

_running: set[threading.Thread] = set()  # lookups under way
_lock = threading.Lock()


def start(work: Callable[[], None], name: str) -> threading.Thread:
    """Run `work` (a lookup that hands its answer over by itself and never raises) in a thread that is not a
    daemon, counted as under way until it returns."""

    def run() -> None:
        try:
            work()
        finally:
            with _lock:
                _running.discard(threading.current_thread())

    thread = threading.Thread(target=run, name=name, daemon=False)
    with _lock:
        _running.add(thread)
    thread.start()
    return thread


def under_way() -> list[threading.Thread]:
    """The lookups still running."""
    with _lock:
        return [t for t in _running if t.is_alive()]


def end_process(code: int) -> None:
    """In a process of our own whose work is done: if a lookup is still under way (its waiter gave up on it at its
    deadline), end the process now with `code`, output flushed, rather than wait for the resolver to give up too;
    otherwise return, for the usual exit."""
    if not under_way():
        return
    logging.shutdown()  # flushes every handler, as the interpreter's exit would
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to say on it
            pass
    os._exit(code)
