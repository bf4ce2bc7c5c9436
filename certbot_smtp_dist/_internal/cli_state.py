"""Subcommands over the state directory: retry, status, dismiss, history, journal verify."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.state import StateKeys

# Nagios plugin convention, so monitoring can use `status` as a check as is.
STATUS_OK, STATUS_WARNING, STATUS_CRITICAL = 0, 1, 2


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    retry = sub.add_parser("retry", help="re-send spooled deliveries (for a systemd timer or cron)")
    common(retry)
    retry.add_argument("--include-failed", action="store_true",
                       help="also re-send permanently failed entries (after fixing their cause)")
    retry.add_argument("--include-uncertain", action="store_true",
                       help="also re-send uncertain entries, whose relay may already have them (after checking)")
    retry.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    retry.set_defaults(func=cmd_retry)

    status = sub.add_parser("status", help="list pending, uncertain and failed deliveries; non-zero while any exist")
    common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    dismiss = sub.add_parser("dismiss", help="close a failed, uncertain or pending spool entry by hand")
    common(dismiss)
    dismiss.add_argument("entry", nargs="+", help="entry id (see `status`)")
    dismiss.set_defaults(func=cmd_dismiss)

    history = sub.add_parser("history", help="what was shipped to whom, from the journal")
    common(history)
    history.add_argument("--json", action="store_true")
    history.add_argument("--all", action="store_true", help="every attempt, not only deliveries")
    history.set_defaults(func=cmd_history)

    journal = sub.add_parser("journal", help="the tamper-evident journal")
    common(journal)
    jsub = journal.add_subparsers(dest="action", metavar="ACTION")
    jsub.required = True
    verify = jsub.add_parser("verify", help="check the hash chain; non-zero if a line was edited, removed or cut")
    common(verify)
    verify.set_defaults(func=cmd_journal_verify)


def _state(args: argparse.Namespace) -> Path:
    from certbot_smtp_dist._internal.ownership import require_trusted_state
    from certbot_smtp_dist._internal.state import state_dir

    path = state_dir(args.state_dir)
    require_trusted_state(path)
    return path


def _keys(args: argparse.Namespace, state: Path) -> StateKeys:
    """The state's keys, from the credential store beside the config (its master key is created if missing: the
    state cannot be read without them); a 0.1.0 state directory is upgraded on this first use."""
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.loader import credential_store
    from certbot_smtp_dist._internal.ownership import require_trusted_config
    from certbot_smtp_dist._internal.state import state_keys
    from certbot_smtp_dist._internal.upgrade import upgrade

    config = config_path(args.config)
    require_trusted_config(config)
    keys = state_keys(credential_store(config), state, create=True)
    if state.is_dir():
        upgrade(state, config, keys)
    return keys


def cmd_retry(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal import drain, report
    from certbot_smtp_dist._internal.config import config_path

    result = drain.run(_state(args), config_path(args.config), args.include_failed,
                       include_uncertain=args.include_uncertain)
    if args.json:
        print(report.json_document(None, result.results, extra={
            "closed": [{"entry": i, "reason": why} for i, why in result.closed], "busy": result.busy}))
    return result.exit_status


def cmd_status(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal.spool import FAILED, UNCERTAIN, Rejected, Spool

    state = _state(args)
    rows: list[dict[str, Any]] = []
    for item in Spool(state, _keys(args, state).spool).entries():
        if isinstance(item, Rejected):
            rows.append({"id": item.path.stem, "file": str(item.path), "state": "rejected", "detail": item.problem})
            continue
        failure = item.last_failure or {}
        rows.append({"id": item.id, "state": item.state, "kind": item.kind, "target": item.target,
                     "certificate": item.certificate,
                     "serial": item.serial, "message_id": item.message_id, "recipients": list(item.envelope_to),
                     "attempts": item.attempts, "created": item.created, "updated": item.updated,
                     "error_code": failure.get("error_code"), "detail": failure.get("detail")})
        if item.state == UNCERTAIN:
            rows[-1]["resend_due"] = item.resend_due
    if args.json:
        print(json.dumps({"entries": rows}, indent=2))
    elif not rows:
        print("OK: no pending, uncertain or failed deliveries")
    else:
        for r in rows:
            if r["state"] == "rejected":
                print(f"REJECTED: spool file {r['file']}: {r['detail']}")
                continue
            what = "deploy blocked" if r.get("kind") == "blocked" else f"target={r.get('target')}"
            print(f"{r['state'].upper()}: {r['id']} {what} certificate={r.get('certificate')} "
                  f"attempts={r.get('attempts')} since={r.get('created')} {r.get('error_code') or ''} "
                  f"{r.get('detail') or ''}{_uncertain_note(r)}".rstrip())
    # An uncertain delivery that `retry` will not re-send by itself needs a human as much as a failed one.
    if any(r["state"] in (FAILED, "rejected") or r.get("resend_due") is False for r in rows):
        return STATUS_CRITICAL
    return STATUS_WARNING if rows else STATUS_OK


def _uncertain_note(row: dict[str, Any]) -> str:
    if "resend_due" not in row:
        return ""
    then = ("`retry` re-sends it once" if row["resend_due"] else
            "check with the recipients, then `retry --include-uncertain` or `dismiss`")
    return f" (the recipients may already have {row.get('message_id')}: {then})"


def cmd_dismiss(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.spool import Busy, Rejected, Spool

    state = _state(args)
    keys = _keys(args, state)
    spool = Spool(state, keys.spool)
    ledger = Ledger(state, "dismiss", keys)
    code = 0
    for entry_id in args.entry:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", entry_id):
            print(f"not a spool entry id: {entry_id!r}", file=sys.stderr)
            code = 1
            continue
        try:
            with spool.claim(entry_id) as entry:
                if entry is None:
                    print(f"no spool entry {entry_id}", file=sys.stderr)
                    code = 1
                    continue
                ledger.close(entry, "dismissed", None, "dismissed by hand")
        except Busy:
            print(f"entry {entry_id} is being delivered right now", file=sys.stderr)
            code = 1
            continue
        except Rejected as rejected:  # never acted on; removing it by hand is journalled
            spool.discard(rejected.path)
            ledger.record("dismissed", None, None, detail=f"rejected spool file {rejected.path.name} removed by "
                                                          f"hand: {rejected.problem}")
        print(f"dismissed {entry_id}", file=sys.stderr)
    return code


def cmd_history(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal.journal import Journal

    keep = ("delivered", "partial", "uncertain")  # uncertain: may have been shipped
    rows = [r for r in Journal(_state(args)).records()
            if args.all or (r.get("event") == "attempt" and r.get("outcome") in keep)]
    if args.json:
        print(json.dumps({"history": rows}, indent=2))
        return 0
    for r in rows:
        extra = f" {r.get('error_code')} {r.get('detail') or r.get('reply') or ''}" if r.get("error_code") else ""
        print(f"{r.get('time')} {r.get('target') or '-'} {r.get('event')}/{r.get('outcome') or '-'} "
              f"{r.get('certificate') or '-'} serial={r.get('serial') or '-'} recipients={r.get('recipients', '-')} "
              f"{r.get('message_id') or ''}{extra}".rstrip())
    return 0


def cmd_journal_verify(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal.journal import Journal

    state = _state(args)
    keys = _keys(args, state)
    verdict = Journal(state, keys.journal, keys.journal_anchor).verify()
    for note in verdict.notes:
        print(f"note: {note}", file=sys.stderr)
    if verdict.ok:
        print(f"journal OK: {verdict.lines} line(s), HMAC chain intact up to the recorded head")
        return 0
    if verdict.first_bad_line is not None:
        print(f"TAMPERED: first bad line: {verdict.first_bad_line}")
    for problem in verdict.problems:
        print(f"TAMPERED: {problem}")
    return 1
