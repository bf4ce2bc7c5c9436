"""Issue 16's benchmark suite: certbot-smtp-dist against its peers on loopback, as whole processes, pairs interleaved.

Usage: python bench/suite.py [--quick] [--runs N] [--only 1,3 ...] [--concurrency N] [--results FILE] [--strict]

Prints one Markdown table of medians (wall, CPU user+sys, peak RSS of each child from os.wait4) and the ratio each
budget of the issue judges, with OK/OVER beside it, and writes it with the machine's description to
bench/RESULTS.md. Exit status: 0; with --strict, 1 when a budget is exceeded; 2 when a run fails (a target not
delivered, a peer erroring): that is a broken benchmark, never a timing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _paths  # noqa: F401  (tests/ on sys.path: the suite reuses tests/support)
import instructions
from measure import BenchError, run_process
from report import Row, machine, table
from scenarios import SCENARIOS, Context
from world import BYTECODE_ENV, child_env, make_world

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

ABOUT = """\
Produced by `make bench` (`python bench/suite.py`), which starts every peer itself on 127.0.0.1: an aiosmtpd relay
requiring STARTTLS and AUTH PLAIN (tests/support/relay.py, with the test PKI of tests/support/pki.py), the same
relay delaying each reply (scenario 4), a listener that accepts TCP and never answers (scenario 5), and a private
Debian Postfix instance (tests/support/postfix.py, scenario 7). Each measured run is a whole process; the columns
are medians over the timed runs of its wall time, CPU time (user + sys) and peak RSS (`ru_maxrss` from `os.wait4`
for that child alone: children are forked by a small helper process, bench/spawner.py, so the floor is its
~10 MiB, not the benchmark's own memory). Python children keep their bytecode between runs, in a cache of the
suite's own, as an installed package has it. The variants of each scenario run interleaved (A, B, A, B, ...) after {warmup} untimed
warm-up round(s), so drift in the machine's load hits both sides of a ratio alike. Every Python child, subject and
peer alike, starts with the site-packages of the interpreter that runs the suite; in `make bench`'s development
venv that includes the editable install's `.pth` finder and setuptools' distutils hack, ~60 M instructions of each
process's start (counted 2026-12-02: `python -c pass` 88 M there, 32 M on Debian's own python3) that an ordinary
install does not pay: it dilutes the cold-start ratios of scenarios 1 and 2 towards 1, so on an ordinary install
they would read somewhat higher than here.

The machine is small and shared (other test runs were going on during this one), so absolute times are noisy and
only the ratios are judged, each against the budget of issue 16; peak RSS at 500 targets and the delivered count
are judged as absolute figures. Method, per scenario:

1, 2. `deploy --lineage` for one target vs `bench/clients/smtp_send.py` (smtplib, STARTTLS, AUTH PLAIN) sending the
   message `deploy --dry-run` rendered, byte for byte; `curl --ssl-reqd` and `msmtp` the same when on PATH
   (optional peers, for reference: `apt-get install curl msmtp`; the bench is not part of CI, so .ci/run does
   not install them). And vs `bench/clients/lib_floor.py`, the libraries' floor: the work no `deploy` on
   asyncio and cryptography can skip (those imports, reading the lineage, checking validity and key match,
   building the PKCS#12 with the same KDF rounds, the system store's hashed directory plus the CA file, one
   session on asyncio's own transports, as deploy speaks SMTP), and none of our code. deploy / floor is our own share; floor / smtplib is what the 2x budget would have to fit in. The same floor
   with smtp_send.py's blocking session instead (`lib_floor.py ... smtplib`, asyncio never imported) shows where
   a deploy without asyncio would start.
3. 50 targets on one relay (each target's `timeout` 120 s) vs `bench/clients/aio_gather.py` (aiosmtplib +
   asyncio.gather, at most {concurrency} sessions at once, deploy held to the same `connections_per_relay`;
   `--concurrency`) and vs 50 sequential smtplib sessions; for reference, also vs the same peer trusting the system
   store (its hashed directory) as well as its CA file, as `deploy` trusts a target's with `tls_ca_file` (the peer judged trusts the CA
   file alone);
   then the same on a relay delaying each reply by 10 ms. On the instant relay concurrency buys nothing even for
   the peer (relay and clients share the machine's cores), so the "≥ 1.7× faster than sequential smtplib" budget
   is judged on the delaying relay, and shown for reference only on the instant one.
4. 20 targets vs 1 target, on a relay that delays every reply (greeting included) by 100 ms.
5. 5 healthy targets plus one whose relay accepts TCP and never answers (`timeout` = 4 s) vs the 5 alone: the value
   compares the slowest healthy target's `duration_s` from `--json`; then the whole run against that timeout.
6. `certbot plugins` with the entry point visible vs hidden (bench/bench_certbot_plugins.py's launcher).
7. `bench/clients/deploy_loop.py` (8 `deploy` runs in one process, one target each) vs smtplib's and bare
   aiosmtplib's 8 sessions, against Postfix with STARTTLS (TLS 1.3; no AUTH: the instance has no SASL). Judged: the
   SMTP session as the journal records it (`journal.jsonl`'s documented per-attempt `duration_s`, ms resolution)
   against smtplib's session; each process's median session, the first left out. References: the whole `deploy`
   run per session, bare aiosmtplib (the library deploy used before it spoke SMTP itself), and a minimal asyncio
   client (the floor under any SMTP client on asyncio).
8. 1, 10, 100, 500 targets on one relay (`timeout` 120 s), no warm-up: growth of wall time and peak RSS.

With `--instructions` (valgrind installed), scenarios 1, 3, 6 and 7 also count the instructions one run of each command
executes (bench/instructions.py: valgrind's callgrind, PYTHONHASHSEED fixed): reference rows, "instructions
(valgrind)", deterministic where times swing on a shared machine. They show where a ratio's difference lies (in 3,
what a run costs once and what each further target adds; in 7, what a further session costs each client); they judge nothing, an instruction not being a unit of
time.
"""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, help="timed runs per variant in every scenario (default: per scenario, "
                        + ", ".join(f"{k}: {v[1]}" for k, v in SCENARIOS.items()) + ")")
    parser.add_argument("--quick", action="store_true", help="smoke test: one timed run, no warm-up")
    parser.add_argument("--only", action="append", default=[], metavar="SCENARIO",
                        help="run only these scenarios (1-8; repeat or comma-separate)")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="scenario 3's bound on sessions at once, for the peer and for deploy "
                             "(connections_per_relay); default: deploy's own default")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to write the report ({RESULTS.name})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a budget is exceeded")
    parser.add_argument("--instructions", action="store_true",
                        help="also count the instructions of scenarios 1, 3, 6 and 7's commands with valgrind (reference "
                             "rows, deterministic on a noisy machine; a few minutes more)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for item in args.only for s in item.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.runs is not None and not 1 <= args.runs <= 100:
        parser.error("--runs must be 1..100")
    if args.instructions and not instructions.available():
        parser.error("--instructions needs valgrind on PATH (Debian: apt-get install valgrind)")
    if not 1 <= args.concurrency <= 100:
        parser.error("--concurrency must be 1..100 (connections_per_relay's range)")
    return args


# What the measured children import, compiled once before the first timed run (scenario 8 has no warm-up).
PRIME = ("import smtplib, ssl, asyncio, email.policy, cryptography.x509, "
         "certbot_smtp_dist._internal.cli, certbot_smtp_dist._internal.deploy, certbot_smtp_dist._internal.pipeline, "
         "certbot_smtp_dist._internal.transport, certbot_smtp_dist._internal.lineage, "
         "certbot_smtp_dist._internal.ledger, certbot_smtp_dist._internal.payload")
# aiosmtplib is no dependency of the package (setup.cfg's `bench` extra): only these scenarios' peers import it, so
# the others run on a Python without it, Debian 12's own included.
AIOSMTPLIB_PEERS = frozenset({"3", "7"})


def prime_imports(only: Sequence[str]) -> str:
    """The import line run once before timing: what the chosen scenarios' children import."""
    return PRIME + (", aiosmtplib" if AIOSMTPLIB_PEERS.intersection(only) else "")


def run(args: argparse.Namespace, root: Path) -> list[Row]:
    os.environ[BYTECODE_ENV] = str(root / "pycache")
    world = make_world(root)
    primed = run_process([world.python, "-c", prime_imports(args.only)], child_env(), timeout=300)
    if primed.returncode != 0:
        hint = ""
        if "No module named 'aiosmtplib'" in primed.stderr:
            hint = (f" (scenarios {', '.join(sorted(AIOSMTPLIB_PEERS))} compare against aiosmtplib: "
                    "pip install '.[bench]', or leave them out with --only)")
        raise BenchError(f"cannot import what the children run{hint}: {primed.stderr.strip()[-400:]}")
    warmup = 0 if args.quick else 1
    rows: list[Row] = []
    for name in args.only:
        function, default_runs = SCENARIOS[name]
        runs = args.runs or (1 if args.quick else default_runs)
        started = time.monotonic()
        print(f"scenario {name}: {runs} run(s) per variant...", file=sys.stderr, flush=True)
        found = function(Context(world, runs, warmup, args.concurrency, args.instructions))
        print(f"scenario {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        rows += found
    return rows


def write_results(path: Path, args: argparse.Namespace, rows: Sequence[Row]) -> None:
    over = [row for row in rows if row.verdict == "OVER"]
    lines = ["# Benchmark results", "", ABOUT.format(warmup=0 if args.quick else 1, concurrency=args.concurrency),
             "## Machine", "", *machine(), f"- command: `{' '.join(sys.argv)}`", "", "## Table", "",
             "Subject and peer columns: median wall / CPU / peak RSS of one process.", "", table(rows), "",
             "## Budgets exceeded", ""]
    lines += [f"- {row.scenario}: {row.measurement}: {row.value:.2f}{row.unit} against {row.budget.text()}"
              + (f". Why: {row.why}" if row.why else "")
              for row in over if row.budget is not None and row.value is not None] or ["- none"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # aiosmtpd's AUTH code logs a deprecation of its own attribute on every login to the in-process relays.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="certbot-smtp-dist-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # Postfix's virtual(8) runs unprivileged and must traverse it
        try:
            rows = run(args, root)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    print(table(rows))
    write_results(args.results, args, rows)
    print(f"written to {args.results}", file=sys.stderr)
    return 1 if args.strict and any(row.verdict == "OVER" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
