"""A Ctrl-C always ends a run (runloop.py): a cancellation dropped once (asyncio.wait_for before Python 3.12 does,
CPython gh-86296) is made again, a SIGINT taken by another thread still wakes the loop, a second Ctrl-C ends the
run at once, and work that finished meanwhile is returned, not dropped.

Each case runs in a process of its own (a SIGINT to the test runner would end it). Every stall is 60 s and every
process is given 30 s: an interrupt lost ends the process by the test's timeout, and the case fails."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import certbot_smtp_dist
from certbot_smtp_dist._internal import runloop

PRELUDE = textwrap.dedent("""\
    import asyncio, os, signal, sys, threading
    from certbot_smtp_dist._internal import runloop

    def ctrl_c(after):
        threading.Timer(after, os.kill, (os.getpid(), signal.SIGINT)).start()

    def outcome(main):
        try:
            print("returned", runloop.run(main()))
        except KeyboardInterrupt:
            print("interrupted")
        handler = signal.getsignal(signal.SIGINT)
        print("handler", "default" if handler is signal.default_int_handler else
              "ignored" if handler == signal.SIG_IGN else handler)
""")


def _outcome(case: str) -> list[str]:
    env = {"PYTHONPATH": str(Path(certbot_smtp_dist.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(case)], capture_output=True, text=True,
                          env=env, timeout=30)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.splitlines()


def test_a_cancellation_dropped_once_is_made_again() -> None:
    # What asyncio.wait_for does when the interrupt lands as the reply it waits for arrives: the reply is returned
    # and the cancellation forgotten; the session goes on to the relay's next stall. asyncio.run waits that stall out.
    assert _outcome("""
        async def main():
            ctrl_c(0.2)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass  # dropped
            await asyncio.sleep(60)  # the relay holds its reply to the final "."
            return "the deadline"
        outcome(main)
    """) == ["interrupted", "handler default"]


def test_a_task_that_drops_it_below_a_gather_is_cancelled_again_too() -> None:
    # The shape of a run: the main task gathers one task per target; the target's session is a task of its own
    # (the wait_for around it); the one inside it drops the cancellation, and its waiter waits for it.
    assert _outcome("""
        async def session():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(60)

        async def target():
            await asyncio.wait_for(session(), 120)

        async def main():
            ctrl_c(0.2)
            await asyncio.gather(target(), target())
        outcome(main)
    """) == ["interrupted", "handler default"]


def test_a_sigint_taken_by_another_thread_wakes_the_loop() -> None:
    # Python's handler runs on the main thread only, when it runs Python code: asleep in select() until the
    # loop's next timer (60 s), it would not see this one. The loop's wakeup descriptor does.
    assert _outcome("""
        async def main():
            threading.Timer(0.2, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)).start()
            await asyncio.sleep(60)
        outcome(main)
    """) == ["interrupted", "handler default"]


def test_a_second_ctrl_c_ends_a_run_that_ignores_the_first() -> None:
    assert _outcome("""
        async def stubborn():
            for _ in range(1000):  # drops every cancellation: only the second Ctrl-C ends the run
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    pass

        async def main():
            ctrl_c(0.2)
            ctrl_c(1.0)
            await stubborn()
        outcome(main)
    """) == ["interrupted", "handler default"]


def test_work_that_finished_meanwhile_is_returned_not_dropped() -> None:
    # The relay took the message as the Ctrl-C came: the delivery is recorded, so `retry` never sends it again.
    assert _outcome("""
        async def main():
            ctrl_c(0.2)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                return "delivered"
        outcome(main)
    """) == ["returned delivered", "handler default"]


def test_a_process_that_ignores_sigint_keeps_ignoring_it() -> None:
    # A background job of a non-interactive shell starts with SIGINT ignored; so does the run, as asyncio.run's.
    assert _outcome("""
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        async def main():
            ctrl_c(0.1)
            await asyncio.sleep(0.5)
            return "done"
        outcome(main)
    """) == ["returned done", "handler ignored"]


def test_a_run_off_the_main_thread_runs_without_a_handler_of_its_own() -> None:
    # The certbot plugin may be called from any thread; signals are the main thread's business there.
    answers: list[object] = []

    async def main() -> str:
        return "done"

    worker = threading.Thread(target=lambda: answers.append(runloop.run(main())))
    worker.start()
    worker.join(30)
    assert answers == ["done"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_exception_of_the_work_is_raised_as_asyncio_run_raises_it() -> None:
    async def main() -> None:
        raise LookupError("the work's own")

    with pytest.raises(LookupError, match="the work's own"):
        runloop.run(main())


def test_the_wakeup_descriptor_of_whoever_set_it_before_is_set_again_after_the_run() -> None:
    # A program hosting the certbot plugin (or an extension) whose own event loop handles SIGTERM: its loop learns
    # of a signal through the wakeup descriptor it set. asyncio.run leaves that alone; add_signal_handler replaces
    # it, and remove_signal_handler leaves none at all: the host's loop no longer heard its signals.
    assert _outcome("""
        host = asyncio.new_event_loop()
        heard = host.create_future()
        host.add_signal_handler(signal.SIGTERM, heard.set_result, "SIGTERM")

        async def main():
            return "done"
        outcome(main)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        try:
            print("host", host.run_until_complete(asyncio.wait_for(heard, 20)))
        except asyncio.TimeoutError:
            print("host deaf")
    """) == ["returned done", "handler default", "host SIGTERM"]


def test_a_run_inside_a_running_loop_is_refused_and_leaves_that_loop_alone() -> None:
    # As asyncio.run refuses it, before anything is made: no loop of ours replaces the caller's current one (it was
    # unset), no signal handler, and the work is closed, never left for the collector to warn about on stderr.
    async def main() -> str:
        return "done"

    async def outer() -> bool:
        work = main()
        with pytest.raises(RuntimeError):
            runloop.run(work)
        return work.cr_frame is None

    host = asyncio.new_event_loop()
    asyncio.set_event_loop(host)
    try:
        assert host.run_until_complete(outer())
        assert asyncio.get_event_loop() is host  # still the thread's current loop
    finally:
        asyncio.set_event_loop(None)
        host.close()


HELD = textwrap.dedent("""\
    def press():
        os.kill(os.getpid(), signal.SIGINT)

    def held(presses, ending=False):
        done = []
        try:
            try:
                if ending:
                    raise KeyboardInterrupt("the run's own")
            finally:
                with runloop.HeldOff():
                    for _ in range(presses):
                        press()
                        done.append(len(done))  # the next step runs: the Ctrl-C waits
                    done.append("saved")
            print("no interrupt", done)
        except KeyboardInterrupt as exc:
            print("interrupted", str(exc) or "here", done)
        print("handler", "default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "other")
""")


@pytest.mark.parametrize(("case", "expected"), [
    ("held(1)", ["interrupted here [0, 'saved']", "handler default"]),  # waits for the end of the block
    ("held(2)", ["interrupted here [0]", "handler default"]),  # the second one raises at once
    ("held(0)", ["no interrupt ['saved']", "handler default"]),
    ("held(1, ending=True)", ["interrupted the run's own [0, 'saved']", "handler default"]),  # not raised twice
    ("signal.signal(signal.SIGINT, signal.SIG_IGN); held(1)",  # someone else's SIGINT: left alone
     ["no interrupt [0, 'saved']", "handler other"]),
])
def test_a_ctrl_c_while_held_off_waits_for_the_end_of_the_block(case: str, expected: list[str]) -> None:
    assert _outcome(HELD + case) == expected


HELD_EDGES = textwrap.dedent("""\
    def report(what):
        print(what, "default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "other")

    def raising_inside():  # no Ctrl-C: the block's own exception, the handler given back
        try:
            with runloop.HeldOff():
                raise ValueError("the save's own")
        except ValueError as exc:
            report(str(exc))

    def nested(presses):  # the inner block leaves it to the outer: one KeyboardInterrupt, at the outer's end
        done = []
        try:
            with runloop.HeldOff():
                with runloop.HeldOff():
                    for _ in range(presses):
                        os.kill(os.getpid(), signal.SIGINT)
                    done.append("inner")
                done.append("outer")
            report(f"no interrupt {done}")
        except KeyboardInterrupt:
            report(f"interrupted {done}")

    def on_a_thread():  # not the main thread: nothing changed, nothing raised
        import threading
        seen = []
        def work():
            with runloop.HeldOff():
                seen.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(10)
        report(f"thread {seen}")
""")


@pytest.mark.parametrize(("case", "expected"), [
    ("raising_inside()", ["the save's own default"]),
    ("nested(0)", ["no interrupt ['inner', 'outer'] default"]),
    ("nested(1)", ["interrupted ['inner', 'outer'] default"]),
    ("on_a_thread()", ["thread [True] default"]),
])
def test_held_off_gives_the_handler_back_and_raises_only_for_a_ctrl_c(case: str, expected: list[str]) -> None:
    assert _outcome(HELD_EDGES + case) == expected


AROUND = textwrap.dedent("""\
    def around(before=False, during=False, after=False, window=False):
        # A run inside a HeldOff, as a use case runs its deliveries and saves them: the run's loop takes SIGINT while
        # it runs and hands it back to the HeldOff, never to Python's default handler, as it ends.
        done = []
        if window:  # the moment the loop's handler is removed: Python's default handler until the HeldOff's is back
            from asyncio import unix_events
            remove = unix_events._UnixSelectorEventLoop.remove_signal_handler
            def then_ctrl_c(self, sig):
                removed = remove(self, sig)
                os.kill(os.getpid(), signal.SIGINT)
                return removed
            unix_events._UnixSelectorEventLoop.remove_signal_handler = then_ctrl_c

        async def main():
            if during:
                ctrl_c(0.2)
            await asyncio.sleep(60 if before or during else 0)
            return "delivered"

        try:
            with runloop.HeldOff():
                if before:
                    os.kill(os.getpid(), signal.SIGINT)
                try:
                    done.append(runloop.run(main()))
                except KeyboardInterrupt:
                    done.append("run interrupted")
                    raise
                if after:
                    os.kill(os.getpid(), signal.SIGINT)
                done.append("saved")
            print("no interrupt", done)
        except KeyboardInterrupt:
            print("interrupted", done)
        print("handler", "default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "other")
""")


@pytest.mark.parametrize(("case", "expected"), [
    ("around()", ["no interrupt ['delivered', 'saved']", "handler default"]),
    ("around(during=True)", ["interrupted ['run interrupted']", "handler default"]),  # the loop's: it ends the run
    ("around(before=True)", ["interrupted ['run interrupted']", "handler default"]),  # held until the run began
    ("around(after=True)", ["interrupted ['delivered', 'saved']", "handler default"]),  # waits for the save
    ("around(window=True)", ["interrupted ['delivered', 'saved']", "handler default"]),  # the hand-back's moment
])
def test_a_run_inside_held_off_takes_sigint_while_it_runs_and_hands_it_back(case: str, expected: list[str]) -> None:
    assert _outcome(AROUND + case) == expected
