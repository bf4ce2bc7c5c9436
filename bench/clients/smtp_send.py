"""A minimal smtplib client: SESSIONS sequential STARTTLS sessions sending one message file (the benchmark's peer).

Usage: smtp_send.py HOST PORT CAFILE MESSAGE FROM TO SESSIONS; AUTH PLAIN with $BENCH_SMTP_USER and
$BENCH_SMTP_PASSWORD when the user is set. Prints each session's seconds on one line.
"""

import os
import smtplib
import ssl
import sys
import time


def main() -> None:
    host, port, cafile, message, sender, rcpt, sessions = sys.argv[1:8]
    user = os.environ.get("BENCH_SMTP_USER", "")
    with open(message, "rb") as handle:
        data = handle.read()
    context = ssl.create_default_context(cafile=cafile)
    times = []
    for _ in range(int(sessions)):
        started = time.perf_counter()
        with smtplib.SMTP(host, int(port), timeout=30) as smtp:
            smtp.starttls(context=context)
            if user:
                smtp.login(user, os.environ["BENCH_SMTP_PASSWORD"])
            smtp.sendmail(sender, [rcpt], data)
        times.append(time.perf_counter() - started)
    print(" ".join(f"{t:.6f}" for t in times))


main()
