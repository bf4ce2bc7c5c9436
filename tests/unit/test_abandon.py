"""Threads a waiter may abandon (lookups, off-loop calls) are no daemons, and our own process ends without waiting
for one abandoned at its deadline (abandon.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import certbot_smtp_dist
from certbot_smtp_dist._internal import abandon

# A lookup that never answers (a resolver that swallows every query), then the end of a run.
STUCK = textwrap.dedent("""\
    import sys, threading
    from certbot_smtp_dist._internal import abandon
    never = threading.Event()
    abandon.start(never.wait, "resolve-stuck")
    print("run over", flush=False)   # still buffered: end_process flushes it
    abandon.end_process(int(sys.argv[1]))
    print("not reached")
""")


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(Path(certbot_smtp_dist.__file__).parents[1])}
    # Bounded: a process that waited for the stuck lookup would never end, and fail here.
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_lookup_thread_is_no_daemon_and_counts_as_under_way_until_it_returns() -> None:
    release = threading.Event()
    thread = abandon.start(release.wait, "resolve-test")
    try:
        assert not thread.daemon and thread in abandon.under_way()
    finally:
        release.set()
        thread.join(10)
    assert not thread.is_alive() and thread not in abandon.under_way()


def test_our_process_ends_with_its_exit_status_without_waiting_for_an_abandoned_lookup() -> None:
    proc = _python(STUCK, "75")
    assert proc.returncode == 75, proc.stderr
    assert proc.stdout == "run over\n" and proc.stderr == ""


# An extension's own thread and exit handler: both are what a usual exit would honour.
THEIRS = textwrap.dedent("""\
    import atexit, sys, threading, time
    from certbot_smtp_dist._internal import abandon
    atexit.register(lambda: print("exit handler ran", flush=False))
    threading.Thread(target=lambda: (time.sleep(0.2), print("their thread finished", flush=False))).start()
    print("run over", flush=False)
    abandon.end_process(int(sys.argv[1]))
    print("not reached")
""")


def test_our_process_ends_after_their_threads_and_exit_handlers_without_the_teardown() -> None:
    """Without a lookup under way too, our own process ends by end_process with the run's status: a thread an
    extension started (not a daemon) is waited for and an exit handler runs, as at a usual exit; output is flushed;
    only the interpreter's teardown (tens of milliseconds after a run) is skipped."""
    proc = _python(THEIRS, "3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "run over\ntheir thread finished\nexit handler ran\n" and proc.stderr == ""


def test_a_call_run_off_the_loop_and_abandoned_at_its_deadline_is_no_daemon_and_counts_as_under_way() -> None:
    """offloop.call (the OAuth 2.0 token endpoint over HTTPS, the token cache) runs in a abandon.start thread: one
    abandoned inside OpenSSL is never a daemon at interpreter exit, and end_process covers it."""
    import asyncio

    import pytest

    from certbot_smtp_dist._internal import offloop

    release = threading.Event()
    with pytest.raises(TimeoutError, match="oauth2-test: no answer"):
        asyncio.run(offloop.call(lambda: release.wait(30), 0.05, "oauth2-test"))
    try:
        stuck = [t for t in abandon.under_way() if t.name == "oauth2-test"]
        assert len(stuck) == 1 and not stuck[0].daemon
    finally:
        release.set()
        for thread in abandon.under_way():
            thread.join(10)
    assert not [t for t in abandon.under_way() if t.name == "oauth2-test"]


def test_output_that_cannot_be_written_is_no_silent_success() -> None:
    """A command's output (status --json, --nagios, metrics) flushed at the end to a full disk or a pipe whose reader
    is gone: the interpreter's own exit says so on stderr and ends with status 120; end_process did neither and
    ended 0, the output lost."""
    import os

    import pytest

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    env = {"PYTHONPATH": str(Path(certbot_smtp_dist.__file__).parents[1])}  # buffered stdout, as under cron
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "--config", "/nonexistent/c.toml",
                               "--state-dir", "/nonexistent/state", "status", "--allow-empty", "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert proc.returncode == 120, proc.stderr
    assert "cannot write standard output" in proc.stderr and "No space left" in proc.stderr


# An extension's thread pool, used once and never shut down (a module-level executor): the interpreter's exit tells
# its idle workers to end (concurrent.futures registers that with threading._register_atexit) before it waits.
IDLE_POOL = textwrap.dedent("""\
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from certbot_smtp_dist._internal import abandon
    POOL = ThreadPoolExecutor(2)
    POOL.submit(print, "pool used", flush=False).result()
    abandon.end_process(int(sys.argv[1]))
""")


def test_our_process_ends_with_an_extensions_idle_thread_pool_as_a_usual_exit_does() -> None:
    """A usual exit ends with a pool an extension left open (its workers idle); end_process waited for them
    forever (the deploy hook never returned), as it joined them before anything told them to end."""
    proc = _python(IDLE_POOL, "4")
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == "pool used\n" and proc.stderr == ""
