"""The event loop of a run (deploy's and retry's deliveries, check's probes), and a Ctrl-C that always ends it.

`asyncio.run` turns Ctrl-C into one cancellation of its main task, and two things can lose it:

- Before Python 3.12, `asyncio.wait_for` drops a cancellation that arrives as the future it waits on completes, and
  returns that future's result instead (CPython gh-86296). We wait that way for a greeting (smtpwire) or a relay
  slot: a Ctrl-C landing there was lost, and the run went on to the next stall's deadline (a
  minute: a relay holding its reply to the final "." does not answer before the target's `timeout`).
- Python runs its SIGINT handler on the main thread only, between two steps of Python code; a signal the kernel
  hands to another thread (a name lookup's, the trust-store prefetch's) waits until the loop's select() returns by
  itself, at its next timer.

So SIGINT is the loop's own here (`add_signal_handler`: the signal wakes the loop through its wakeup descriptor,
whichever thread took it). The first Ctrl-C cancels the main task, and then every `RECANCEL` seconds every task
still running, until the main task ends: a cancellation dropped once is not dropped again by the same await. A main
task that ends cancelled raises KeyboardInterrupt (exit status 130); one that finished its work meanwhile returns
it, so that what was delivered is recorded, never sent again by `retry` (a run interrupted all the same saves the
targets that finished before: pipeline.Interrupted). A second Ctrl-C raises KeyboardInterrupt at once.
The wakeup descriptor set before the run (a host's own event loop's) is set again after it.
Only where SIGINT is Python's default handler (the hook command, certbot): a process started with SIGINT ignored
(a background job of a non-interactive shell) keeps ignoring it, as `asyncio.run` would.

`HeldOff`: a Ctrl-C while a run's outcome is saved (the journal's append, then the spool's entries) waits for
the end of the save, then ends the run; between the two writes it left the journal saying delivered and the entry
pending, and `retry` sent the message again. A second Ctrl-C there ends the run at once (a save that hangs).
A run inside a HeldOff (`with HeldOff(): save(run(...))`) takes SIGINT from it while the loop runs (a Ctrl-C the
HeldOff held before ends the run as it begins) and hands it back to it, not to Python's default handler, as it ends:
a Ctrl-C in the loop's teardown or on the way back to the caller waits for the save too. Handed back to Python's
default handler, a Ctrl-C after `run` had returned (no pipeline.Interrupted then, to carry what finished) ended the
run before the save, with a delivered target's entry still pending, and `retry` sent it again.

The teardown is `asyncio.run`'s (cancel what is left, finish async generators and the default executor), except
that it waits for cancelled tasks at most `TEARDOWN` seconds: a task that swallows its cancellation must not hold
an interrupted run.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

RECANCEL = 0.2  # seconds between cancellation rounds after a Ctrl-C
TEARDOWN = 2.0  # seconds the teardown waits for tasks it cancelled


def run(main: Coroutine[Any, Any, T]) -> T:
    """`main` to completion on a new event loop, as `asyncio.run` would; KeyboardInterrupt after a Ctrl-C."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # refused before anything is made, as asyncio.run refuses it: the caller's loop and signals untouched
        main.close()
        raise RuntimeError("runloop.run() cannot be called from a running event loop")
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(main)
        interrupts = _Interrupts(loop, task)
        previous = _install(loop, interrupts.press)
        if previous is not None and previous[1] is not signal.default_int_handler and previous[1].__self__.pressed:
            interrupts.press()  # a Ctrl-C the HeldOff around the run held until the run began: it ends it now
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupts.pressed:
                raise KeyboardInterrupt from None
            raise
        finally:
            interrupts.stop()
            if previous is not None:
                _hand_back(loop, *previous)
        return result  # it ended by itself meanwhile: what it did is reported and recorded, not dropped
    finally:
        try:
            _teardown(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class _Interrupts:
    """The Ctrl-Cs of one run, and the cancellation rounds that follow the first until its main task ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any]) -> None:
        self._loop, self._main = loop, main
        self.pressed = 0
        self._next: asyncio.TimerHandle | None = None

    def press(self) -> None:
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt  # asyncio lets it out of the loop: the run ends here
        self._main.cancel()
        self._next = self._loop.call_later(RECANCEL, self._again)

    def _again(self) -> None:
        if self._main.done():
            return
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._next = self._loop.call_later(RECANCEL, self._again)

    def stop(self) -> None:
        """No more rounds: the teardown that follows waits for what is left, and must not be cancelled itself."""
        if self._next is not None:
            self._next.cancel()


def _install(loop: asyncio.AbstractEventLoop, on_sigint: Callable[[], None]) -> tuple[int, Any] | None:
    """SIGINT made the loop's own; the wakeup descriptor set before (-1: none), which `add_signal_handler`
    replaces with the loop's: a host's own event loop (the certbot plugin's process, an extension's) learns of its
    signals through it, and must again after the run; and the handler before, Python's default or a HeldOff's
    (a run whose outcome is saved: the HeldOff around it holds a Ctrl-C from the moment the run ends). None: not
    installed."""
    before = signal.getsignal(signal.SIGINT)
    if before is not signal.default_int_handler and not isinstance(getattr(before, "__self__", None), HeldOff):
        return None  # ignored, or someone else's: left as it is
    try:
        previous = signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread
        return None
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # no Unix signals
        signal.set_wakeup_fd(previous)
        return None
    return previous, before


def _hand_back(loop: asyncio.AbstractEventLoop, wakeup: int, before: Any) -> None:
    """SIGINT to whoever had it before the run, and the wakeup descriptor set before (-1: nobody; the removal
    leaves none). Removing the loop's handler makes Python's default the handler for a moment: a Ctrl-C there,
    before a HeldOff's is back, is the HeldOff's, never a KeyboardInterrupt between the run and its save."""
    try:
        try:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, before)
        except KeyboardInterrupt:
            if before is signal.default_int_handler:
                raise
            signal.signal(signal.SIGINT, before)
            before(signal.SIGINT, None)
    finally:
        signal.set_wakeup_fd(wakeup)


def _teardown(loop: asyncio.AbstractEventLoop) -> None:
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.wait(left, timeout=TEARDOWN))
    for task in left:
        if task.done() and not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during the run's teardown",
                                         "exception": task.exception(), "task": task})
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


class HeldOff:
    """A block during which a Ctrl-C waits (`with HeldOff(): ...`): raised as KeyboardInterrupt when the block ends,
    unless one is ending the run already. A second Ctrl-C raises at once. Only where SIGINT is Python's default
    handler, on the main thread (as `run`); nested, the inner one leaves it to the outer. A `run` inside it takes
    SIGINT over while its loop runs, and gives it back as the loop ends. `pressed`: the Ctrl-Cs held so far."""

    def __init__(self) -> None:
        self.pressed = 0
        self._previous: Any = None

    def __enter__(self) -> HeldOff:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            try:
                self._previous = signal.signal(signal.SIGINT, self._press)
            except ValueError:  # not the main thread
                self._previous = None
        return self

    def _press(self, signum: int, frame: object) -> None:
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGINT, self._previous)
        self._previous = None
        ending = isinstance(exc, KeyboardInterrupt) or isinstance(sys.exc_info()[1], KeyboardInterrupt)
        if self.pressed and not ending:
            raise KeyboardInterrupt
