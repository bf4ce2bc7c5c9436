"""A bare aiosmtplib fan-out: COUNT STARTTLS sessions under asyncio.gather, at most CONCURRENCY at once.

Usage: aio_gather.py HOST PORT CAFILE MESSAGE FROM TO COUNT CONCURRENCY; AUTH with $BENCH_SMTP_USER and
$BENCH_SMTP_PASSWORD when the user is set. With $BENCH_SYSTEM_STORE=1 it trusts the system store (its hashed
directory, looked up by subject, as `deploy`'s first look does) as well as CAFILE, as `deploy` does for a target
with `tls_ca_file`; else CAFILE alone. Prints each session's seconds on one line;
exits 1 unless every session was accepted.
"""

import asyncio
import os
import ssl
import sys
import time

import aiosmtplib


async def main() -> int:
    host, port, cafile, message, sender, rcpt, count, concurrency = sys.argv[1:9]
    with open(message, "rb") as handle:
        data = handle.read()
    if os.environ.get("BENCH_SYSTEM_STORE") == "1":
        store = ssl.get_default_verify_paths().capath  # the system store's hashed directory...
        context = ssl.create_default_context(capath=store)
        context.load_verify_locations(cafile)  # ...and the CA file
    else:
        context = ssl.create_default_context(cafile=cafile)
    bound = asyncio.Semaphore(int(concurrency))

    user = os.environ.get("BENCH_SMTP_USER") or None
    password = os.environ["BENCH_SMTP_PASSWORD"] if user else None
    times = []

    async def one() -> bool:
        async with bound:
            started = time.perf_counter()
            await aiosmtplib.send(data, sender=sender, recipients=[rcpt], hostname=host, port=int(port),
                                  start_tls=True, tls_context=context, timeout=120, username=user,
                                  password=password)
            times.append(time.perf_counter() - started)
            return True

    results = await asyncio.gather(*(one() for _ in range(int(count))), return_exceptions=True)
    failed = [r for r in results if r is not True]
    print(" ".join(f"{t:.6f}" for t in times))
    if failed:
        print(f"{len(failed)} failed; first: {failed[0]!r}", file=sys.stderr)
    return 1 if failed else 0


sys.exit(asyncio.run(main()))
