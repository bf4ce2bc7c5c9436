"""The one use case both adapters call: ship one certificate to the configured targets and report."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from certbot_smtp_dist._internal import pipeline, report
from certbot_smtp_dist._internal.config import PASSWORD_TYPE, load_settings
from certbot_smtp_dist._internal.credentials import CredentialStore

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.state import StateKeys
from certbot_smtp_dist.errors import (
    CertificateError,
    ConfigError,
    ConfigProblem,
    CredentialError,
    ErrorCode,
    UsageError,
)
from certbot_smtp_dist.model import (
    AuthMethod,
    CertificateFacts,
    DeliveryResult,
    Failure,
    LineageSource,
    PayloadFormat,
    Phase,
    Secret,
    Settings,
    Status,
    Target,
)

log = logging.getLogger("certbot_smtp_dist")


@dataclass(frozen=True, slots=True)
class DeployRequest:
    config: Path
    source: LineageSource
    targets: tuple[str, ...] = ()
    dry_run: bool = False
    output: Path | None = None
    environ: Mapping[str, str] | None = None
    state_dir: Path | None = None  # journal + spool; None: keep no state (tests, dry runs)


@dataclass(frozen=True, slots=True)
class DeployReport:
    facts: CertificateFacts | None
    results: tuple[DeliveryResult, ...] = ()
    config_errors: tuple[ConfigProblem, ...] = ()
    certificate_problems: tuple[str, ...] = ()
    exit_status: int = report.EX_OK
    state_ok: bool = True  # journal and spool written; False: failures of this run will not be retried


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """Validated settings plus the registries and store they were validated against."""

    settings: Settings
    formats: Mapping[str, PayloadFormat]
    store: CredentialStore
    plugins: pluggy.PluginManager


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    from certbot_smtp_dist._internal.ownership import require_trusted_config
    from certbot_smtp_dist._internal.plugins import make_manager, payload_formats

    require_trusted_config(path)  # before a byte of it, or of the credentials beside it, is read
    pm = make_manager()
    formats = payload_formats(pm)
    store = CredentialStore(path.parent, dict(environ) if environ is not None else None)
    settings = load_settings(path, store.types(), {n: f.credential_type for n, f in formats.items()})
    return LoadedConfig(settings, formats, store, pm)


def open_state_keys(config: Path, environ: Mapping[str, str] | None, state_dir: Path) -> StateKeys | None:
    """The journal and spool keys (the master key is created if there is none yet); None, logged, if unusable."""
    from certbot_smtp_dist._internal.state import state_keys

    try:
        return state_keys(CredentialStore(config.parent, dict(environ) if environ is not None else None),
                          state_dir, create=True)
    except (CredentialError, OSError) as exc:
        log.error("cannot use the state in %s (%s): failed deliveries from this run will NOT be retried "
                  "automatically", state_dir, exc)
        return None


def select(settings: Settings, names: tuple[str, ...]) -> tuple[Target, ...]:
    if not names:
        return settings.targets
    unknown = [n for n in names if settings.target(n) is None]
    if unknown:
        raise UsageError(f"unknown target(s): {', '.join(unknown)} (configured: "
                         f"{', '.join(t.name for t in settings.targets)})")
    return tuple(t for t in settings.targets if t.name in names)


def run(request: DeployRequest, now: datetime | None = None) -> DeployReport:
    """Validate config and artefact, then deliver (or render). Raises only UsageError and UnsafePathError
    (a config, credentials or state path someone else could write: nothing is read there, nothing dialled)."""
    from certbot_smtp_dist._internal import lineage
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.ownership import require_trusted_config, require_trusted_state

    require_trusted_config(request.config)
    if request.state_dir is not None and not request.dry_run:
        require_trusted_state(request.state_dir)

    now = now or datetime.now(timezone.utc)
    ledger: Ledger | None = None
    state_broken = False
    if request.state_dir is not None and not request.dry_run:
        keys = open_state_keys(request.config, request.environ, request.state_dir)
        state_broken = keys is None
        if keys is not None:
            from certbot_smtp_dist._internal.upgrade import upgrade

            upgrade(request.state_dir, request.config, keys)
            ledger = Ledger(request.state_dir, "deploy", keys, now, request.source)
    try:
        loaded = load_config(request.config, request.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config %s: %s", request.config, problem)
        if ledger:
            ledger.record("config_error", None, None, detail=str(exc))
            ledger.block(f"configuration unusable: {exc}", None)
        return DeployReport(None, config_errors=exc.problems, exit_status=report.EX_CONFIG,
                            state_ok=ledger.healthy if ledger else not state_broken)
    formats = loaded.formats
    targets = select(loaded.settings, request.targets)

    try:
        artefact = lineage.load(request.source, now)
    except CertificateError as exc:
        return _unusable_certificate(exc, targets, ledger, state_broken)

    wanted = [t for t in targets if t.matches(artefact.facts.names)]
    try:
        secrets = unlock(loaded.store, wanted, formats, with_passwords=not request.dry_run)
    except _Locked as exc:
        for problem in exc.problems:
            log.error("config %s: %s", request.config, problem)
        if ledger:
            ledger.block(f"credentials unusable: {exc}", None, artefact.facts)
        return DeployReport(artefact.facts, config_errors=tuple(exc.problems), exit_status=report.EX_CONFIG,
                            state_ok=ledger.healthy if ledger else not state_broken)
    if ledger:
        ledger.unblock()

    started = time.monotonic()  # every target's `timeout` counts from here, payload building included
    jobs = []
    for target in targets:
        if target in wanted:
            pipeline.warn_about(target, formats[target.payload])
        jobs.append(pipeline.prepare_job(target, artefact, formats, secrets, now))
    if request.dry_run:
        results = pipeline.rendered_results(jobs, request.output)
    else:
        results = _deliver(jobs, artefact.facts, request.source, ledger, started)
        notify_all(loaded.plugins, artefact.facts, results)
    for result in results:
        (log.info if result.ok else log.error)("%s", report.human_line(result))
    return DeployReport(artefact.facts, tuple(results), exit_status=report.exit_status(results),
                        state_ok=ledger.healthy if ledger else not state_broken)


def _unusable_certificate(exc: CertificateError, targets: tuple[Target, ...],
                          ledger: Ledger | None, state_broken: bool) -> DeployReport:
    """Every selected target fails with SMTP_PAYLOAD; nothing is dialled."""
    log.error("%s; nothing was sent", exc)
    failure = Failure(ErrorCode.SMTP_PAYLOAD, Phase.PAYLOAD, "; ".join(exc.problems))
    if ledger is not None:
        for t in targets:
            ledger.record("attempt", None, t.name, outcome="failed", error_code=failure.code.value,
                          phase=failure.phase.value, reply=failure.detail, attempt=0)
        ledger.block(f"certificate files unusable: {failure.detail}", failure.code.value)
    failed = tuple(DeliveryResult(t.name, Status.FAILED, failure) for t in targets)
    return DeployReport(None, failed, certificate_problems=exc.problems, exit_status=report.EX_DATAERR,
                        state_ok=ledger.healthy if ledger else not state_broken)


def _deliver(jobs: list[pipeline.Job], facts: CertificateFacts, source: LineageSource,
             ledger: Ledger | None, started: float) -> list[DeliveryResult]:
    """Send every job; the ledger writes ahead, journals each attempt and settles each entry."""
    if ledger is None:
        return pipeline.deliver_all(jobs, started=started)
    for job in jobs:
        ledger.begin(facts, source, job)
    results = pipeline.deliver_all(jobs, started=started,
                                   observer=lambda job, result: ledger.settle(facts, job, result),
                                   on_attempt=lambda job, attempt: ledger.attempt(facts, job, attempt))
    ledger.supersede_older({r.target for r in results if r.status is Status.DELIVERED}, facts)
    return results


def notify_all(plugins: pluggy.PluginManager, facts: CertificateFacts, results: list[DeliveryResult]) -> None:
    """Observers run after every target finished, outside the event loop: a slow one delays nobody's delivery."""
    from certbot_smtp_dist._internal.plugins import notify_finished

    for result in results:
        notify_finished(plugins, facts, result)


class _Locked(CredentialError):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def unlock(
    store: CredentialStore, targets: list[Target], formats: Mapping[str, PayloadFormat], with_passwords: bool
) -> dict[str, Secret]:
    """Decrypt exactly the secrets the matching targets need; every failure named by target and key."""
    secrets: dict[str, Secret] = {}
    problems: list[ConfigProblem] = []
    for t in targets:
        needed: list[tuple[str, str, str]] = []
        if with_passwords and t.auth_method is not AuthMethod.NONE and t.password_credential:
            needed.append(("password_credential", t.password_credential, PASSWORD_TYPE))
        ctype = formats[t.payload].credential_type
        if ctype and t.pkcs12_passphrase_credential:
            needed.append(("pkcs12_passphrase_credential", t.pkcs12_passphrase_credential, ctype))
        for key, name, ctype_ in needed:
            if name in secrets:
                continue
            try:
                secrets[name] = store.get(name, ctype_)
            except CredentialError as exc:
                problems.append(ConfigProblem(t.name, key, str(exc)))
    if problems:
        raise _Locked(problems)
    return secrets
