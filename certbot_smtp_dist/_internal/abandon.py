"""Threads a waiter may abandon, and the end of our own process, which never waits for one abandoned.

The work run here: name lookups (getaddrinfo, greeting.py), other blocking calls made off the event loop (offloop.py:
the OAuth 2.0 token endpoint, the token cache) and the trust-store prefetch (transport.TlsContexts). Each runs in a
thread that is not a daemon, counted as under way until it returns (`start`, `under_way`), and `end_process` ends
the command once its work is done.

getaddrinfo cannot be cancelled or given a timeout, so a lookup runs in a thread of its own that its waiter gives up
on at its deadline (greeting's `LOOKUP_WAIT`, a session's budget). A daemon thread still inside the C library when
the interpreter exits can crash it: C-level cleanup at exit runs under its feet (OpenSSL's did, under the trust-store
prefetch thread, which is not a daemon since). So these threads are not daemons either: an interpreter that hosts
us (the certbot plugin) waits for them at exit, as long as the resolver itself takes (its resolv.conf `timeout` and
`attempts`). Our own process (the command, which an ACME client waits on) does not: once the run is over, every
lookup still under way was abandoned at its deadline, and `end_process` ends the process without the interpreter's
teardown, so nothing runs under the thread's feet either (and the teardown's own cost is saved).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

_running: set[threading.Thread] = set()  # threads started here, under way
_lock = threading.Lock()


def start(work: Callable[[], None], name: str) -> threading.Thread:
    """Run `work` (a lookup or call that hands its answer over by itself and never raises) in a thread that is not
    a daemon, counted as under way until it returns."""

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
    """The threads started here still running."""
    with _lock:
        return [t for t in _running if t.is_alive()]


def end_process(code: int) -> None:
    """End our own process (the command an ACME client waits on) with `code` once its work is done; never returns.

    Every write of the run is on disk by now (each is fsynced before the command goes on). What is left is what the
    interpreter does at exit: wait for threads that are not daemons, run the exit handlers, then tear itself down,
    freeing each module and object one by one and running OpenSSL's cleanup, 50-80 ms of CPU after a cold `deploy`
    (bench scenario 1) for a process about to vanish. So: threads an extension may have started are waited for, as
    the interpreter would; the ones of ours that a waiter gave up on at its deadline (start(): a resolver that does
    not answer, a token endpoint that stalls, the trust store still loading after a run that ended before its first
    connection) are not; the exit handlers run (logging's flush among them, and any an extension registered);
    output is flushed; and the process ends without the teardown, so nothing runs under those threads' feet."""
    import atexit

    ours = set(under_way())
    # First what the interpreter does before it waits for threads (threading._shutdown): the hooks registered with
    # threading._register_atexit, in reverse order. concurrent.futures' is one: it tells the idle workers of a pool
    # never shut down (an extension's) to end; without it they would be waited for forever.
    for hook in reversed(list(getattr(threading, "_threading_atexits", ()))):
        hook()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon and thread not in ours:
            thread.join()
    atexit._run_exitfuncs()  # logging.shutdown() is one of them: every handler flushed
    for name, stream in (("standard output", sys.stdout), ("standard error", sys.stderr)):
        if stream is None or stream.closed:  # nothing to flush, as the interpreter's own exit skips it
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            # What was printed is lost (a full disk, a reader gone): never a silent success. The interpreter's own
            # exit says so and ends with status 120 (Py_FinalizeEx's flush of the standard streams): so do we.
            code = 120
            try:
                os.write(2, f"certbot-smtp-dist: error: cannot write {name}: {exc}\n".encode(errors="replace"))
            except OSError:
                pass
    os._exit(code)
