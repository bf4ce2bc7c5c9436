"""Drain the spool: re-send pending deliveries with their original Message-ID, close what can no longer apply."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from certbot_smtp_dist._internal import lineage, pipeline, report
from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.deploy import (
    DeployRequest,
    LoadedConfig,
    load_config,
    notify_all,
    open_state_keys,
    unlock,
)
from certbot_smtp_dist._internal.ledger import Ledger
from certbot_smtp_dist._internal.state import Lock, StateKeys
from certbot_smtp_dist._internal.upgrade import upgrade
from certbot_smtp_dist.errors import CertificateError, ConfigError, CredentialError
from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, LineageSource

log = logging.getLogger("certbot_smtp_dist")

# RFC 5321 §4.5.4.1: give up after at least 4-5 days, as MTAs do.
MAX_AGE = timedelta(days=5)


@dataclass(frozen=True, slots=True)
class RetryReport:
    results: tuple[DeliveryResult, ...]
    closed: tuple[tuple[str, str], ...]  # (entry id, why)
    busy: bool = False
    exit_status: int = report.EX_OK


@dataclass(frozen=True, slots=True)
class _Planned:
    ledger: Ledger
    job: pipeline.Job
    facts: CertificateFacts
    config: LoadedConfig


def run(state_dir: Path, config: Path, include_failed: bool = False,
        now: datetime | None = None, include_uncertain: bool = False) -> RetryReport:
    """One drain at a time: a second `retry` finds the run lock taken and leaves at once.

    `config` is resolved exactly as `deploy` resolves it (--config, $CERTBOT_SMTP_DIST_CONFIG, the default): an
    entry never names a config file, so whoever could write an entry still cannot choose the relay or the payload.
    """
    from certbot_smtp_dist._internal.ownership import require_trusted_config, require_trusted_state

    require_trusted_state(state_dir)
    require_trusted_config(config)
    keys = open_state_keys(config, None, state_dir)
    if keys is None:
        return RetryReport((), (), exit_status=report.EX_CONFIG)
    run_lock = Lock(state_dir / "retry.lock")
    if not run_lock.acquire(blocking=False):
        log.info("another `certbot-smtp-dist retry` is running; nothing to do")
        return RetryReport((), (), busy=True)
    try:
        upgrade(state_dir, config, keys)
        return _Drain(state_dir, config, keys, include_failed, now or datetime.now(timezone.utc),
                      include_uncertain).run()
    finally:
        run_lock.release()


class _Drain:
    """Select entries (each locked and re-read), revalidate them against today's config and files, deliver."""

    def __init__(self, state_dir: Path, config: Path, keys: StateKeys, include_failed: bool, now: datetime,
                 include_uncertain: bool = False) -> None:
        self.state_dir = state_dir
        self.config = config
        self.keys = keys
        self.include_failed = include_failed
        self.include_uncertain = include_uncertain  # also re-send entries whose relay may already have them
        self.now = now
        self.spool = sp.Spool(state_dir, keys.spool)
        self.configs: dict[Path, LoadedConfig | ConfigError] = {}
        self.ledgers: dict[Path, Ledger] = {}
        self.planned: list[_Planned] = []
        self.closed: list[tuple[str, str]] = []
        self.results: list[DeliveryResult] = []
        self.trouble = False
        self.started = time.monotonic()  # each entry's `timeout` counts from here, rendering included

    def run(self) -> RetryReport:
        for item in self.spool.entries():
            if isinstance(item, sp.Rejected):
                log.error("spool entry %s rejected: %s (left in place, see `certbot-smtp-dist status`)", item.path,
                          item.problem)
                self.trouble = True
            elif self._wanted(item):
                self._take(item)
        self.results.extend(self._deliver())
        status = report.exit_status(self.results)
        if status == report.EX_OK and self.trouble:
            status = report.EX_TEMPFAIL
        return RetryReport(tuple(self.results), tuple(self.closed), exit_status=status)

    def _wanted(self, item: sp.Entry) -> bool:
        if item.state == sp.UNCERTAIN:  # re-sent once by itself, then only when asked (RFC 1047)
            return item.resend_due or self.include_uncertain
        return item.state == sp.PENDING or self.include_failed

    def _take(self, item: sp.Entry) -> None:
        lock = self.spool.lock(item.id)
        if not lock.acquire(blocking=False):
            log.info("entry %s is being delivered by another process; skipped", item.id)
            return
        keep = False
        try:
            entry = self.spool.load(item.id)  # re-read under the lock: another process may have closed it
            if entry is not None and self._wanted(entry):
                keep = self._plan(entry, lock)
        except sp.Rejected as rejected:  # replaced between listing and locking
            log.error("spool entry %s rejected: %s (left in place)", rejected.path, rejected.problem)
            self.trouble = True
        finally:
            if not keep:
                lock.release()

    def _plan(self, entry: sp.Entry, lock: Lock) -> bool:
        """True when a delivery is planned (the entry's lock then stays held until it settles)."""
        config = self.config
        ledger = self.ledgers.setdefault(config, Ledger(self.state_dir, "retry", self.keys, self.now))
        if self.now - datetime.fromisoformat(entry.created) > MAX_AGE:
            log.error("target %s: gave up on %s after %d attempt(s) over %d days", entry.target,
                      entry.certificate, entry.attempts, MAX_AGE.days)
            return self._close(ledger, entry, "expired", f"undeliverable for more than {MAX_AGE.days} days")
        source = entry.lineage_source()
        if source is None:
            return self._fail(ledger, entry, "the entry records no certificate files to send")
        if entry.kind == sp.BLOCKED:
            return self._rerun(ledger, entry, config, source)
        loaded = self._config(config)
        if loaded is None:
            return self._fail(ledger, entry, f"configuration {config} is unusable (see the error above)")
        target = loaded.settings.target(entry.target)
        if target is None:
            return self._close(ledger, entry, "target_removed", f"target {entry.target} is no longer in {config}")
        if entry.state == sp.UNCERTAIN and not (self.include_uncertain or target.resend_uncertain):
            log.warning("target %s: %s may already be delivered and resend_uncertain = false: it waits for "
                        "`retry --include-uncertain` or `dismiss`", entry.target, entry.message_id)
            self.spool.write(sp.touched(entry, datetime.now(timezone.utc), resend_due=False))
            return False
        try:
            artefact = lineage.load(source, self.now)
        except CertificateError as exc:
            return self._fail(ledger, entry, f"certificate files unusable: {'; '.join(exc.problems)}", "SMTP_PAYLOAD")
        if artefact.facts.sha256_fingerprint != entry.fingerprint:
            return self._close(ledger, entry, "superseded",
                               f"the lineage now holds a newer certificate (serial {artefact.facts.serial_hex})",
                               artefact.facts)
        try:
            secrets = unlock(loaded.store, [target], loaded.formats, with_passwords=True)
        except CredentialError as exc:
            return self._fail(ledger, entry, str(exc))
        job = pipeline.prepare_job(target, artefact, loaded.formats, secrets, datetime.fromisoformat(entry.date),
                                   entry.message_id, entry.envelope_to or None)
        if job.skipped:
            return self._close(ledger, entry, "skipped", "the target's filter no longer matches", artefact.facts)
        if job.message is None:
            detail = job.failure.detail if job.failure else "the payload cannot be built"
            return self._fail(ledger, entry, detail, "SMTP_PAYLOAD")
        if entry.message_id is None:  # a payload that failed before: it gets its Message-ID now
            entry = replace(entry, message_id=job.message.message_id, envelope_to=job.message.envelope_to)
            self.spool.write(entry)
        ledger.adopt(entry, lock)
        self.planned.append(_Planned(ledger, job, artefact.facts, loaded))
        return True

    def _rerun(self, ledger: Ledger, entry: sp.Entry, config: Path, source: LineageSource) -> bool:
        """A blocked deploy: run it again whole; the entry closes once it gets past config and certificate."""
        from certbot_smtp_dist._internal import deploy

        outcome = deploy.run(DeployRequest(config=config, source=source, state_dir=self.state_dir), self.now)
        self.results.extend(outcome.results)
        if outcome.exit_status in (report.EX_CONFIG, report.EX_DATAERR):
            self.trouble = True
            return self._fail(ledger, entry, "the deploy is still blocked (see the errors above)")
        return self._close(ledger, entry, "unblocked", "the deploy ran again")

    def _deliver(self) -> list[DeliveryResult]:
        if not self.planned:
            return []
        owners = {id(p.job): p for p in self.planned}

        def finished(job: pipeline.Job, result: DeliveryResult) -> None:
            owners[id(job)].ledger.settle(owners[id(job)].facts, job, result)
            log.log(logging.INFO if result.ok else logging.ERROR, "retry %s", report.human_line(result))

        def attempted(job: pipeline.Job, attempt: pipeline.Attempt) -> None:
            owners[id(job)].ledger.attempt(owners[id(job)].facts, job, attempt)

        results = pipeline.deliver_all([p.job for p in self.planned], observer=finished, on_attempt=attempted,
                                       started=self.started)
        for planned, result in zip(self.planned, results, strict=True):
            notify_all(planned.config.plugins, planned.facts, [result])
        return results

    def _config(self, path: Path) -> LoadedConfig | None:
        if path not in self.configs:
            try:
                self.configs[path] = load_config(path)
            except ConfigError as exc:
                log.error("%s", exc)
                self.configs[path] = exc
        loaded = self.configs[path]
        return None if isinstance(loaded, ConfigError) else loaded

    def _close(self, ledger: Ledger, entry: sp.Entry, event: str, why: str,
               facts: CertificateFacts | None = None) -> bool:
        ledger.close(entry, event, facts, why)
        self.closed.append((entry.id, event))
        return False

    def _fail(self, ledger: Ledger, entry: sp.Entry, why: str, code: str | None = None) -> bool:
        ledger.fail(entry, why, code)
        self.trouble = True
        return False
