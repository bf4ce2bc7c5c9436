"""A bare aiosmtplib fan-out: COUNT STARTTLS sessions under asyncio.gather, at most CONCURRENCY at once.

Usage: aio_gather.py HOST PORT CAFILE MESSAGE FROM TO COUNT CONCURRENCY; AUTH with $BENCH_SMTP_USER and
$BENCH_SMTP_PASSWORD. Exits 1 unless every session was accepted.
"""

import asyncio
import os
import ssl
import sys

import aiosmtplib


async def main() -> int:
    host, port, cafile, message, sender, rcpt, count, concurrency = sys.argv[1:9]
    with open(message, "rb") as handle:
        data = handle.read()
    context = ssl.create_default_context(cafile=cafile)
    bound = asyncio.Semaphore(int(concurrency))

    async def one() -> bool:
        async with bound:
            await aiosmtplib.send(data, sender=sender, recipients=[rcpt], hostname=host, port=int(port),
                                  start_tls=True, tls_context=context, timeout=120,
                                  username=os.environ["BENCH_SMTP_USER"],
                                  password=os.environ["BENCH_SMTP_PASSWORD"])
            return True

    results = await asyncio.gather(*(one() for _ in range(int(count))), return_exceptions=True)
    failed = [r for r in results if r is not True]
    if failed:
        print(f"{len(failed)} failed; first: {failed[0]!r}", file=sys.stderr)
    return 1 if failed else 0


sys.exit(asyncio.run(main()))
