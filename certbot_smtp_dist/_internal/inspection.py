"""The `inspect` use case: diagnose the artefact a deploy would ship, offline, and report it to people or as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import diagnose, files, lineage, report
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist.errors import CertificateError, UnsafePathError
from certbot_smtp_dist.model import Finding, LineageSource, Severity

SCHEMA = "certbot-smtp-dist/inspect/1"  # README.rst documents this document; a change that breaks it bumps it
SHOWN_SANS = 20  # names listed in the human output; --json lists them all


@dataclass(frozen=True, slots=True)
class Inspection:
    """What `inspect` found: the findings (worst first), the chain as shipped, the leaf's facts (None when no
    certificate could be read) and the exit status."""

    source: LineageSource
    store: str
    findings: tuple[Finding, ...]
    chain: tuple[dict[str, Any], ...] = ()
    leaf: dict[str, Any] | None = None
    anchor: str | None = None
    exit_status: int = report.EX_OK

    @property
    def verdict(self) -> str:
        worst = {f.severity for f in self.findings}
        return "error" if Severity.ERROR in worst else "warning" if Severity.WARNING in worst else "ok"


UNDECODABLE_FIX = ("the certificate's names are malformed: have it issued again (certbot renew --force-renewal "
                   "--cert-name NAME) and tell the CA")


def inspect(source: LineageSource, store: Any, now: datetime) -> Inspection:
    """Read `source` as a deploy reads it (the same trust rule, the same bounded readers: lineage.read_trusted),
    then diagnose it against `store`. Files a deploy would refuse to trust are refused here too: what a link another
    user can re-point leads to is theirs to choose, and a report of it would say a lineage is sound that a deploy
    refuses, or show facts of a file only root may read."""
    def error(code: str, problems: tuple[str, ...] | list[str], fix: str) -> list[Finding]:
        return [_error(code, p, fix) for p in problems]

    try:
        raw, twins, key_status = lineage.read_trusted(source)
    except UnsafePathError as exc:  # deploy's refusal, exit 77 as there: nothing behind it is read, so none reported
        return _untrusted(source, store.label, exc)
    except CertificateError as exc:
        return Inspection(source, store.label, tuple(error("unreadable", exc.problems, "check the path and that "
                                                             "this user may read it")), exit_status=report.EX_NOINPUT)
    findings = [Finding(Severity.WARNING, "key-file-exposed", printable(w.split("; fix: ")[0]),
                        w.split("; fix: ")[-1]) for w in files.exposure(source.key, key_status, os.geteuid(),
                                                                          "private key file")]
    try:
        certs, key, _, problems, notes = lineage.parse(raw, source, twins)
    except CertificateError as exc:
        return Inspection(source, store.label, tuple(findings + error("unparseable", exc.problems, "give PEM "
                          "certificate files (certbot: fullchain.pem)")), exit_status=report.EX_DATAERR)
    findings += error("unparseable", problems, "give the lineage's own files, unchanged (certbot: live/NAME/)")
    findings += [Finding(Severity.WARNING, "stray-block", printable(n), None) for n in dict.fromkeys(notes)]
    spki = diagnose.spki(key.public_key()) if key is not None else None
    diagnosis = diagnose.examine(certs, spki, now, store, strict=True)
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    every = tuple(sorted([*findings, *diagnosis.findings], key=lambda f: order[f.severity]))
    failed = any(f.severity is Severity.ERROR for f in every)
    return Inspection(source, store.label, every, _chain(certs, diagnosis.roles),
                      _leaf(certs[0], diagnosis), diagnosis.anchor, report.EX_DATAERR if failed else report.EX_OK)


def _untrusted(source: LineageSource, store: str, exc: UnsafePathError) -> Inspection:
    """The one `untrusted-path` finding: the deploy's `refusing to trust` line split into message and fix."""
    return Inspection(source, store, (Finding(Severity.ERROR, "untrusted-path", printable(
        f"refusing to trust {exc.unsafe}"), printable(exc.fix)),), exit_status=report.EX_NOPERM)


def _error(code: str, problem: str, fix: str) -> Finding:
    """An error finding; a certificate whose names do not decode (refused as it is read, lineage.py, so that no
    diagnosis meets it) is `undecodable`, with its own fix."""
    if code == "unparseable" and diagnose.NOT_DECODED in problem:
        code, fix = "undecodable", UNDECODABLE_FIX
    return Finding(Severity.ERROR, code, printable(problem), fix)


def _chain(certs: list[Any], roles: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    from cryptography.hazmat.primitives import hashes

    return tuple({"position": i, "role": role, "subject": diagnose.name(c), "issuer": diagnose.name(c, "issuer"),
                  "not_after": diagnose.validity(c)[1].isoformat(),
                  "sha256_fingerprint": c.fingerprint(hashes.SHA256()).hex()}
                 for i, (c, role) in enumerate(zip(certs, roles, strict=True), 1))


def _leaf(cert: Any, diagnosis: diagnose.Diagnosis) -> dict[str, Any]:
    sans = [diagnose.shown(s, diagnose.SHOWN_SAN) for s in diagnose.subject_alt_names(cert)]  # decodes: lineage.py
    not_before, not_after = diagnose.validity(cert)
    return {"subject": diagnose.name(cert), "issuer": diagnose.name(cert, "issuer"), "sans": sans,
            "key": diagnosis.key, "not_before": not_before.isoformat(), "not_after": not_after.isoformat(),
            "days_left": diagnosis.days_left, "serial": format(cert.serial_number, "x")}


def source_json(source: LineageSource) -> dict[str, str | None]:
    return {"lineage": str(source.lineage_dir) if source.lineage_dir else None,
            **{k: str(getattr(source, k)) if getattr(source, k) else None
               for k in ("cert", "chain", "fullchain", "key")}}


def as_json(found: Inspection) -> str:
    """The one --json document (README.rst, "inspect": its schema)."""
    return json.dumps({"schema": SCHEMA, "verdict": found.verdict, "exit_status": found.exit_status,
                       "source": source_json(found.source), "trust_store": found.store,
                       "certificate": found.leaf, "chain": list(found.chain), "trust_anchor": found.anchor,
                       "findings": [f.to_json() for f in found.findings]}, indent=2)


def usage_error_json(problem: str) -> str:
    """The --json document when nothing could be inspected (exit 64): the schema's keys, empty, and why."""
    return json.dumps({"schema": SCHEMA, "verdict": "error", "exit_status": report.EX_USAGE, "source": None,
                       "trust_store": None, "certificate": None, "chain": [], "trust_anchor": None, "findings": [],
                       "usage_error": problem}, indent=2)


def as_text(found: Inspection) -> str:
    """For people: the verdict first, then each finding with its fix, then the facts. One line per item, each
    certificate-borne text made printable (a hostile subject cannot start a line of its own)."""
    where = found.source.lineage_dir or found.source.fullchain or found.source.cert
    counts = {s: sum(f.severity is s for f in found.findings) for s in Severity}
    lines = [f"{printable(str(where))}: {found.verdict.upper()} ({counts[Severity.ERROR]} error(s), "
             f"{counts[Severity.WARNING]} warning(s))"]
    for finding in found.findings:
        lines.append(f"  {finding.severity.value + ':':9}{printable(finding.message)}")
        if finding.fix and finding.severity is not Severity.INFO:
            lines.append(f"{'':11}fix: {printable(finding.fix)}")
    leaf = found.leaf
    if leaf is not None:
        sans = leaf["sans"][:SHOWN_SANS]
        more = len(leaf["sans"]) - len(sans)
        lines += ["", f"leaf:     {leaf['subject']}",
                  f"names:    {', '.join(sans) or '(none)'}{f' and {more} more' if more else ''}",
                  f"key:      {leaf['key']}",
                  f"expires:  {leaf['not_after']} (in {leaf['days_left']} days)"]
        lines += [f"{'chain:' if c['position'] == 1 else '':10}{c['position']}. {c['role']:12} {c['subject']}"
                  for c in found.chain]
        lines.append(f"anchor:   {found.anchor or '(none)'} ({printable(found.store)})")
    return "\n".join(lines)


def run(source: LineageSource, ca_file: Path | None, now: datetime) -> Inspection:
    """`inspect`'s whole job: the trust store (--ca-file, else the system's, searched thoroughly), then the files."""
    from certbot_smtp_dist._internal import anchors

    if ca_file is None:
        return inspect(source, anchors.system_store(thorough=True), now)
    try:
        store = anchors.file_store(ca_file)
    except UnsafePathError as exc:  # as a lineage file's refusal (`inspect`): exit 77, nothing of it read
        return _untrusted(source, f"--ca-file {ca_file}", exc)
    except OSError as exc:
        return Inspection(source, f"--ca-file {ca_file}", (Finding(
            Severity.ERROR, "unreadable", printable(f"cannot read --ca-file {ca_file}: {exc.strerror or exc}"),
            "check the path and that this user may read it"),), exit_status=report.EX_NOINPUT)
    except ValueError as exc:
        return Inspection(source, f"--ca-file {ca_file}", (Finding(
            Severity.ERROR, "unparseable", printable(f"--ca-file {ca_file}: {exc}"),
            "give a PEM file of CA certificates"),), exit_status=report.EX_DATAERR)
    return inspect(source, store, now)
