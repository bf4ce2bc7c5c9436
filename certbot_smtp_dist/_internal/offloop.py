"""Blocking calls (file I/O, HTTPS) run off the event loop, in a thread nobody joins, abandoned at a deadline.

The loop's default executor would be joined when `asyncio.run` ends, so a call that never returns (a stalled
endpoint, a hung disk) would hold the run past every deadline; a thread of its own does not. It is started by
abandon.py, not as a daemon: an HTTPS call abandoned inside OpenSSL must not have exit-time cleanup run under its feet,
and our own process ends without waiting for it (abandon.end_process).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

from certbot_smtp_dist._internal import abandon

T = TypeVar("T")


async def call(fn: Callable[[], T], timeout: float | None, name: str) -> T:
    """`fn()` in a thread of its own (abandon.start); its result or exception, or TimeoutError after `timeout` seconds
    (the thread is left to finish on its own, its result dropped). `timeout` None: no timer of its own, the caller's
    deadline cancels the wait (the thread is left the same way)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if answer.done():
            return  # abandoned at the deadline
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result: T | None = fn()
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, never lost
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(settle, result, error)

    abandon.start(work, name)
    if timeout is None:  # the caller's own deadline cancels the wait
        return await answer
    try:
        return await asyncio.wait_for(answer, timeout=max(timeout, 0.001))
    except asyncio.TimeoutError as exc:  # a distinct class before Python 3.11
        raise TimeoutError(f"{name}: no answer within {timeout:.1f}s") from exc
