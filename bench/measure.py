"""Whole-process measurements: wall time, CPU (user + sys) and peak RSS of one child, and interleaved series."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A measured process failed or misbehaved: the suite stops with this message, never a timing."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished child: its own rusage from os.wait4, so no other child of the benchmark leaks in."""

    wall_s: float
    cpu_s: float  # ru_utime + ru_stime of the child
    rss_bytes: int  # ru_maxrss of the child (Linux counts KiB)
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class Stats:
    """Medians of a series of samples."""

    wall_s: float
    cpu_s: float
    rss_bytes: float
    runs: int

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Stats:
        if not samples:
            raise BenchError("no samples")
        return cls(
            wall_s=statistics.median(s.wall_s for s in samples),
            cpu_s=statistics.median(s.cpu_s for s in samples),
            rss_bytes=statistics.median(s.rss_bytes for s in samples),
            runs=len(samples),
        )

    def brief(self) -> str:
        return f"{self.wall_s * 1000:.0f} ms / {self.cpu_s * 1000:.0f} ms / {self.rss_bytes / MIB:.0f} MiB"


class _Spawner:
    """The small process that forks, execs and reaps every measured child (see spawner.py for why)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None

    def _started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            script = Path(__file__).resolve().parent / "spawner.py"
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", str(script)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True)
            atexit.register(self.stop)
        return self._proc

    def run(self, request: dict[str, object]) -> dict[str, Any]:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        reply = proc.stdout.readline()
        if not reply:
            raise BenchError("the spawner process died")
        answer: dict[str, Any] = json.loads(reply)
        return answer

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # EOF: the spawner ends its loop
            self._proc.wait(10)
        self._proc = None


_SPAWNER = _Spawner()


def run_process(argv: Sequence[str], env: Mapping[str, str], *, timeout: float, stdin: bytes = b"") -> Sample:
    """Run one child to its end (killed after `timeout` seconds), measured by the spawner with os.wait4."""
    executable = shutil.which(argv[0], path=env.get("PATH")) if os.sep not in argv[0] else argv[0]
    if executable is None:
        raise BenchError(f"{argv[0]} not found")
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        files = {name: Path(tmp) / name for name in ("stdin", "stdout", "stderr")}
        files["stdin"].write_bytes(stdin)
        reply = _SPAWNER.run({"argv": [executable, *argv[1:]], "env": dict(env), "timeout": timeout,
                              **{name: str(path) for name, path in files.items()}})
        out, err = (files[n].read_bytes().decode("utf-8", "replace") for n in ("stdout", "stderr"))
    if reply["killed"]:
        raise BenchError(f"{argv[0]} {' '.join(argv[1:3])}... killed after {timeout:.0f} s")
    return Sample(wall_s=reply["wall"], cpu_s=reply["cpu"], rss_bytes=int(reply["maxrss_kib"]) * 1024,
                  returncode=int(reply["status"]), stdout=out, stderr=err)


@dataclass(frozen=True, slots=True)
class Variant:
    """One side of a comparison: how to run it once, and how to check that run did the work."""

    name: str
    run: Callable[[], Sample]
    check: Callable[[Sample], None]


def interleave(variants: Sequence[Variant], *, runs: int, warmup: int) -> dict[str, list[Sample]]:
    """Run A, B, C, A, B, C... so drift in the machine's load hits every variant alike; warm-up runs are dropped."""
    samples: dict[str, list[Sample]] = {v.name: [] for v in variants}
    for index in range(warmup + runs):
        for variant in variants:
            sample = variant.run()
            variant.check(sample)
            if index >= warmup:
                samples[variant.name].append(sample)
    return samples


def expect_exit(code: int = 0) -> Callable[[Sample], None]:
    def check(sample: Sample) -> None:
        if sample.returncode != code:
            tail = (sample.stderr or sample.stdout).strip().splitlines()[-5:]
            raise BenchError(f"exit status {sample.returncode}, expected {code}: " + " / ".join(tail))

    return check
