"""`status --nagios`: its options, and the check built from `status`'s rows and the journal (see nagios.py)."""

from __future__ import annotations

import argparse
import time
from typing import Any


def nagios_options(status: argparse.ArgumentParser) -> None:
    status.add_argument("--nagios", action="store_true",
                        help="print one Nagios/Icinga plugin line (SMTP-DIST OK|WARNING|CRITICAL|UNKNOWN - summary "
                             "| perfdata), the details on the lines after it; exit 0/1/2/3")
    status.add_argument("--warn-days", type=int, default=14, metavar="N",
                        help="with --nagios: WARNING when a delivered certificate expires within N days (default 14)")
    status.add_argument("--crit-days", type=int, default=7, metavar="M",
                        help="with --nagios: CRITICAL when a delivered certificate expires within M days (default 7)")


def nagios_empty(args: argparse.Namespace, problem: str, hint: str) -> int:
    """No state there yet, or nothing ever delivered (no target wanted a certificate): OK with --allow-empty, else
    UNKNOWN, with `hint`."""
    from certbot_smtp_dist._internal import nagios

    verdict = nagios.OK if args.allow_empty else nagios.UNKNOWN
    print(nagios.line(verdict, problem + ("" if args.allow_empty else f" ({hint})")))
    return verdict


def nagios_status(args: argparse.Namespace, records: list[dict[str, Any]], rows: list[dict[str, Any]],
                  needs_human: list[bool], tampered: str | None = None, notes: list[str] | None = None) -> int:
    """The check over `status`'s rows and the verified journal's delivered certificates of the configured targets;
    `tampered`: why the journal fails verification (CRITICAL), None when it verifies; `notes`: long-output lines
    that change no state (a certificate no target wanted at its last deploy)."""
    from certbot_smtp_dist._internal import metrics, nagios
    from certbot_smtp_dist._internal.cli_state import next_command
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.loader import load
    from certbot_smtp_dist.errors import UsageError

    if not 0 <= args.crit_days <= args.warn_days:
        raise UsageError(f"--crit-days {args.crit_days} and --warn-days {args.warn_days}: need 0 <= crit <= warn")
    configured = [t.name for t in load(config_path(args.config)).settings.targets]
    expiries = [nagios.Expiry(v.target, cert, when) for v in metrics.collect(records, (), configured)
                for cert, when in v.not_after]
    journal = None if tampered is None else nagios.Tampered(tampered, next_command(args, "journal", "verify"))
    code, text = nagios.check(rows, needs_human, expiries, time.time(),
                              nagios.Thresholds(args.warn_days, args.crit_days), journal, notes or ())
    print(text)
    return code
