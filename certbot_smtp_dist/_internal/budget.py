"""A run's time budget, for work done on a target's behalf before its SMTP session (the message hooks' openssl).

Every target's `timeout` counts from the run's start (deploy.py, pipeline.deliver_job), and messages are prepared one
target after another before anything is sent: a hook that took the whole `timeout` per call would spend the budget
of every target prepared after it. The run's start travels to the hooks in a context variable, so the public hook
contract (hookspecs.py) stays as it is; a hook asks `left(target.timeout)` before each slow call.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar("certbot_smtp_dist_run_started", default=None)


@contextlib.contextmanager
def running(started: float | None) -> Iterator[None]:
    """Within this block, `left` counts from `started` (time.monotonic()); None: no run clock, the whole timeout."""
    token = _STARTED.set(started)
    try:
        yield
    finally:
        _STARTED.reset(token)


def left(timeout: float) -> float:
    """What is left of a target's `timeout` since the run started (may be 0 or less), or `timeout` outside a run."""
    started = _STARTED.get()
    return timeout if started is None else timeout - (time.monotonic() - started)
