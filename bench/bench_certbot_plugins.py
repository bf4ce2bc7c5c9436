"""Wall time of `certbot plugins` with the `smtp-dist` plugin installed, against the same certbot with it hidden.

Usage: python bench/bench_certbot_plugins.py [--runs 30] [--python /path/to/venv/bin/python]

Both variants run the same launcher (certbot's own `main`, with `importlib.metadata.entry_points` wrapped), so the
only difference is whether certbot discovers our entry point, imports `certbot_smtp_dist.certbot_plugin` and lists
it. Runs alternate between the variants so drift in machine load hits both alike. The target (issue 3) is a ratio
of medians of at most 1.05; the exit status is 1 when it is exceeded. Not part of the test suite: timings are noisy.
The suite (bench/suite.py, scenario 6) runs the same LAUNCHER and puts the ratio in its table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_RATIO = 1.05

LAUNCHER = """
import importlib.metadata as md, os, sys

_entry_points = md.entry_points

def entry_points(**params):
    found = _entry_points(**params)
    if os.environ.get("BENCH_HIDE_SMTP_DIST") == "1":
        found = md.EntryPoints(ep for ep in found if not ep.value.startswith("certbot_smtp_dist"))
    return found

md.entry_points = entry_points
from certbot.main import main
sys.argv[0] = "certbot"
sys.exit(main())
"""


def run_once(python: str, workdir: str, hide: bool) -> tuple[float, str]:
    env = dict(os.environ, BENCH_HIDE_SMTP_DIST="1" if hide else "0")
    argv = [python, "-c", LAUNCHER, "plugins", "--config-dir", f"{workdir}/config", "--work-dir", f"{workdir}/work",
            "--logs-dir", f"{workdir}/logs"]
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per variant first (default 3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the venv holding certbot")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-certbot-") as workdir:
        _, listed = run_once(args.python, workdir, hide=False)
        _, hidden = run_once(args.python, workdir, hide=True)
        if "* smtp-dist" not in listed or "* smtp-dist" in hidden:
            print("setup error: the plugin must be listed in the first variant only", file=sys.stderr)
            return 2
        for _ in range(args.warmup):
            run_once(args.python, workdir, hide=False)
            run_once(args.python, workdir, hide=True)
        with_plugin: list[float] = []
        without_plugin: list[float] = []
        for _ in range(args.runs):
            with_plugin.append(run_once(args.python, workdir, hide=False)[0])
            without_plugin.append(run_once(args.python, workdir, hide=True)[0])

    med_with, med_without = statistics.median(with_plugin), statistics.median(without_plugin)
    ratio = med_with / med_without
    for label, samples in (("with smtp-dist", with_plugin), ("without smtp-dist", without_plugin)):
        print(f"{label:>18}: median {statistics.median(samples) * 1000:7.1f} ms  "
              f"mean {statistics.mean(samples) * 1000:7.1f} ms  "
              f"stdev {statistics.stdev(samples) * 1000:6.1f} ms  (n={len(samples)})")
    print(f"{'added':>18}: {(med_with - med_without) * 1000:+7.1f} ms")
    verdict = "OK" if ratio <= TARGET_RATIO else "TOO SLOW"
    print(f"{'ratio':>18}: {ratio:.3f} (target <= {TARGET_RATIO}) {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
