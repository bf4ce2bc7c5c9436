"""SESSIONS sequential `certbot-smtp-dist deploy` runs in one process (one target each): per-session seconds.

Usage: deploy_loop.py SESSIONS LINEAGE_DIR (config and state dir from the usual environment variables). The first
run pays the imports; the suite compares the later ones with smtplib's sessions. Exits 1 if any run fails.
"""

import contextlib
import io
import logging
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
    print(" ".join(f"{t:.6f}" for t in times))
    return 0


sys.exit(main())
