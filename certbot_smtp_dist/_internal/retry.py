"""Drain the spool: re-send pending deliveries with their original Message-ID, close what can no longer apply."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from certbot_smtp_dist._internal import lineage, pipeline, report
from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.deploy import LoadedConfig, load_config
from certbot_smtp_dist._internal.ledger import Ledger
from certbot_smtp_dist._internal.state import Lock
from certbot_smtp_dist.errors import CertificateError, ConfigError, CredentialError
from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, Secret, Target

log = logging.getLogger("certbot_smtp_dist")

# RFC 5321 §4.5.4.1: give up after at least 4-5 days, as MTAs do.
MAX_AGE = timedelta(days=5)


@dataclass(frozen=True, slots=True)
class RetryReport:
    results: tuple[DeliveryResult, ...]
    closed: tuple[tuple[str, str], ...]  # (entry id, why)
    busy: bool = False
    exit_status: int = report.EX_OK


def run(state_dir: Path, config_override: Path | None = None, include_failed: bool = False,
        now: datetime | None = None) -> RetryReport:
    now = now or datetime.now(timezone.utc)
    run_lock = Lock(state_dir / "retry.lock")
    if not run_lock.acquire(blocking=False):
        log.info("another `certbot-smtp-dist retry` is running; nothing to do")
        return RetryReport((), (), busy=True)
    try:
        return _drain(state_dir, config_override, include_failed, now)
    finally:
        run_lock.release()


def _drain(state_dir: Path, config_override: Path | None, include_failed: bool, now: datetime) -> RetryReport:
    spool = sp.Spool(state_dir)
    configs: dict[Path, LoadedConfig | ConfigError] = {}
    ledgers: dict[Path, Ledger] = {}
    planned: list[tuple[Ledger, sp.Entry, pipeline.Job, CertificateFacts]] = []
    closed: list[tuple[str, str]] = []
    problems = False
    for item in spool.entries():
        if isinstance(item, tuple):
            log.error("%s: %s (left in place)", item[0], item[1])
            problems = True
            continue
        entry = item
        if entry.state == sp.FAILED and not include_failed:
            continue
        cfg_path = config_override or Path(entry.config)
        ledger = ledgers.setdefault(cfg_path, Ledger(state_dir, "retry", cfg_path, now))
        lock = spool.lock(entry.id)
        if not lock.acquire(blocking=False):
            log.info("entry %s is being delivered by another process; skipped", entry.id)
            continue
        keep_lock = False
        try:
            if now - datetime.fromisoformat(entry.created) > MAX_AGE:
                ledger.close(entry, "expired", None, f"undeliverable for more than {MAX_AGE.days} days")
                log.error("target %s: gave up on %s after %d attempt(s) over %d days", entry.target,
                          entry.certificate, entry.attempts, MAX_AGE.days)
                closed.append((entry.id, "expired"))
                continue
            if cfg_path not in configs:
                try:
                    configs[cfg_path] = load_config(cfg_path)
                except ConfigError as exc:
                    configs[cfg_path] = exc
                    log.error("%s", exc)
            loaded = configs[cfg_path]
            if isinstance(loaded, ConfigError):
                problems = True
                continue  # the entry waits for a usable configuration
            target = loaded.settings.target(entry.target)
            if target is None:
                _fail(ledger, spool, entry, now, "target is no longer configured")
                problems = True
                continue
            try:
                artefact = lineage.load(entry.lineage_source(), now)
            except CertificateError as exc:
                _fail(ledger, spool, entry, now, f"certificate files unusable: {'; '.join(exc.problems)}")
                problems = True
                continue
            if artefact.facts.sha256_fingerprint != entry.fingerprint:
                ledger.close(entry, "superseded", artefact.facts,
                             f"the lineage now holds a newer certificate (serial {artefact.facts.serial_hex})")
                closed.append((entry.id, "superseded"))
                continue
            secrets = _unlock(loaded, target)
            if secrets is None:
                problems = True
                continue
            job = pipeline.prepare_job(target, artefact, loaded.formats, secrets,
                                       datetime.fromisoformat(entry.date), entry.message_id, entry.envelope_to)
            if job.skipped:
                ledger.close(entry, "skipped", artefact.facts, "the target's filter no longer matches")
                closed.append((entry.id, "skipped"))
                continue
            ledger.adopt(entry, lock)
            keep_lock = True
            planned.append((ledger, entry, job, artefact.facts))
        finally:
            if not keep_lock:
                lock.release()

    owners = {id(job): (ledger, facts) for ledger, _, job, facts in planned}
    jobs = [job for _, _, job, _ in planned]

    def finished(job: pipeline.Job, result: DeliveryResult) -> None:
        ledger, facts = owners[id(job)]
        ledger.settle(facts, job, result)
        log.log(logging.INFO if result.ok else logging.ERROR, "retry %s", report.human_line(result))

    def attempted(job: pipeline.Job, attempt: pipeline.Attempt) -> None:
        ledger, facts = owners[id(job)]
        ledger.attempt(facts, job, attempt)

    results = pipeline.deliver_all(jobs, observer=finished, on_attempt=attempted) if jobs else []
    status = report.exit_status(results)
    if status == report.EX_OK and problems:
        status = report.EX_TEMPFAIL
    return RetryReport(tuple(results), tuple(closed), exit_status=status)


def _fail(ledger: Ledger, spool: sp.Spool, entry: sp.Entry, now: datetime, why: str) -> None:
    """A delivery that cannot succeed without a human: mark it failed (status alerts), never drop it silently."""
    log.error("target %s: spooled delivery of %s cannot be retried: %s", entry.target, entry.certificate, why)
    failed = sp.touched(entry, now, state=sp.FAILED,
                        last_failure={"error_code": None, "retryable": False, "phase": None, "smtp_code": None,
                                      "enhanced_status": None, "detail": why})
    ledger.record("retry_blocked", None, entry.target, message_id=entry.message_id, detail=why)
    try:
        spool.write(failed)
    except OSError as exc:
        log.error("cannot update spool entry %s: %s", entry.id, exc.strerror or exc)


def _unlock(loaded: LoadedConfig, target: Target) -> dict[str, Secret] | None:
    from certbot_smtp_dist._internal.deploy import unlock

    try:
        return unlock(loaded.store, [target], loaded.formats, with_passwords=True)
    except CredentialError as exc:
        log.error("%s", exc)
        return None
