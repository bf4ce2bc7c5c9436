"""SESSIONS sequential `certbot-smtp-dist deploy` runs in one process (one target each), timed two ways.

Usage: deploy_loop.py SESSIONS LINEAGE_DIR (config and state dir from the usual environment variables). Prints two
lines of seconds: each whole run, then each SMTP session as the journal recorded it (its documented per-attempt
``duration_s``). The first run pays the imports; the suite compares the later ones. Exits 1 if any run fails.
"""

import contextlib
import io
import json
import logging
import os
import sys
import time

from certbot_smtp_dist._internal import cli


def main() -> int:
    sessions, lineage = int(sys.argv[1]), sys.argv[2]
    logger = logging.getLogger("certbot_smtp_dist")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    times = []
    for _ in range(sessions):
        sink = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = cli.main(["deploy", "--lineage", lineage])
        times.append(time.perf_counter() - started)
        logger.handlers[:], logger.propagate, logger.level = saved  # main() sets up logging per process
        if code != 0:
            print(f"deploy exit status {code}: {sink.getvalue()[-400:]}", file=sys.stderr)
            return 1
    journal = os.path.join(os.environ["CERTBOT_SMTP_DIST_STATE_DIR"], "journal.jsonl")
    with open(journal, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    sessions_s = [float(r["duration_s"]) for r in records if r.get("event") == "attempt"][-sessions:]
    print(" ".join(f"{t:.6f}" for t in times))
    print(" ".join(f"{t:.6f}" for t in sessions_s))
    return 0


sys.exit(main())
