"""Turn results into what people and machines read: one stderr line per target, a JSON document, an exit status."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from certbot_smtp_dist.errors import ConfigProblem
from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, Finding, Status

# sysexits.h, as mail tools use them.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

PROGRAM = "certbot-smtp-dist"


def command_prefix(config: str | None, state_dir: str | None) -> tuple[str, ...]:
    """How the user called us, for the commands we tell them to run next: the --config and --state-dir they gave."""
    argv = [PROGRAM]
    for option, value in (("--config", config), ("--state-dir", state_dir)):
        if value is not None:
            argv += [option, value]
    return tuple(argv)


def next_command(prefix: Sequence[str], *words: str) -> str:
    """A command to paste, shell-quoted."""
    import shlex  # hints follow failures only: a delivered run never quotes one

    return shlex.join([*prefix, *words])


# Structured fields a log call may pass as `extra`; `--log-format json` makes each a key of its own.
LOG_FIELDS = ("target", "status", "phase", "code", "smtp_code", "message_id", "duration", "attempts")


def log_fields(result: DeliveryResult) -> dict[str, Any]:
    """The `extra` of a result's log line."""
    f = result.failure
    return {"target": result.target, "status": result.status.value, "phase": f.phase.value if f else None,
            "code": f.code.value if f else None, "smtp_code": f.smtp_code if f else None,
            "message_id": result.message_id, "duration": round(result.duration_s, 3), "attempts": result.attempts}


def exit_status(results: Iterable[DeliveryResult]) -> int:
    failed = [r for r in results if not r.ok]
    if not failed:
        return EX_OK
    # An uncertain delivery is not known to have failed: it is settled later (`retry`, or a human), never 69.
    if all(r.status is Status.UNCERTAIN or (r.failure is not None and r.failure.is_retryable) for r in failed):
        return EX_TEMPFAIL
    return EX_UNAVAILABLE


def human_line(result: DeliveryResult) -> str:
    name = result.target
    if result.status is Status.SKIPPED:
        return f"{name}: skipped ({result.reason or 'not sent'})"
    if result.status is Status.RENDERED:
        return f"{name}: rendered (dry run, {result.recipients} recipient(s), nothing sent)"
    if result.status is Status.DELIVERED:
        return (f"{name}: delivered to {result.recipients} recipient(s) in {result.duration_s:.2f}s"
                f" ({result.attempts} attempt(s)), Message-ID {result.message_id}")
    f = result.failure
    assert f is not None
    if result.status is Status.UNCERTAIN:
        return f"{name}: uncertain {f.code.value} in {f.phase.value}: {f.detail}; Message-ID {result.message_id}"
    klass = "retryable" if f.is_retryable else "not retryable"
    line = f"{name}: {result.status.value} {f.code.value} in {f.phase.value} ({klass}): {f.detail}"
    for addr, reply in result.refused:
        enhanced = f" {reply.enhanced_status}" if reply.enhanced_status else ""
        line += f"\n{name}:   refused {addr}: {reply.code}{enhanced} {reply.text}"
    return line


def json_document(
    facts: CertificateFacts | None,
    results: Sequence[DeliveryResult],
    config_errors: Sequence[ConfigProblem] = (),
    extra: dict[str, Any] | None = None,
    findings: Sequence[Finding] = (),
) -> str:
    """The stable `--json` format documented in README.rst."""
    doc: dict[str, Any] = {
        "certificate": facts.to_json() if facts else None,
        "diagnostics": [f.to_json() for f in findings],
        "targets": [r.to_json() for r in results],
        "config_errors": [p.to_json() for p in config_errors],
    }
    if extra:
        doc.update(extra)
    return json.dumps(doc, indent=2, sort_keys=False)
