"""Keep journal and spool in step with one run's deliveries: write ahead, record each attempt, settle the entry."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.journal import Journal
from certbot_smtp_dist._internal.pipeline import Attempt, Job
from certbot_smtp_dist._internal.state import Lock, StateKeys
from certbot_smtp_dist.model import CertificateFacts, DeliveryResult, Failure, LineageSource, Status

log = logging.getLogger("certbot_smtp_dist")


class Ledger:
    """State-dir bookkeeping for one run. State trouble is logged loudly but never stops a delivery."""

    def __init__(self, state_dir: Path, run: str, keys: StateKeys, now: datetime | None = None,
                 source: LineageSource | None = None) -> None:
        self.state_dir = state_dir
        self.source = source  # the lineage a deploy run ships (None for retry: each entry names its own)
        self.run = run
        self.journal = Journal(state_dir, keys.journal, keys.journal_anchor)
        self.spool = sp.Spool(state_dir, keys.spool)
        self.now = now or datetime.now(timezone.utc)
        # Keyed by (target, Message-ID): a retry run holds several entries of one target at once.
        self._entries: dict[tuple[str, str | None], sp.Entry] = {}
        self._locks: dict[tuple[str, str | None], Lock] = {}
        self._prior_attempts: dict[tuple[str, str | None], int] = {}
        self.healthy = True

    # -- journal ------------------------------------------------------------------------------------------------
    def record(self, event: str, facts: CertificateFacts | None, target: str | None, **fields: Any) -> None:
        rec: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "run": self.run,
            "event": event,
            "target": target,
            "certificate": facts.name if facts else None,
            "serial": facts.serial_hex if facts else None,
            "fingerprint": facts.sha256_fingerprint if facts else None,
        }
        rec.update(fields)
        self._guard("write the journal", lambda: self.journal.append(rec))

    def attempt(self, facts: CertificateFacts, job: Job, attempt: Attempt) -> None:
        f = attempt.failure
        status = "delivered" if f is None and not attempt.refused else (
            "uncertain" if f is not None and f.maybe_delivered else
            "partial" if attempt.accepted and attempt.refused else "failed")
        self.record(
            "attempt", facts, job.target.name,
            message_id=job.message.message_id if job.message else None,
            recipients=len(job.message.envelope_to) if job.message else 0,
            outcome=status, **_failure_fields(f),
            attempt=self._prior_attempts.get(_key(job), 0) + attempt.number,
            duration_s=round(attempt.duration_s, 3),
        )

    # -- spool --------------------------------------------------------------------------------------------------
    def begin(self, facts: CertificateFacts, source: LineageSource, job: Job) -> None:
        """Write-ahead: an entry exists before the first byte goes out, so a crash loses nothing."""
        if job.message is None:
            return
        entry = sp.Entry(
            id=sp.entry_id(job.target.name, facts.sha256_fingerprint, job.message.message_id),
            state=sp.PENDING, target=job.target.name, certificate=facts.name,
            serial=facts.serial_hex, fingerprint=facts.sha256_fingerprint, message_id=job.message.message_id,
            date=self.now.isoformat(), envelope_to=job.message.envelope_to, source=sp.source_json(source),
            created=self.now.isoformat(), updated=self.now.isoformat(),
        )
        self.adopt(entry, lock=None)
        self._guard("write the journal", self.journal.start)
        self._guard("write the spool", lambda: self.spool.write(entry))

    def adopt(self, entry: sp.Entry, lock: Lock | None) -> bool:
        """Hold `entry` for this run; False if another process is delivering it right now."""
        if lock is None:
            lock = self.spool.lock(entry.id)
            try:
                if not lock.acquire(blocking=False):
                    return False
            except OSError as exc:
                self._trouble("lock the spool", exc)
        key = (entry.target, entry.message_id)
        self._entries[key] = entry
        self._locks[key] = lock
        self._prior_attempts[key] = entry.attempts
        return True

    def settle(self, facts: CertificateFacts | None, job: Job, result: DeliveryResult) -> None:
        """After the run's last attempt: remove a delivered entry, keep the rest with their failure."""
        entry = self._entries.pop(_key(job), None)
        lock = self._locks.pop(_key(job), None)
        try:
            if result.status is Status.SKIPPED:
                return
            if entry is None:
                if result.failure is not None and result.status is Status.FAILED and job.message is None and facts:
                    self._failed_without_message(facts, job, result.failure)
                return
            attempts = entry.attempts + result.attempts
            if result.status is Status.DELIVERED:
                self._guard("update the spool", lambda: self.spool.remove(entry.id))
                return
            if result.status is Status.UNCERTAIN:
                self._uncertain(entry, job, result, attempts)
                return
            retryable = result.failure is not None and result.failure.is_retryable
            remaining = tuple(addr for addr in entry.envelope_to if addr not in result.accepted)
            updated = sp.touched(entry, datetime.now(timezone.utc), attempts=attempts,
                                 state=sp.PENDING if retryable else sp.FAILED, envelope_to=remaining,
                                 last_failure=sp.failure_json(result.failure))
            self._guard("update the spool", lambda: self.spool.write(updated))
            if not retryable:
                log.error("target %s: delivery of %s failed permanently (%s); it stays listed by "
                          "`certbot-smtp-dist status` and is not retried automatically", job.target.name,
                          entry.certificate, result.failure.code.value if result.failure else "?")
        finally:
            if lock is not None:
                lock.release()

    def _uncertain(self, entry: sp.Entry, job: Job, result: DeliveryResult, attempts: int) -> None:
        """The relay may have it: `retry` re-sends it once (same Message-ID, the recipients may de-duplicate)
        unless the target says `resend_uncertain = false`; a second lost reply waits for a human."""
        lost = entry.uncertain + 1
        due = job.target.resend_uncertain and lost == 1
        updated = sp.touched(entry, datetime.now(timezone.utc), attempts=attempts, state=sp.UNCERTAIN,
                             envelope_to=tuple(a for a in entry.envelope_to if a not in result.accepted),
                             last_failure=sp.failure_json(result.failure), uncertain=lost, resend_due=due)
        self._guard("update the spool", lambda: self.spool.write(updated))
        then = ("`certbot-smtp-dist retry` re-sends it once, with the same Message-ID" if due else
                "it waits for `certbot-smtp-dist retry --include-uncertain` or `dismiss` after you checked")
        log.warning("target %s: the relay may already have %s (no reply to the final \".\"); %s",
                    job.target.name, entry.message_id, then)

    def close(self, entry: sp.Entry, event: str, facts: CertificateFacts | None, why: str) -> None:
        self.record(event, facts, entry.target, message_id=entry.message_id, outcome=event, detail=why,
                    certificate_entry=entry.certificate)
        self._guard("update the spool", lambda: self.spool.remove(entry.id))

    def _failed_without_message(self, facts: CertificateFacts, job: Job, failure: Failure) -> None:
        """A payload that could not be built: record it so `status` alerts, although there is nothing to resend."""
        entry = sp.Entry(
            id=sp.entry_id(job.target.name, facts.sha256_fingerprint, None), state=sp.FAILED,
            target=job.target.name, certificate=facts.name, serial=facts.serial_hex,
            fingerprint=facts.sha256_fingerprint, message_id=None, date=self.now.isoformat(), envelope_to=(),
            source=sp.source_json(self.source) if self.source else {}, created=self.now.isoformat(),
            updated=self.now.isoformat(), attempts=0,
            last_failure=sp.failure_json(failure),
        )
        self._guard("write the spool", lambda: self.spool.write(entry))
        self.record("attempt", facts, job.target.name, outcome="failed", attempt=0, **_failure_fields(failure))

    def supersede_older(self, targets: set[str], facts: CertificateFacts) -> None:
        """These targets got this certificate (one pass after the run): their entries for it, or for an older
        certificate of the same name, are done."""
        if not targets:
            return
        for item in self.spool.entries():
            if isinstance(item, sp.Rejected) or item.target not in targets:
                continue
            lock = self.spool.lock(item.id)
            if not lock.acquire(blocking=False):
                continue
            try:
                fresh = self._reload(item.id)  # re-read under the lock: another process may have closed it
                if fresh is None or fresh.kind != sp.DELIVERY:
                    continue
                if fresh.fingerprint == facts.sha256_fingerprint:
                    self.close(fresh, "delivered_elsewhere", facts, "a later run delivered this certificate")
                elif fresh.certificate == facts.name and fresh.state in (sp.PENDING, sp.UNCERTAIN):
                    self.close(fresh, "superseded", None, f"a newer certificate ({facts.serial_hex}) was delivered")
            finally:
                lock.release()

    def fail(self, entry: sp.Entry, why: str, code: str | None = None) -> None:
        """An entry that cannot succeed without a human: `failed`, so `status` alerts. Never dropped silently."""
        log.error("target %s: spooled delivery of %s needs attention: %s", entry.target, entry.certificate, why)
        failed = sp.touched(entry, datetime.now(timezone.utc), state=sp.FAILED,
                            last_failure={"error_code": code, "retryable": False, "phase": None, "smtp_code": None,
                                          "enhanced_status": None, "detail": why})
        self.record("retry_blocked", None, entry.target, message_id=entry.message_id, detail=why)
        self._guard("update the spool", lambda: self.spool.write(failed))

    def block(self, why: str, code: str | None, facts: CertificateFacts | None = None) -> None:
        """This run's whole deploy could not start: leave a `failed` entry so `status` alerts and
        `retry --include-failed` can run the deploy again once the cause is fixed."""
        try:
            self._block(why, code, facts)
        except OSError as exc:
            self._trouble("write the spool", exc)

    def _block(self, why: str, code: str | None, facts: CertificateFacts | None) -> None:
        if self.source is None:
            return
        entry_id = sp.blocked_id(self.source)
        lock = self.spool.lock(entry_id)
        try:
            if not lock.acquire(blocking=False):
                return  # a retry is re-running exactly this deploy and settles the entry itself
        except OSError as exc:
            self._trouble("lock the spool", exc)
            return
        try:
            old = self._reload(entry_id)
            now = datetime.now(timezone.utc).isoformat()
            entry = sp.Entry(
                id=entry_id, state=sp.FAILED, target="*",
                certificate=facts.name if facts else (self.source.name or ""),
                serial=facts.serial_hex if facts else "", fingerprint=facts.sha256_fingerprint if facts else "",
                message_id=None, date=now, envelope_to=(), source=sp.source_json(self.source),
                created=old.created if old else now, updated=now, attempts=(old.attempts if old else 0) + 1,
                last_failure={"error_code": code, "retryable": False, "phase": None, "smtp_code": None,
                              "enhanced_status": None, "detail": why},
                kind=sp.BLOCKED,
            )
            self._guard("write the spool", lambda: self.spool.write(entry))
        finally:
            lock.release()

    def unblock(self) -> None:
        """This run got past configuration and certificate checks: a blocked entry for its lineage is done."""
        try:
            self._unblock()
        except OSError as exc:
            self._trouble("update the spool", exc)

    def _unblock(self) -> None:
        if self.source is None:
            return
        entry_id = sp.blocked_id(self.source)
        if self._reload(entry_id) is None:
            return
        lock = self.spool.lock(entry_id)
        if not lock.acquire(blocking=False):
            return
        try:
            entry = self._reload(entry_id)
            if entry is not None:
                self.close(entry, "unblocked", None, "the deploy ran again")
        finally:
            lock.release()

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _reload(self, entry_id: str) -> sp.Entry | None:
        """An entry read again under its lock; one that is not authentic is left alone (status reports it)."""
        try:
            return self.spool.load(entry_id)
        except sp.Rejected as rejected:
            log.error("spool entry %s rejected: %s", rejected.path, rejected.problem)
            self.healthy = False
            return None

    def _guard(self, what: str, action: Any) -> None:
        try:
            action()
        except OSError as exc:
            self._trouble(what, exc)

    def _trouble(self, what: str, exc: OSError) -> None:
        self.healthy = False
        log.error("cannot %s in %s (%s): failed deliveries from this run will NOT be retried automatically",
                  what, self.state_dir, exc.strerror or exc)


def _key(job: Job) -> tuple[str, str | None]:
    return job.target.name, job.message.message_id if job.message else None


def _failure_fields(f: Failure | None) -> dict[str, Any]:
    return {
        "error_code": f.code.value if f else None,
        "phase": f.phase.value if f else None,
        "smtp_code": f.smtp_code if f else None,
        "enhanced_status": f.enhanced_status if f else None,
        "reply": f.detail if f else None,
    }

