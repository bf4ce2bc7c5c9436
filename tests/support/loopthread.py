"""An asyncio event loop running in a daemon thread, driven from sync or async code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """Owns a private event loop in a background thread.

    :meth:`run` submits a coroutine and blocks for its result; it must not be called
    from the loop's own thread.  :meth:`stop` cancels whatever is still pending.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"{self.name}: event loop thread did not start")

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run() called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def call(self, callback: Any, *args: Any) -> None:
        """Schedule a plain callback on the loop (thread-safe, does not wait)."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            if self._thread.ident is None and not self.loop.is_closed():
                self.loop.close()  # never started
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.name}: event loop thread did not stop")


S = TypeVar("S", bound="BackgroundServer")


class BackgroundServer:
    """A test server whose ``_start``/``_stop`` coroutines run on a private :class:`LoopThread`.

    Usable as ``start()``/``stop()``, ``with``, or ``async with`` (start and stop run in an executor, since the
    server always lives on its own thread).
    """

    host: str
    port: int

    def __init__(self) -> None:
        self._loop_thread: LoopThread | None = None
        self._server: asyncio.AbstractServer | None = None

    def _thread_name(self) -> str:
        return type(self).__name__.lower()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def start(self: S) -> S:
        if self._loop_thread is not None:
            raise RuntimeError(f"{self._thread_name()} already started")
        self._loop_thread = LoopThread(self._thread_name())
        self._loop_thread.start()
        try:
            self._loop_thread.run(self._start())
        except BaseException:
            self._loop_thread.stop()
            self._loop_thread = None
            raise
        return self

    def stop(self) -> None:
        if self._loop_thread is None:
            return
        try:
            self._loop_thread.run(self._stop())
        finally:
            self._loop_thread.stop()
            self._loop_thread = None
            self._server = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self: S) -> S:
        return await asyncio.get_running_loop().run_in_executor(None, self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port
