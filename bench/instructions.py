"""Instruction counts: how many instructions one run of a measured command executes, counted by valgrind.

Wall and CPU times on a small shared machine swing by tens of percent from run to run (another job's load, the
CPU's clock); the number of instructions a process executes barely moves (PYTHONHASHSEED fixed: set iteration order
is then the same). `--instructions` adds these counts to scenarios 1, 3, 6 and 7 as reference rows beside the timed
ratios, where they show which side of a ratio a change moved and by how much. They are never a verdict: a budget is
judged on wall time, and an instruction is not a unit of time (a cache miss, a system call, a wait are not counted).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from measure import BenchError

COUNTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)


def available() -> bool:
    return shutil.which("valgrind") is not None


def count(argv: Sequence[str], env: Mapping[str, str], timeout: float = 1800) -> int:
    """Instructions executed by one run of `argv` (the process itself; valgrind runs it ~50x slower). Raises
    BenchError if the run fails: a count of a failed run measures nothing."""
    tool = shutil.which("valgrind")
    if tool is None:
        raise BenchError("--instructions needs valgrind (Debian: apt-get install valgrind)")
    done = subprocess.run([tool, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
                          env={**env, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, timeout=timeout,
                          check=False)
    found = COUNTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise BenchError(f"{argv[1:3]} under valgrind exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return int(found.group(1))


def millions(instructions: float) -> str:
    return f"{instructions / 1e6:,.{0 if instructions >= 1e8 else 1}f} M"
