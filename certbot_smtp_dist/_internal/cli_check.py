"""The `check` subcommand: argv onto the check use case, and its findings as blocks of text or one JSON document."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the use case (asyncio, the probe, X.509) is imported only when `check` runs, not for `deploy`
    from certbot_smtp_dist._internal.check import CheckReport, TargetCheck
    from certbot_smtp_dist._internal.probe import Ehlo

CHECK_EPILOG = """\
check sends no mail: no MAIL, RCPT or DATA, ever. exit status:
  0    every selected target can take a delivery (warnings, if any, are printed)
  64   usage error (an unknown --target)
  65   --lineage unusable (nothing was dialled)
  69   a target failed in a way that will not heal by itself (SMTP_TLS, SMTP_AUTH, ...)
  75   a target failed and every failure is retryable (SMTP_CONNECT, SMTP_TRANSIENT)
  77   a path it needs is closed to this user, or is not safe to trust
  78   configuration or credentials unusable, nothing dialled"""


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[type-arg]
    check = sub.add_parser("check", help="dial each target's relay, do TLS and AUTH as a delivery would, and send "
                                         "no mail; say what would fail", epilog=CHECK_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    common(check)
    check.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")
    check.add_argument("--no-auth", action="store_true", help="do not attempt AUTH with the stored credential")
    check.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    check.add_argument("--lineage", metavar="DIR",
                       help="certbot-style live directory: render each target's next email to compare its size "
                            "with the relay's SIZE limit")
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal import check, lineage
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.ownership import require_trusted_config
    from certbot_smtp_dist._internal.report import EX_DATAERR
    from certbot_smtp_dist.errors import AccessError, CertificateError, UnsafePathError, UsageError

    config = config_path(args.config)
    try:
        require_trusted_config(config)
        source = lineage.from_lineage_dir(Path(args.lineage), None) if args.lineage else None
        result = check.run(check.CheckRequest(config, tuple(args.target), not args.no_auth, source))
    except CertificateError as exc:
        _nothing_checked(args, "lineage_error", f"--lineage {args.lineage}: {exc}; nothing was dialled")
        print(f"certbot-smtp-dist: error: --lineage {args.lineage}: {exc}; nothing was dialled", file=sys.stderr)
        return EX_DATAERR
    except UsageError as exc:
        _nothing_checked(args, "usage_error", str(exc))
        raise
    except UnsafePathError as exc:  # the configuration, the credential store, a file either names
        _nothing_checked(args, "path_error", exc.refusal)
        raise
    except AccessError as exc:
        _nothing_checked(args, "path_error", str(exc))
        raise
    if args.json:
        print(json.dumps(check.document(result), indent=2))
    elif result.config_errors:  # nothing was dialled: errors, on stderr
        for problem in result.config_errors:
            print(f"certbot-smtp-dist: error: config {config}: {problem}", file=sys.stderr)
    else:
        print(human(result), end="")
    return result.exit_status


def _nothing_checked(args: argparse.Namespace, key: str, text: str) -> None:
    """With --json, one document on stdout also when nothing could be checked."""
    from certbot_smtp_dist._internal.check import SCHEMA

    if args.json:
        print(json.dumps({"schema": SCHEMA, "targets": [], "config_errors": [], key: text}, indent=2))


def human(result: CheckReport) -> str:
    """One block per target, the verdict first."""
    return "\n".join(block(c, result.checked_at) for c in result.checks)


def block(c: TargetCheck, now: datetime) -> str:
    lines = [c.summary() if c.failure is None else f"{c.target}: {_failed(c)}",
             f"  relay        {c.host}:{c.port}, tls_mode {c.tls_mode.value}, EHLO as {c.helo_name or '(not sent)'}"]
    if c.tls_version:
        lines.append(f"  TLS          {c.tls_version}, {c.cipher}")
    cert = c.certificate
    if cert is not None:
        lines.append(f"  certificate  {cert.subject}; SANs {cert.shown_sans()}")
        lines.append(f"               issuer {cert.issuer}; expires {cert.not_after:%Y-%m-%d} "
                     f"({cert.days_left(now):.0f} days)")
        lines.append(f"               verifies: {'yes' if cert.verified else 'no'}; host name matches: "
                     f"{'yes' if cert.host_matches else 'no'}")
        lines += [f"  problem      {p}" for p in cert.problems]
    for label, ehlo in (("before TLS", c.before_tls), ("after TLS" if c.before_tls or c.tls_version else "EHLO",
                                                         c.after_tls)):
        if ehlo is not None:
            lines.append(f"  {label:<12} {_extensions(ehlo)}")
    lines.append(f"  AUTH         {_AUTH_WORDS[c.auth]}")
    lines += [f"  warning      {w}" for w in c.warnings]
    lines += [f"  note         {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


_AUTH_WORDS = {"accepted": "accepted (then NOOP, QUIT)", "refused": "refused", "skipped": "not attempted (--no-auth)",
               "not_configured": "none configured (auth_method = none)", "not_reached": "not reached"}


def _failed(c: TargetCheck) -> str:
    f = c.failure
    assert f is not None
    return f"FAILED {f.code.value} in {f.phase.value} ({'retryable' if f.is_retryable else 'not retryable'}): {f.detail}"


def _extensions(ehlo: Ehlo) -> str:
    """The extensions a delivery cares about, then whatever else the relay offers."""
    from certbot_smtp_dist._internal.check import REPORTED

    shown: list[str] = []
    for keyword in REPORTED:
        if keyword == "size" and ehlo.has("size"):
            shown.append(f"SIZE {ehlo.size_limit or '(no limit)'}")
        elif keyword == "auth" and ehlo.auth:
            shown.append("AUTH " + " ".join(ehlo.auth))
        elif keyword not in ("size", "auth") and ehlo.has(keyword):
            shown.append(keyword.upper())
    missing = [k.upper() for k in REPORTED if k != "starttls" and not (ehlo.auth if k == "auth" else ehlo.has(k))]
    others = [k.upper() for k, _ in ehlo.extensions if k not in REPORTED]
    text = ", ".join(shown) or "(none)"
    if others:
        text += f"; also {' '.join(others)}"
    return text + (f"; not offered: {' '.join(missing)}" if missing else "")
