"""Subcommands over the state directory: retry, status, dismiss, metrics, history, journal verify."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.journal import Verdict
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.spool import Spool
    from certbot_smtp_dist._internal.state import StateKeys

# Nagios plugin convention, so monitoring can use `status` as a check as is.
STATUS_OK, STATUS_WARNING, STATUS_CRITICAL, STATUS_UNKNOWN = 0, 1, 2, 3


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    from certbot_smtp_dist._internal import cli_nagios

    retry = sub.add_parser("retry", help="re-send spooled deliveries (for a systemd timer or cron); non-zero while "
                                         "failed, blocked or rejected entries remain")
    common(retry)
    retry.add_argument("--include-failed", action="store_true",
                       help="also re-send permanently failed entries (after fixing their cause)")
    retry.add_argument("--include-uncertain", action="store_true",
                       help="also re-send uncertain entries, whose relay may already have them (after checking)")
    retry.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    retry.set_defaults(func=cmd_retry)  # drain.run rewrites the metrics file itself, with what it loaded

    status = sub.add_parser("status", help="list pending, uncertain and failed deliveries; non-zero while any exist "
                                           "(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)")
    common(status)
    status.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    status.add_argument("--allow-empty", action="store_true",
                        help="a state directory or journal that does not exist yet is OK (before the first deploy)")
    cli_nagios.nagios_options(status)
    status.set_defaults(func=cmd_status, failed_status=STATUS_UNKNOWN)

    dismiss = sub.add_parser("dismiss", help="close a failed, uncertain or pending spool entry by hand")
    common(dismiss)
    dismiss.add_argument("entry", nargs="+", help="entry id, or a unique prefix of one (see `status`)")
    dismiss.set_defaults(func=cmd_dismiss)  # cmd_dismiss rewrites the metrics file itself, with the keys it used

    metrics = sub.add_parser("metrics", help="print the Prometheus metrics (text exposition format) that [defaults] "
                                             "metrics_textfile receives after every deploy, retry and dismiss")
    common(metrics)
    metrics.set_defaults(func=cmd_metrics)

    history = sub.add_parser("history", help="what was shipped to whom, from the journal")
    common(history)
    history.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    history.add_argument("--all", action="store_true", help="every journal record, not only what was shipped")
    history.add_argument("--since", metavar="WHEN", help="from this ISO date or time, or this long ago (7d, 12h)")
    history.add_argument("--target", metavar="NAME", help="only this target")
    history.set_defaults(func=cmd_history)

    journal = sub.add_parser("journal", help="the tamper-evident journal")
    common(journal)
    jsub = journal.add_subparsers(dest="action", metavar="ACTION")
    jsub.required = True
    verify = jsub.add_parser("verify", help="check the hash chain; non-zero if a line was edited, removed or cut, "
                                            "or if there is no journal")
    common(verify)
    verify.set_defaults(func=cmd_journal_verify)


def prefix(args: argparse.Namespace) -> tuple[str, ...]:
    from certbot_smtp_dist._internal.report import command_prefix

    return command_prefix(args.config, args.state_dir)


def next_command(args: argparse.Namespace, *words: str) -> str:
    """A command to paste: with the same --config and --state-dir the user gave, shell-quoted."""
    from certbot_smtp_dist._internal.report import next_command as joined

    return joined(prefix(args), *words)


def _nothing_there(state: Path) -> str | None:
    """Why `state` holds nothing to report on (no directory, no journal), or None if it does hold a state."""
    from certbot_smtp_dist._internal.journal import HEAD_FILE, JOURNAL_FILE, SEALED_FILE

    try:
        st = os.stat(state)
    except FileNotFoundError:
        return f"no state directory at {state}"
    if not stat.S_ISDIR(st.st_mode):  # something is there, but not a state: an error, never "empty"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(state))
    if not any((state / name).exists() for name in (JOURNAL_FILE, HEAD_FILE, SEALED_FILE)):
        return f"no journal in {state}: nothing was ever recorded there"
    return None


def _state(args: argparse.Namespace) -> Path:
    from certbot_smtp_dist._internal.ownership import require_trusted_state
    from certbot_smtp_dist._internal.state import state_dir

    path = state_dir(args.state_dir)
    require_trusted_state(path)
    return path


def _keys(args: argparse.Namespace, state: Path) -> StateKeys:
    """The state's keys, from the credential store beside the config; a 0.1.0 state directory is upgraded on this
    first use. These commands only read the state: they never create key material. Without a master key they
    stop (CredentialError: 78, `status` UNKNOWN) saying the state is not initialised, or its key is gone."""
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.loader import credential_store
    from certbot_smtp_dist._internal.ownership import require_trusted_config
    from certbot_smtp_dist._internal.state import state_keys
    from certbot_smtp_dist._internal.upgrade import upgrade
    from certbot_smtp_dist.errors import CredentialError

    config = config_path(args.config)
    require_trusted_config(config)
    store = credential_store(config)
    master = store.master_key_location()
    if not master.exists():
        raise CredentialError(_no_master_key(args, state, master))
    keys = state_keys(store, state)
    if state.is_dir():
        upgrade(state, config, keys)
    return keys


def _no_master_key(args: argparse.Namespace, state: Path, master: Path) -> str:
    from certbot_smtp_dist._internal.journal import JOURNAL_FILE, SEALED_FILE, legacy_format

    def recorded(name: str) -> bool:
        try:
            return os.stat(state / name).st_size > 0
        except OSError:
            return False

    if legacy_format(state):
        return (f"the state in {state} was written by 0.1.0 and is not upgraded yet: there is no master key at "
                f"{master} to re-key it with, and this command only reads; the next deploy or "
                f"{next_command(args, 'retry')} creates the key and upgrades it")
    if not (recorded(JOURNAL_FILE) or recorded(SEALED_FILE) or any((state / "spool").glob("*.json"))):
        return (f"the state in {state} is not initialised: there is no master key at {master} yet (the first "
                f"deploy, or `credentials set`, creates it); pass the --config your deploys use, or check "
                f"again after the first deploy: {next_command(args, 'status', '--allow-empty')}")
    return (f"master key {master} is missing, so the keys of the state in {state} cannot be derived (none is "
            f"created here: a new one would make every entry and journal line fail to verify); restore it, or "
            f"pass the --config your deploys use")


def cmd_retry(args: argparse.Namespace) -> int:
    """Exit status: the drain's (0, 75 while retryable failures remain, 69 for a permanent one, 78 for an unusable
    configuration or master key), and 69 whenever a failed, blocked or rejected entry is left, so a unit's
    `OnFailure=` fires until someone has looked. Uncertain entries waiting for a human are reported, not failed."""
    from certbot_smtp_dist._internal import drain, report
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.spool import FAILED

    state = _state(args)
    result = drain.run(state, config_path(args.config), args.include_failed,
                       include_uncertain=args.include_uncertain, command=prefix(args))
    waiting = [] if result.busy or not state.is_dir() else [r for r in _rows(args, state) if _needs_human(r)]
    for row in waiting:
        print(f"certbot-smtp-dist: {_row_line(row)}", file=sys.stderr)
        for step in _next_steps(args, row):
            print(f"  next: {step}", file=sys.stderr)
    if args.json:
        print(report.json_document(None, result.results, extra={
            "closed": [{"entry": i, "reason": why} for i, why in result.closed], "busy": result.busy,
            "needs_attention": waiting}))
    # Left for a human outranks "retry later": a run that itself failed an entry for a human (or found a forged
    # one) says so at once, as every later run will, not 75 as if time would heal it.
    if result.exit_status in (report.EX_OK, report.EX_TEMPFAIL) and any(
            r["state"] in (FAILED, "rejected") for r in waiting):
        return report.EX_UNAVAILABLE
    return result.exit_status


def _rows(args: argparse.Namespace, state: Path, keys: StateKeys | None = None) -> list[dict[str, Any]]:
    """Every spool entry as a row of `status` (rejected files included), each with the commands to run next."""
    from certbot_smtp_dist._internal.spool import UNCERTAIN, Rejected, Spool

    rows: list[dict[str, Any]] = []
    for item in Spool(state, (keys or _keys(args, state)).spool).entries():
        if isinstance(item, Rejected):
            rows.append({"id": item.path.stem, "file": str(item.path), "state": "rejected", "detail": item.problem})
        else:
            failure = item.last_failure or {}
            rows.append({"id": item.id, "state": item.state, "kind": item.kind, "target": item.target,
                         "certificate": item.certificate,
                         "serial": item.serial, "message_id": item.message_id, "recipients": list(item.envelope_to),
                         "attempts": item.attempts, "created": item.created, "updated": item.updated,
                         "error_code": failure.get("error_code"), "detail": failure.get("detail")})
            if item.state == UNCERTAIN:
                rows[-1]["resend_due"] = item.resend_due
        rows[-1]["next"] = _next_steps(args, rows[-1])
    return rows


def _needs_human(row: dict[str, Any]) -> bool:
    """Failed (or blocked), rejected, or uncertain and not re-sent by itself: `retry` alone will not end it."""
    from certbot_smtp_dist._internal.spool import FAILED

    return row["state"] in (FAILED, "rejected") or row.get("resend_due") is False


def _next_steps(args: argparse.Namespace, row: dict[str, Any]) -> list[str]:
    from certbot_smtp_dist._internal.spool import FAILED

    dismiss = next_command(args, "dismiss", row["id"])
    if row["state"] == "rejected":
        return [f"check the file, then {dismiss}"]
    if row["state"] == FAILED:
        return [f"fix the cause, then {next_command(args, 'retry', '--include-failed')}", f"or {dismiss}"]
    if row.get("resend_due") is False:
        return [f"check with the recipients, then {next_command(args, 'retry', '--include-uncertain')}",
                f"or {dismiss}"]
    return []


def _row_line(r: dict[str, Any]) -> str:
    if r["state"] == "rejected":
        return f"REJECTED: spool file {r['file']}: {r['detail']}"
    what = "deploy blocked" if r.get("kind") == "blocked" else f"target={r.get('target')}"
    return (f"{r['state'].upper()}: {r['id']} {what} certificate={r.get('certificate')} "
            f"attempts={r.get('attempts')} since={r.get('created')} {r.get('error_code') or ''} "
            f"{r.get('detail') or ''}{_uncertain_note(r)}").rstrip()


def cmd_status(args: argparse.Namespace) -> int:
    """Nagios plugin convention: 0 OK, 1 WARNING (pending), 2 CRITICAL (needs a human, or the journal fails
    verification: verified in one pass, read-only, the rows' certificates taken from its verified lines), 3 UNKNOWN (cannot know:
    no state there, or it cannot be read; main() turns every error into 3; nothing ever delivered, every deploy so
    far wanted by no target). --nagios: the same states, as a plugin."""
    from certbot_smtp_dist._internal import cli_nagios, unwanted
    from certbot_smtp_dist._internal.journal import Journal

    state = _state(args)
    empty = _nothing_there(state)
    if empty is not None:
        where = "--state-dir" if args.state_dir else "$CERTBOT_SMTP_DIST_STATE_DIR or the default"
        return _idle(args, state, empty, "pass --state-dir DIR, or --allow-empty before the first deploy", where)
    keys = _keys(args, state)
    journal, records = Journal(state, keys.journal, keys.journal_anchor).audit()
    tampered = None if journal.ok else journal_problem(args, journal)
    rows = _rows(args, state, keys)
    unwanted_now = unwanted.unwanted(records)
    if tampered is None and not rows and unwanted_now and unwanted.never_delivered(records):
        return _idle(args, state, f"no delivery was ever attempted from {state}: "
                                  + "; ".join(u.line() for u in unwanted_now), UNWANTED_HINT)
    notes = [f"note: {u.line()}" for u in unwanted_now]  # OK, WARNING or CRITICAL as ever: never silently
    if args.nagios:
        return cli_nagios.nagios_status(args, records, rows, [_needs_human(r) for r in rows], tampered, notes)
    if args.json:
        print(json.dumps({"entries": rows, "journal": {
            "ok": journal.ok, "lines": journal.lines, "first_bad_line": journal.first_bad_line,
            "problems": [str(p) for p in journal.problems],
            "next": [] if journal.ok else [next_command(args, "journal", "verify")]},
            "no_target": [u.to_json() for u in unwanted_now]}, indent=2))
    else:
        if tampered is not None:
            print(f"CRITICAL: {tampered}")
            print(f"  next: {next_command(args, 'journal', 'verify')}")
        if not rows and tampered is None:
            print("OK: no pending, uncertain or failed deliveries")
        for r in rows:
            print(_row_line(r))
            for step in r["next"]:
                print(f"  next: {step}")
        for note in notes:
            print(note)
    # An uncertain delivery that `retry` will not re-send by itself needs a human as much as a failed one; so does
    # a journal that fails verification (issue 20: never "OK" over a tampered record of what was shipped).
    if tampered is not None or any(_needs_human(r) for r in rows):
        return STATUS_CRITICAL
    return STATUS_WARNING if rows else STATUS_OK


UNWANTED_HINT = "check the targets' `certificates` filters, or pass --allow-empty while no target is to get one"


def _idle(args: argparse.Namespace, state: Path, problem: str, hint: str, where: str | None = None) -> int:
    """Nothing to report on: no state (`where`: why it looked there), or nothing ever delivered because no target
    wanted a certificate. UNKNOWN, or OK with --allow-empty; the same line and `hint` in every output form."""
    from certbot_smtp_dist._internal import cli_nagios

    verdict = "OK" if args.allow_empty else "UNKNOWN"
    if args.nagios:
        return cli_nagios.nagios_empty(args, problem, hint)
    if args.json:
        print(json.dumps({"status": verdict, "state_dir": str(state), "problem": problem, "entries": []}, indent=2))
    else:
        print(f"{verdict}: {problem} ({f'looked there because of {where}; ' if where else ''}{hint})")
    return STATUS_OK if args.allow_empty else STATUS_UNKNOWN


def journal_problem(args: argparse.Namespace, verdict: Verdict) -> str:
    """One line for a journal that fails verification: the first bad line, and what is wrong there."""
    first = verdict.first_bad_line
    problem = next((p for p in verdict.problems if p.line == first), verdict.problems[0]) if verdict.problems else None
    where = f"first bad line {first}" if first is not None else "the journal as a whole"
    return (f"the journal fails verification ({where}: {problem.text if problem else 'unknown'}); "
            f"see {next_command(args, 'journal', 'verify')}")


def _uncertain_note(row: dict[str, Any]) -> str:
    if "resend_due" not in row:
        return ""
    then = "`retry` re-sends it once" if row["resend_due"] else "check with the recipients"
    return f" (the recipients may already have {row.get('message_id')}: {then})"


def _resolve(spool_dir: Path, wanted: str) -> list[str]:
    """The entry ids `wanted` names: itself if such a file exists, else every id it is a prefix of."""
    if (spool_dir / f"{wanted}.json").exists():
        return [wanted]
    if not spool_dir.is_dir():
        return []
    return sorted(p.stem for p in spool_dir.glob("*.json") if p.stem.startswith(wanted))


def cmd_dismiss(args: argparse.Namespace) -> int:
    """Exit status: 0 all dismissed; 64 an ambiguous prefix (candidates listed) or not an id; 1 no such entry or
    one being delivered right now."""
    from certbot_smtp_dist._internal import report
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.spool import Spool

    state = _state(args)
    keys = _keys(args, state)
    spool = Spool(state, keys.spool)
    ledger = Ledger(state, "dismiss", keys)
    code = 0
    for wanted in args.entry:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", wanted):
            print(f"certbot-smtp-dist: error: not a spool entry id: {wanted!r}", file=sys.stderr)
            code = report.EX_USAGE
            continue
        found = _resolve(spool.directory, wanted)
        if len(found) > 1:
            print(f"certbot-smtp-dist: error: {wanted} is the start of {len(found)} entries: {', '.join(found)}; "
                  "give more of the id", file=sys.stderr)
            code = report.EX_USAGE
        elif not found:
            print(f"certbot-smtp-dist: error: no spool entry {wanted} in {spool.directory} (see "
                  f"{next_command(args, 'status')})", file=sys.stderr)
            code = code or 1
        elif not _dismiss_one(spool, ledger, found[0]):
            code = code or 1
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.textfile import refresh_after_dismiss

    refresh_after_dismiss(config_path(args.config), state, keys)
    return code


def _dismiss_one(spool: Spool, ledger: Ledger, entry_id: str) -> bool:
    from certbot_smtp_dist._internal.spool import Busy, Rejected

    try:
        with spool.claim(entry_id) as entry:
            if entry is None:
                print(f"certbot-smtp-dist: error: spool entry {entry_id} is gone (closed meanwhile)", file=sys.stderr)
                return False
            ledger.close(entry, "dismissed", None, "dismissed by hand")
    except Busy:
        print(f"certbot-smtp-dist: error: entry {entry_id} is being delivered right now", file=sys.stderr)
        return False
    except Rejected as rejected:  # never acted on; removing it by hand is journalled
        spool.discard(rejected.path)
        ledger.record("dismissed", None, None, detail=f"rejected spool file {rejected.path.name} removed by "
                                                      f"hand: {rejected.problem}")
    print(f"dismissed {entry_id}", file=sys.stderr)
    return True


def cmd_metrics(args: argparse.Namespace) -> int:
    """Exit status: 0 printed; 78 an unusable configuration, 77 or 74 a state that cannot be trusted or read."""
    from certbot_smtp_dist._internal import textfile
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.loader import load

    state = _state(args)
    keys = _keys(args, state)
    print(textfile.text(state, keys, load(config_path(args.config)).settings), end="")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Exit status: 0; 66 (EX_NOINPUT) when there is no journal to read; 64 for a bad --since."""
    from certbot_smtp_dist._internal import history, report
    from certbot_smtp_dist._internal.journal import Journal

    keep = history.Filter(since=history.parse_since(args.since) if args.since else None, target=args.target,
                          everything=args.all)
    state = _state(args)
    empty = _nothing_there(state)
    if empty is not None:
        print(f"certbot-smtp-dist: error: {empty} (pass --state-dir DIR)", file=sys.stderr)
        return report.EX_NOINPUT
    rows = list(history.select(Journal(state).records(), keep))
    if args.json:
        print(json.dumps({"history": rows}, indent=2))
        return 0
    for row in rows:
        print(history.line(row))
    return 0


def cmd_journal_verify(args: argparse.Namespace) -> int:
    """Exit status: 0 intact; 1 tampered (edited, removed, cut) or missing: never OK with nothing to check."""
    from certbot_smtp_dist._internal.journal import Journal

    state = _state(args)
    empty = _nothing_there(state)
    if empty is not None:
        print(f"MISSING: {empty}: nothing to verify (pass --state-dir DIR)")
        return 1
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
