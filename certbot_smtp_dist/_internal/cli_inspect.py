"""The `inspect` subcommand: argv onto inspection.py, its report on stdout, its verdict as the exit status."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from certbot_smtp_dist.errors import UsageError


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    inspect = sub.add_parser("inspect", help="diagnose a certificate lineage offline: chain complete and in order, "
                                             "key matches, expiry, trust anchor (exits 65 on an error)")
    common(inspect)
    src = inspect.add_argument_group("certificate (one of --lineage DIR or the files)")
    src.add_argument("--lineage", metavar="DIR", help="certbot-style live directory")
    src.add_argument("--cert", metavar="FILE", help="leaf certificate (PEM)")
    src.add_argument("--key", metavar="FILE", help="private key (PEM)")
    src.add_argument("--chain", metavar="FILE", help="issuer certificates (PEM)")
    src.add_argument("--fullchain", metavar="FILE", help="leaf followed by issuers (PEM)")
    inspect.add_argument("--ca-file", metavar="FILE",
                         help="trust anchors (PEM) to build the chain to, instead of the system trust store")
    inspect.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    inspect.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        return _inspect(args)
    except UsageError as exc:
        if args.json:  # one JSON document on stdout on every path, as `check` and `deploy` do
            from certbot_smtp_dist._internal.inspection import usage_error_json

            print(usage_error_json(str(exc)))
        raise


def _inspect(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal import inspection
    from certbot_smtp_dist._internal import lineage as lin

    given = (args.cert, args.key, args.chain, args.fullchain)
    if args.lineage and any(given):
        raise UsageError("inspect: --lineage and --cert/--key/--chain/--fullchain are exclusive")
    if args.lineage:
        source = lin.from_lineage_dir(Path(args.lineage))
    elif any(given):
        source = lin.from_files(args.cert, args.key, args.chain, args.fullchain, None)
    else:
        raise UsageError("inspect: give --lineage DIR, or --key with --fullchain (or --cert and --chain)")
    found = inspection.run(source, Path(args.ca_file) if args.ca_file else None, datetime.now(timezone.utc))
    print(inspection.as_json(found) if args.json else inspection.as_text(found))
    return found.exit_status
