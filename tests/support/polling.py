"""Polling helper for assertions on state updated by a background thread."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01
) -> bool:
    """Poll ``predicate()`` until it is truthy (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], object], timeout: float = 60.0
                   ) -> tuple[str, str]:
    """Ctrl-C (SIGINT) to `proc` once `ready()` (or after `timeout` seconds), then its (stdout, stderr), waited for
    at most `timeout` seconds; a process still running after that is killed."""
    try:
        wait_until(ready, timeout, 0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
        return out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
