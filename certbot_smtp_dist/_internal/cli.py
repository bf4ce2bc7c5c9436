"""The `certbot-smtp-dist` command: a thin adapter from argv and the hook environment onto the core."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from certbot_smtp_dist import __version__
from certbot_smtp_dist._internal import report, startup
from certbot_smtp_dist.errors import (
    AccessError,
    CredentialError,
    OutputError,
    SmtpDistError,
    UnsafePathError,
    UsageError,
)

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.credentials import CredentialStore
    from certbot_smtp_dist.model import LineageSource

log = logging.getLogger("certbot_smtp_dist")


class BadCommandLine(SystemExit):
    """argparse's error (exit status 64, EX_USAGE; argparse's own is 2), said by main() in the format its command
    answers in: `status`, a monitoring check, says UNKNOWN (3) in one line, not a usage text on stderr."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(report.EX_USAGE)
        self.message = message
        self.text = f"{parser.format_usage()}{parser.prog}: error: {message}\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadCommandLine(self, message)


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options that work before or after the subcommand (the subparser copy must not reset them)."""
    default = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("--config", metavar="FILE", default=default(None),
                        help="configuration file (default: $CERTBOT_SMTP_DIST_CONFIG or "
                             "/etc/letsencrypt/smtp-dist/config.toml)")
    parser.add_argument("--state-dir", metavar="DIR", default=default(None),
                        help="spool and journal directory (default: $CERTBOT_SMTP_DIST_STATE_DIR or "
                             "/var/lib/certbot-smtp-dist)")
    parser.add_argument("--log-format", choices=("human", "json"), default=default("human"),
                        help="format of log lines on stderr")
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="only errors on stderr")


EXIT_CODES_EPILOG = """\
exit status of deploy and retry (sysexits, like other mail tools):
  0    every selected target delivered, skipped or rendered
  64   usage error (EX_USAGE)
  65   certificate files unusable, nothing attempted (EX_DATAERR)
  69   a failure that is not retryable (EX_UNAVAILABLE)
  73   --output cannot be created (EX_CANTCREAT)
  74   a file or directory it needs cannot be read or written (EX_IOERR)
  75   some target failed and every failure is retryable (EX_TEMPFAIL)
  77   a path it needs is closed to this user, or is not safe to trust (EX_NOPERM)
  78   configuration or credentials unusable, nothing attempted (EX_CONFIG)
  130  interrupted
retry also exits 69 while a failed, blocked or rejected spool entry remains (see status).
status follows the Nagios plugin convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN: it cannot know, e.g. no
state there or not readable by this user, or a usage error); journal verify exits 1 if tampered or missing;
history exits 66 with no journal; dismiss exits 64 for an ambiguous id prefix; inspect exits 65 when it finds an
error in the certificate files, 66 when one cannot be read and 77 when one is not safe to trust (as deploy would
refuse it)."""


def versions() -> str:
    """This package, Python and the libraries that decide its behaviour; read from metadata, nothing imported."""
    import platform  # only for --version: kept off the hook's start-up path
    from importlib import metadata

    lines = [f"certbot-smtp-dist {__version__}", f"Python {platform.python_version()} ({sys.executable})"]
    for dist in ("cryptography", "pluggy", "certbot"):
        try:
            lines.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist} not installed")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """`--version`: computed only when asked for (the deploy hook is a cold process)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the versions of this tool, Python and its libraries, and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(versions())
        parser.exit(0)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only="deploy"`, the same parser holding that one subcommand (main() takes
    it when argv starts with "deploy", as every hook does: the others' modules are neither imported nor built)."""
    parser = _Parser(prog="certbot-smtp-dist", description="Ship renewed ACME certificates by email.",
                     epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    deploy = sub.add_parser("deploy", help="ship a certificate to every matching target",
                            epilog=EXIT_CODES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(deploy, suppress=True)
    deploy.add_argument("--target", action="append", default=[], metavar="NAME", help="only this target (repeatable)")
    deploy.add_argument("--dry-run", action="store_true", help="validate and render; connect to nothing")
    deploy.add_argument("--output", metavar="DIR", help="with --dry-run: write one .eml per target here (0600)")
    deploy.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    deploy.add_argument("--force", action="store_true",
                        help="send to quiet targets too, whatever their min_interval")
    src = deploy.add_argument_group("certificate (default: $RENEWED_LINEAGE, or lego's hook variables)")
    src.add_argument("--lineage", metavar="DIR", help="certbot-style live directory")
    src.add_argument("--cert", metavar="FILE", help="leaf certificate (PEM)")
    src.add_argument("--key", metavar="FILE", help="private key (PEM)")
    src.add_argument("--chain", metavar="FILE", help="issuer certificates (PEM)")
    src.add_argument("--fullchain", metavar="FILE", help="leaf followed by issuers (PEM)")
    src.add_argument("--name", help="certificate name (default: the leaf's CN, else its first SAN)")
    deploy.set_defaults(func=cmd_deploy)  # deploy.run rewrites the metrics file itself, with what it loaded
    if only == "deploy":
        return parser

    creds = sub.add_parser("credentials", help="manage stored secrets (never on the command line)")
    _global_options(creds, suppress=True)
    csub = creds.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    cset = csub.add_parser("set", help="store a secret: asked twice on a terminal, else read from standard input")
    _global_options(cset, suppress=True)
    cset.add_argument("name", help="the name the configuration's *_credential keys use")
    cset.add_argument("--type", required=True, metavar="{smtp_password,smtp_pkcs12_passphrase,"
                                                       "smtp_oauth2_client_secret,smtp_oauth2_service_account}",
                      help="a relay password, a PKCS#12 passphrase, an OAuth 2.0 client secret, or a service "
                           "account's JSON key (from standard input: < key.json); or the credential type an "
                           "installed payload format declares")
    cset.set_defaults(func=cmd_credentials_set)
    clist = csub.add_parser("list", help="names and types only")
    _global_options(clist, suppress=True)
    clist.set_defaults(func=cmd_credentials_list)
    cdel = csub.add_parser("delete", help="remove a stored secret")
    _global_options(cdel, suppress=True)
    cdel.add_argument("name", help="the credential's name (see list)")
    cdel.set_defaults(func=cmd_credentials_delete)

    from certbot_smtp_dist._internal import cli_check, cli_inspect, cli_state

    cli_state.register(sub, lambda p: _global_options(p, suppress=True))
    cli_inspect.register(sub, lambda p: _global_options(p, suppress=True))
    cli_check.register(sub, lambda p: _global_options(p, suppress=True))
    return parser


def cmd_deploy(args: argparse.Namespace) -> int:
    try:
        if args.output and not args.dry_run:
            raise UsageError("--output only makes sense with --dry-run")
        source = _source(args)
        return _deploy(args, source)
    except UsageError as exc:
        if args.json:  # one JSON document on stdout, also when nothing could be attempted
            print(report.json_document(None, [], extra={"usage_error": str(exc)}))
        raise
    except OutputError as exc:
        if args.json:
            print(report.json_document(None, [], extra={"output_error": str(exc)}))
        raise


def _deploy(args: argparse.Namespace, source: LineageSource) -> int:
    from certbot_smtp_dist._internal import deploy
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.lineage import from_renewal
    from certbot_smtp_dist._internal.state import state_dir

    request = deploy.DeployRequest(
        config=config_path(args.config), source=source, targets=tuple(args.target), dry_run=args.dry_run,
        output=Path(args.output) if args.output else None, state_dir=state_dir(args.state_dir),
        from_renewal=from_renewal(os.environ), command=report.command_prefix(args.config, args.state_dir),
        force=args.force,
    )
    result = deploy.run(request)
    if args.json:
        print(report.json_document(result.facts, result.results, result.config_errors, findings=result.findings))
    return result.exit_status


def _source(args: argparse.Namespace) -> LineageSource:
    from certbot_smtp_dist._internal import lineage as lin

    files = (args.cert, args.key, args.chain, args.fullchain)
    if args.lineage and any(files):
        raise UsageError("--lineage and --cert/--key/--chain/--fullchain are exclusive")
    if args.lineage:
        return lin.plain_paths(lin.from_lineage_dir(Path(args.lineage), args.name))
    if any(files):
        return lin.plain_paths(lin.from_files(args.cert, args.key, args.chain, args.fullchain, args.name))
    found = lin.from_environment(os.environ)
    if found is None:
        raise UsageError("no certificate given: pass --lineage DIR or --fullchain/--key, or run as a deploy hook "
                         "(RENEWED_LINEAGE or lego's LEGO_CERT_* variables)")
    return lin.plain_paths(found)


def _store(args: argparse.Namespace) -> CredentialStore:
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.credentials import CredentialStore
    from certbot_smtp_dist._internal.ownership import require_trusted_config

    config = config_path(args.config)
    require_trusted_config(config)
    return CredentialStore(config.parent)


def cmd_credentials_set(args: argparse.Namespace) -> int:
    known = _credential_types(args.type)
    if args.type not in known:
        print(f"certbot-smtp-dist: error: argument --type: invalid choice: {args.type!r} (choose from "
              f"{', '.join(known)})", file=sys.stderr)
        return report.EX_USAGE
    store = _store(args)
    try:
        secret = _read_secret(args.name, args.type)
    except ValueError as exc:  # a refused value is bad input data (sysexits EX_DATAERR), and nothing is stored
        print(f"certbot-smtp-dist: error: credential {args.name} not stored: {exc}", file=sys.stderr)
        return report.EX_DATAERR
    store.set(args.name, args.type, secret)
    print(f"stored credential {args.name} ({args.type})", file=sys.stderr)
    return 0


def _credential_types(wanted: str) -> tuple[str, ...]:
    """The built-in credential types, and (only when `wanted` is none of them: loading extensions costs) the types
    the registered payload formats declare."""
    from certbot_smtp_dist._internal.credentials import CREDENTIAL_TYPES

    if wanted in CREDENTIAL_TYPES:
        return CREDENTIAL_TYPES
    from certbot_smtp_dist._internal.plugins import make_manager, payload_formats
    from certbot_smtp_dist.errors import ConfigError

    try:
        declared = {f.credential_type for f in payload_formats(make_manager()).values() if f.credential_type}
    except ConfigError:  # two extensions registering one format name: `deploy` reports it, this offers built-ins
        declared = set()
    return CREDENTIAL_TYPES + tuple(sorted(declared - set(CREDENTIAL_TYPES)))


def _read_secret(name: str, type_: str) -> str:
    """On a terminal: asked twice without echo, and both must match. Otherwise: all of standard input (UTF-8)
    without one trailing newline. Either way checked by `secret_problem`; raises ValueError saying why the secret
    cannot be stored, never quoting it."""
    import getpass

    from certbot_smtp_dist._internal.credentials import MAX_SECRET_BYTES, secret_problem

    def checked(secret: str) -> str:
        problem = secret_problem(type_, secret)
        if problem is not None:
            raise ValueError(problem)
        return secret

    if sys.stdin.isatty() and type_ == "smtp_oauth2_service_account":  # a JSON document is not typed at a prompt
        raise ValueError(f"a service account key is read from standard input: certbot-smtp-dist credentials set "
                         f"{name} --type {type_} < KEY.json")
    if sys.stdin.isatty():
        try:
            first = checked(getpass.getpass(f"secret for {name} ({type_}): "))  # refused before a second entry
            again = getpass.getpass(f"again, to confirm {name}: ")
        except EOFError as exc:  # Ctrl-D at a prompt
            raise ValueError("no secret entered") from exc
        if again != first:
            raise ValueError("the two entries differ")
        return first
    raw = getattr(sys.stdin, "buffer", None)
    # Never more than a secret can hold, and a trailing CR LF: an input that does not end (< /dev/zero) is refused
    # once that much is read, not held in memory until it ends.
    bound = MAX_SECRET_BYTES + 3
    data = raw.read(bound) if raw is not None else sys.stdin.read(bound)
    if len(data) >= bound:  # characters of a text stream: as many bytes at least
        raise ValueError(f"the secret is longer than {MAX_SECRET_BYTES} bytes")
    try:
        secret = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ValueError("standard input is not valid UTF-8") from exc
    return checked(secret.removesuffix("\n").removesuffix("\r"))


def cmd_credentials_list(args: argparse.Namespace) -> int:
    for cred in _store(args).list():
        print(f"{cred.name}\t{cred.type}")
    return 0


def cmd_credentials_delete(args: argparse.Namespace) -> int:
    from certbot_smtp_dist._internal.config import config_path, credential_users

    if not _store(args).delete(args.name):
        print(f"no credential named {args.name}", file=sys.stderr)
        return 1
    print(f"deleted credential {args.name}", file=sys.stderr)
    for key in credential_users(config_path(args.config), args.name):  # deleted on purpose, perhaps: say so
        print(f"certbot-smtp-dist: warning: {key} still names credential {args.name}: that target's deliveries "
              f"fail until it is set again or the key is changed", file=sys.stderr)
    return 0


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; the structured fields a call passed as `extra` are keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        for key in report.LOG_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        return json.dumps(doc)


TRANSCRIPT_LOGGER = "certbot_smtp_dist.transcript"


def setup_logging(fmt: str, verbose: int, quiet: bool) -> None:
    """Default: warnings, errors and one line per target. -v: each stage. -vv: the redacted SMTP transcript too."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("certbot-smtp-dist: %(levelname)s: %(message)s"))
    root = logging.getLogger("certbot_smtp_dist")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    transcript = logging.getLogger(TRANSCRIPT_LOGGER)
    transcript.setLevel(logging.DEBUG if verbose >= 2 and not quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    own_process = argv is None  # the console script or `python -m`; not a caller that owns the process (tests)
    argv = sys.argv[1:] if argv is None else list(argv)
    if own_process and argv[:1] == ["deploy"]:  # the hook's cold start; deploy.run resumes it before delivering
        startup.pause()
    try:
        # Parsed exactly as by the whole parser: "deploy" first leaves no other subcommand or global option to match.
        parser = build_parser(only="deploy" if argv[:1] == ["deploy"] else None)
        args = parser.parse_args(argv)
        setup_logging(args.log_format, args.verbose, args.quiet)
    except BadCommandLine as exc:
        if _command_word(argv) == "status":  # its contract (Nagios plugin guidelines): UNKNOWN, one line
            from certbot_smtp_dist._internal.addresses import printable

            return _status_unknown(argv, printable(f"usage error: {exc.message} (see certbot-smtp-dist status "
                                                   "--help)"))
        sys.stderr.write(exc.text)
        return report.EX_USAGE
    except KeyboardInterrupt:  # before the command began: one line, as a command's own Ctrl-C, never a traceback
        if _command_word(argv) == "status":
            return _status_unknown(argv, "interrupted")
        print("certbot-smtp-dist: error: interrupted", file=sys.stderr)
        return 130
    code = _run(args)
    # `status` is a monitoring check: whenever it could not look, the answer is UNKNOWN, never a guess.
    failed_status = getattr(args, "failed_status", None)
    code = failed_status if failed_status is not None and code not in (0, 1, 2, 3) else code
    if own_process:  # ends here: no teardown, no wait for a lookup abandoned at its deadline (abandon.end_process)
        from certbot_smtp_dist._internal import abandon

        abandon.end_process(code)
    return code


def _status_unknown(argv: Sequence[str], message: str) -> int:
    """`status` stopped before its command began: UNKNOWN in its own format (--nagios, --json), as in _run."""
    from certbot_smtp_dist._internal.cli_state import STATUS_UNKNOWN

    _error(argparse.Namespace(command="status", failed_status=STATUS_UNKNOWN, nagios="--nagios" in argv,
                              json="--json" in argv), message)
    return STATUS_UNKNOWN


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names, read as argparse reads it: the first word that is neither an option nor the
    value of a global option (`--state-dir DIR`, or an abbreviation of one). For a Ctrl-C before parsing ended."""
    words = iter(argv)
    for word in words:
        if word.startswith("--") and "=" not in word and len(word) > 2 and any(
                option.startswith(word) for option in ("--config", "--state-dir", "--log-format")):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _run(args: argparse.Namespace) -> int:
    """The command, with every error it can meet as one line on stderr and a documented exit status."""
    try:
        return int(args.func(args))
    except UsageError as exc:
        _error(args, str(exc))
        return report.EX_USAGE
    except CredentialError as exc:
        _error(args, str(exc))
        return report.EX_CONFIG
    except AccessError as exc:
        _error(args, str(exc))
        return report.EX_NOPERM
    except UnsafePathError as exc:
        _error(args, exc.refusal)
        return report.EX_NOPERM
    except OutputError as exc:
        _error(args, str(exc))
        return exc.exit_status
    except SmtpDistError as exc:
        _error(args, str(exc))
        return report.EX_UNAVAILABLE
    except OSError as exc:  # a path the command needs, closed to this user or broken: never a traceback
        _error(args, _os_error_line(args, exc))
        return report.EX_NOPERM if isinstance(exc, PermissionError) else report.EX_IOERR
    except KeyboardInterrupt:  # Ctrl-C, or the ACME client's SIGINT: one line that says so, never a traceback
        monitoring = getattr(args, "failed_status", None) is not None  # its line names the command already
        _error(args, "interrupted" if monitoring else f"{args.command}: interrupted")
        return 130
    except Exception as exc:
        failed_status = getattr(args, "failed_status", None)
        if failed_status is None:
            raise  # a defect of ours elsewhere: the traceback is the report
        # A monitoring check that crashed knows nothing: UNKNOWN in its own format, never the exit status 1 of a
        # traceback, which a Nagios-convention monitor reads as WARNING. Only the exception's type: its text may
        # quote what the state holds. -v adds the traceback, on stderr.
        _error(args, f"internal error ({type(exc).__name__}); run it with -v for the traceback, and report it")
        if getattr(args, "verbose", 0):
            traceback.print_exc(file=sys.stderr)
        return int(failed_status)


def _error(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "failed_status", None) is not None:  # a monitoring check: its one line on stdout, as UNKNOWN
        if getattr(args, "nagios", False):
            print(f"SMTP-DIST UNKNOWN - {args.command}: {message}".replace("|", "/").replace("\n", " "))
        elif getattr(args, "json", False):
            print(json.dumps({"status": "UNKNOWN", "problem": message, "entries": []}))
        else:
            print(f"UNKNOWN: certbot-smtp-dist {args.command}: {message}")
        return
    print(f"certbot-smtp-dist: error: {message}", file=sys.stderr)


def _os_error_line(args: argparse.Namespace, exc: OSError) -> str:
    """The path, the operation and the fix: the option that points elsewhere, or the user who may read it."""
    from certbot_smtp_dist._internal.ownership import CONFIG_FIX, STATE_FIX
    from certbot_smtp_dist._internal.state import state_dir

    path = exc.filename or "?"
    state = os.path.abspath(state_dir(args.state_dir))
    under_state = os.path.abspath(str(path)).startswith(state + os.sep) or os.path.abspath(str(path)) == state
    if isinstance(exc, PermissionError):
        fix = STATE_FIX if under_state else CONFIG_FIX
    else:
        fix = f"check that path, or pass {'--state-dir DIR' if under_state else '--config FILE'}"
    return f"{args.command}: cannot access {path} ({exc.strerror or exc}): {fix}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
