"""Our own process's start-up: the cyclic garbage collector paused while the modules load, resumed for the work."""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Called by our own process (the `deploy` hook), never by an interpreter that hosts us (the certbot plugin):
    loading a deploy's modules allocates some 10^5 objects that all live on, and every collection they trigger
    traverses them for nothing (~2% of a one-target deploy's instructions, issue 16). A collector someone else
    disabled is left as it is."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Before the deliveries, whose garbage is collected as always: what start-up made is moved out of the
    collector's sight (gc.freeze: it lives as long as the process), then collection resumes. Nothing when pause()
    did not pause it."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
