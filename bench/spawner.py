"""Starts and reaps the measured processes, from a process kept small, so each child's peak RSS is its own.

Linux records the RSS high-water mark of the memory a process had before exec (the forking parent's copy, even
under vfork) in the child's ``ru_maxrss``: a child forked by the benchmark (relays, PKI, 40+ MiB) would report at
least that. Forked from this small interpreter (run with ``-I -S``, importing only ``os``, ``sys``, ``json``,
``signal``, ``time``, ``typing``) the floor is this process's few MiB instead.

Protocol: one JSON request per line on stdin ``{"argv", "env", "stdin", "stdout", "stderr", "timeout"}`` (file
paths), one JSON reply per line on stdout ``{"wall", "cpu", "maxrss_kib", "status", "killed"}``. Ends at EOF.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

_child = 0


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _child:
        os.kill(_child, signal.SIGKILL)


def _spawn(request: dict[str, Any]) -> dict[str, Any]:
    global _child
    fds = [os.open(request["stdin"], os.O_RDONLY),
           os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
           os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.execve(request["argv"][0], request["argv"], request["env"])
        finally:
            os._exit(127)
    for fd in fds:
        os.close(fd)
    _child = pid
    signal.setitimer(signal.ITIMER_REAL, float(request["timeout"]))
    try:
        _, status, usage = os.wait4(pid, 0)  # retried after the alarm's handler (PEP 475)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _child = 0
    wall = time.perf_counter() - started
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss,
            "status": os.waitstatus_to_exitcode(status), "killed": wall >= float(request["timeout"])}


def main() -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    for line in sys.stdin:
        sys.stdout.write(json.dumps(_spawn(json.loads(line))) + "\n")
        sys.stdout.flush()


main()
