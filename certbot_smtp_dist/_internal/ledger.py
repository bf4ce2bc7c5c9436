"""Save one run's deliveries in the state: write ahead, then, after the event loop, journal and settle each entry.

The use cases (deploy, drain) call this outside the event loop: the pipeline returns results and attempts as values,
and the entries stay claimed (spool.claim) from the write-ahead until they are settled. No lock leaves spool.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certbot_smtp_dist._internal import report, runloop
from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.journal import Journal
from certbot_smtp_dist._internal.pipeline import Attempt, Delivery, Job
from certbot_smtp_dist._internal.state import StateKeys
from certbot_smtp_dist._internal.tokencache import TokenCache
from certbot_smtp_dist._internal.unwanted import NO_TARGET
from certbot_smtp_dist.model import CertificateFacts, LineageSource, Message, Status, failure_json

if TYPE_CHECKING:
    from concurrent.futures import Future

log = logging.getLogger("certbot_smtp_dist")


class Ledger:
    """State-dir bookkeeping for one run. State trouble is logged loudly but never stops a delivery."""

    def __init__(self, state_dir: Path, run: str, keys: StateKeys, now: datetime | None = None,
                 source: LineageSource | None = None, from_renewal: bool = False,
                 command: tuple[str, ...] = (report.PROGRAM,)) -> None:
        self.state_dir = state_dir
        self.command = command  # how the user called us: the commands we suggest carry the same options
        # Only a renewal leaves a blocked entry: a command typed on a terminal reports its error there and then,
        # and a typo in it must not become a standing alert that no renewal will ever close.
        self.from_renewal = from_renewal
        self.source = source  # the lineage a deploy run ships (None for the drain: each entry names its own)
        self.run = run
        self.keys = keys
        self.journal = Journal(state_dir, keys.journal, keys.journal_anchor)
        self.spool = sp.Spool(state_dir, keys.spool)
        self.now = now or datetime.now(timezone.utc)
        self.healthy = True
        self.written_ahead = False  # a run's deliveries are written ahead (write_ahead_all): they stand for it now
        self._holding = False  # this lineage's blocked entry's lock is held (holding_blocked)...
        self._held: sp.Entry | None = None  # ...and that entry, while there is one
        self._oauth2_key = keys.oauth2_tokens

    def token_cache(self) -> TokenCache | None:
        """The OAuth 2.0 token cache of this state directory (None without a key to seal it)."""
        return TokenCache(self.state_dir, self._oauth2_key) if self._oauth2_key else None

    # -- journal ------------------------------------------------------------------------------------------------
    def record(self, event: str, facts: CertificateFacts | None, target: str | None, **fields: Any) -> None:
        rec = self._record_of(event, facts, target, **fields)
        self._guard("write the journal", lambda: self.journal.append(rec))

    def _record_of(self, event: str, facts: CertificateFacts | None, target: str | None,
                   **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "run": self.run,
            "event": event,
            "target": target,
            "certificate": facts.name if facts else self._source_name(),
            "serial": facts.serial_hex if facts else None,
            "fingerprint": facts.sha256_fingerprint if facts else None,
        }
        if facts is not None:  # what the metrics' and `status --nagios`' expiry figures are read from
            rec["not_after"] = facts.not_after.isoformat()
        rec.update(fields)
        return rec

    def _source_name(self) -> str | None:
        """The certificate a deploy run was asked to ship, before (or without) reading it."""
        if self.source is None:
            return None
        return self.source.name or (self.source.lineage_dir.name if self.source.lineage_dir else None)

    def _attempt(self, facts: CertificateFacts | None, job: Job, attempt: Attempt, prior: int) -> dict[str, Any]:
        f = attempt.failure
        outcome = "delivered" if f is None and not attempt.refused else (
            "uncertain" if f is not None and f.maybe_delivered else
            "partial" if attempt.accepted and attempt.refused else "failed")
        return self._record_of("attempt", facts, job.target.name,
                               message_id=job.message.message_id if job.message else None,
                               recipients=list(job.message.envelope_to) if job.message else [],
                               **_protection(job.message), outcome=outcome, **failure_json(f),
                               # 0.1 ms: a session on a LAN takes a few ms, and 1 ms steps blur its measure
                               attempt=prior + attempt.number, duration_s=round(attempt.duration_s, 4),
                               **_key_and_names(facts))

    def held_back(self, facts: CertificateFacts, target: str, reason: str) -> None:
        """A quiet target's renewal that was not sent (min_interval): journalled, never spooled."""
        self.record("skipped", facts, target, outcome="skipped", reason=reason.partition(":")[0], detail=reason,
                    **_key_and_names(facts))

    def no_target(self, facts: CertificateFacts, targets: list[str]) -> None:
        """No selected target's `certificates` filter wants this certificate: nothing is sent or spooled, and the
        journal says so, once per run, with the names the filters were matched against (`status` tells such a
        deploy from none at all: unwanted.py)."""
        names = list(dict.fromkeys(n for n in facts.names if n))
        self.record(NO_TARGET, facts, None, targets=targets, names=names,
                    detail="no selected target's `certificates` filter matches the certificate's names; nothing to "
                           "deliver")

    # -- claiming -----------------------------------------------------------------------------------------------
    @contextmanager
    def write_ahead(self, facts: CertificateFacts, source: LineageSource, job: Job) -> Iterator[sp.Entry | None]:
        """The job's entry exists, claimed, before the first byte goes out, so a crash loses nothing; held for the
        block. None: nothing to write (no message), or the state cannot be written (logged)."""
        if job.message is None:
            yield None
            return
        self._guard("write the journal", self.journal.start)
        entry = sp.for_delivery(job.target.name, facts, source, job.message.message_id, job.message.envelope_to,
                                self.now)
        with self._claiming("write the spool", lambda: self.spool.claim_new(entry)) as held:
            yield held

    @contextmanager
    def write_ahead_all(self, facts: CertificateFacts, source: LineageSource,
                        jobs: list[Job]) -> Iterator[list[sp.Entry | None]]:
        """`write_ahead` for every job of a run, the spool directory fsynced once for all of them before the
        block (before the first connection), not once per entry. The entries are written side by side, each by
        one of a few threads (claimed, written, fsynced and renamed into place as `write_ahead` does it): a
        file's fsync mostly waits for the file system's journal, and waits made together end together (ext4
        commits them as one), where one after the other they added up to most of a second before the first
        connection on a busy disk. Whatever a claim raises is handled here, in this thread, as ever.
        A Ctrl-C while they are written waits for the last (runloop.HeldOff), then ends the run before the block:
        every entry is written and `written_ahead`. Half done, the run was blocked ("nothing was sent") beside the
        entries written, pending, and `retry --include-failed` sent those and then ran the whole deploy again."""
        many = sum(job.message is not None for job in jobs) >= 2
        if many:
            self._guard("write the journal", self.journal.start)  # before any entry, as write_ahead does
        with ExitStack() as claims:
            with runloop.HeldOff(), self._batch("write the spool"):
                # In the batch: the directories checked there are not checked again by its claims (spool.batch).
                if many and self._spool_ready():
                    entries = self._written_side_by_side(facts, source, jobs, claims)
                else:
                    entries = [claims.enter_context(self.write_ahead(facts, source, job)) for job in jobs]
                self.written_ahead = True
            yield entries

    def _written_side_by_side(self, facts: CertificateFacts, source: LineageSource, jobs: list[Job],
                              claims: ExitStack) -> list[sp.Entry | None]:
        """write_ahead_all's writer threads: every entry claimed and written, each claim taken over by `claims`."""
        from concurrent.futures import ThreadPoolExecutor

        made = [sp.for_delivery(job.target.name, facts, source, job.message.message_id, job.message.envelope_to,
                                self.now) if job.message is not None else None for job in jobs]
        with ThreadPoolExecutor(min(_WRITERS, len(jobs)), thread_name_prefix="spool") as writers:
            started = [writers.submit(_enter, self.spool.claim_new(e)) if e else None for e in made]
        # Every claim is entered (or failed) by now: each is taken over, in job order, by this stack.
        return [claims.enter_context(self._claiming("write the spool", partial(_Entered, f)))
                if f is not None else None for f in started]

    def _spool_ready(self) -> bool:
        """The spool's directories exist, made here if need be, before writer threads use them: none of those
        threads ever creates one (files.ensure_private_dir sets the process-wide umask while it creates). False
        when they cannot be made or trusted: the one-by-one path then meets and reports that as it always did."""
        try:
            self.spool.make_directories()
        except OSError:  # UnsafePathError is one too
            return False
        return True

    @contextmanager
    def _batch(self, what: str) -> Iterator[None]:
        """spool.batch(), its closing fsync failing like any other state write: logged, never raised."""
        with self.spool.batch(lambda exc: self._trouble(what, exc)):
            yield

    @contextmanager
    def claim(self, entry_id: str) -> Iterator[sp.Entry | None]:
        """An existing entry, re-read and authenticated under its lock; None if busy, gone or rejected (logged)."""
        with self._claiming("lock the spool", lambda: self.spool.claim(entry_id)) as held:
            yield held

    @contextmanager
    def _claiming(self, what: str, make: Callable[[], Any]) -> Iterator[sp.Entry | None]:
        with ExitStack() as stack:
            held: sp.Entry | None = None
            try:
                held = stack.enter_context(make())
            except sp.Busy as busy:
                log.info("spool entry %s is being delivered by another process; left to it", busy)
            except sp.Rejected as rejected:
                log.error("spool entry %s rejected: %s (left in place)", rejected.path, rejected.problem)
                self.healthy = False
            except OSError as exc:
                self._trouble(what, exc)
            yield held

    # -- saving -------------------------------------------------------------------------------------------------
    def save(self, facts: CertificateFacts | None, delivery: Delivery, entry: sp.Entry | None) -> None:
        """After the event loop, with `entry` still claimed: journal every attempt, then settle the entry."""
        self.save_all(facts, [(delivery, entry)])

    def save_all(self, facts: CertificateFacts | None, saved: list[tuple[Delivery, sp.Entry | None]]) -> None:
        """`save` for a run's deliveries, their entries still claimed: every attempt journalled in one append (one
        fsync), then every entry settled, the spool directory fsynced once. The journal is written before any entry
        is settled, and all of it before the run reports."""
        records = [self._attempt(facts, delivery.job, attempt, entry.attempts if entry else 0)
                   for delivery, entry in saved for attempt in delivery.attempts]
        with runloop.HeldOff():  # a Ctrl-C between the two would leave a delivered entry pending, sent again
            self._guard("write the journal", lambda: self.journal.append_all(records))
            with self._batch("update the spool"):
                for delivery, entry in saved:
                    self._settle(facts, delivery, entry)

    def _settle(self, facts: CertificateFacts | None, delivery: Delivery, entry: sp.Entry | None) -> None:
        result = delivery.result
        if result.status is Status.SKIPPED:
            return
        if entry is None:
            if result.failure is not None and result.status is Status.FAILED and delivery.job.message is None and facts:
                self._failed_without_message(facts, delivery)
            return
        attempts = entry.attempts + result.attempts
        remaining = tuple(addr for addr in entry.envelope_to if addr not in result.accepted)
        if result.status is Status.DELIVERED:
            self._guard("update the spool", lambda: self.spool.remove(entry.id))
        elif result.status is Status.UNCERTAIN:
            self._uncertain(entry, delivery, attempts, remaining)
        else:
            retryable = result.failure is not None and result.failure.is_retryable
            updated = sp.touched(entry, datetime.now(timezone.utc), attempts=attempts,
                                 state=sp.PENDING if retryable else sp.FAILED, envelope_to=remaining,
                                 last_failure=failure_json(result.failure))
            self._guard("update the spool", lambda: self.spool.write(updated))
            if not retryable:
                log.error("target %s: delivery of %s failed permanently (%s); it stays listed by `%s` and is not "
                          "retried automatically: %s", result.target, entry.certificate,
                          result.failure.code.value if result.failure else "?", self._hint("status"),
                          self._needs_human(entry.id))

    def _uncertain(self, entry: sp.Entry, delivery: Delivery, attempts: int, remaining: tuple[str, ...]) -> None:
        """The relay may have it: `retry` re-sends it once (same Message-ID, the recipients may de-duplicate)
        unless the target says `resend_uncertain = false`; a second lost reply waits for a human."""
        lost = entry.uncertain + 1
        due = delivery.job.target.resend_uncertain and lost == 1
        updated = sp.touched(entry, datetime.now(timezone.utc), attempts=attempts, state=sp.UNCERTAIN,
                             envelope_to=remaining, last_failure=failure_json(delivery.result.failure),
                             uncertain=lost, resend_due=due)
        self._guard("update the spool", lambda: self.spool.write(updated))
        then = (f"`{self._hint('retry')}` re-sends it once, with the same Message-ID" if due else
                f"check with the recipients, then `{self._hint('retry', '--include-uncertain')}`, or "
                f"`{self._hint('dismiss', entry.id)}`")
        log.warning("target %s: the relay may already have %s (no clear reply to the final \".\"); %s",
                    delivery.result.target, entry.message_id, then)

    def _failed_without_message(self, facts: CertificateFacts, delivery: Delivery) -> None:
        """A payload that could not be built: record it so `status` alerts, although there is nothing to resend."""
        failure = delivery.result.failure
        entry = sp.for_delivery(delivery.job.target.name, facts, self.source, None, (), self.now, failure)
        self._guard("write the spool", lambda: self.spool.write(entry))
        self.record("attempt", facts, delivery.job.target.name, outcome="failed", attempt=0, **failure_json(failure))

    # -- closing ------------------------------------------------------------------------------------------------
    def close(self, entry: sp.Entry, event: str, facts: CertificateFacts | None, why: str) -> None:
        """A claimed entry is done: journalled, then removed."""
        self.record(event, facts, entry.target, message_id=entry.message_id, outcome=event, detail=why,
                    certificate_entry=entry.certificate)
        self._guard("update the spool", lambda: self.spool.remove(entry.id))

    def fail(self, entry: sp.Entry, why: str, code: str | None = None) -> None:
        """A claimed entry that cannot succeed without a human: `failed`, so `status` alerts. Never dropped."""
        log.error("target %s: spooled delivery of %s needs attention: %s; %s", entry.target, entry.certificate, why,
                  self._needs_human(entry.id))
        failed = sp.touched(entry, datetime.now(timezone.utc), state=sp.FAILED,
                            last_failure=sp.needs_attention(why, code))
        self.record("retry_blocked", None, entry.target, message_id=entry.message_id, detail=why)
        self._guard("update the spool", lambda: self.spool.write(failed))

    def supersede_older(self, targets: set[str], facts: CertificateFacts, held_back: bool = False) -> None:
        """These targets got this certificate (one pass after the run): their entries for it, or for an older
        certificate of the same name, are done. `held_back`: they did not get it, because min_interval held this
        renewal back (the target already has this key and these names); an older certificate still waiting for
        them is superseded all the same, never sent after the newer one was renewed. Only an entry for a certificate
        older than this one (by validity) is superseded: a newer one still waiting is left to `retry`."""
        if not targets:
            return
        why = (f"a newer certificate ({facts.serial_hex}) was renewed and held back by min_interval"
               if held_back else f"a newer certificate ({facts.serial_hex}) was delivered")
        with runloop.HeldOff():  # each close journals, then removes: a Ctrl-C between the two left it pending
            self._supersede(targets, facts, held_back, why)

    def _supersede(self, targets: set[str], facts: CertificateFacts, held_back: bool, why: str) -> None:
        for item in self.spool.entries():
            if isinstance(item, sp.Rejected) or item.target not in targets:
                continue
            with self.claim(item.id) as fresh:  # re-read under the lock: another process may have closed it
                if fresh is None or fresh.kind != sp.DELIVERY:
                    continue
                if fresh.fingerprint == facts.sha256_fingerprint:
                    if not held_back:
                        self.close(fresh, "delivered_elsewhere", facts, "a later run delivered this certificate")
                elif (fresh.certificate == facts.name and fresh.state in (sp.PENDING, sp.UNCERTAIN)
                      and sp.older_than(fresh, facts)):  # an older certificate deployed again supersedes nothing
                    self.close(fresh, "superseded", None, why)

    # -- blocked deploys ----------------------------------------------------------------------------------------
    def block(self, why: str, code: str | None, facts: CertificateFacts | None = None) -> None:
        """This run's whole deploy could not start: leave a `failed` entry so `status` alerts and
        `retry --include-failed` can run the deploy again once the cause is fixed."""
        if self.source is None or not self.from_renewal:
            return
        self._guard("write the journal", self.journal.start)  # before any entry, as write_ahead does
        source = self.source
        try:
            with self._blocked_claim(source) as old:
                entry = sp.for_blocked(source, facts, old, why, code, datetime.now(timezone.utc))
                self._guard("write the spool", lambda: self.spool.write(entry))
                if self._holding:
                    self._held = entry
                log.error("the deploy of %s is blocked and listed by `%s`: %s", entry.certificate or "this lineage",
                          self._hint("status"), self._needs_human(entry.id))
        except sp.Busy:
            return  # another run holds exactly this entry and settles it
        except sp.Rejected as rejected:
            log.error("spool entry %s rejected: %s (left in place)", rejected.path, rejected.problem)
            self.healthy = False
        except OSError as exc:
            self._trouble("write the spool", exc)

    def unblock(self) -> None:
        """This run got past configuration and certificate checks and its deliveries are written ahead (or made): a
        blocked entry for its lineage is done."""
        if self.source is None:
            return
        if self._holding:
            held, self._held = self._held, None
            if held is not None:
                self.close(held, "unblocked", None, "the deploy ran again")
            return
        with self.claim(sp.blocked_id(self.source)) as entry:
            if entry is not None:
                self.close(entry, "unblocked", None, "the deploy ran again")

    @contextmanager
    def holding_blocked(self) -> Iterator[None]:
        """Hold this lineage's blocked entry (its lock) while the run ships, until `unblock` or `block` settles it:
        a `retry` meanwhile (the timer's, the entry pending once the configuration loads again; or --include-failed)
        finds it busy and leaves it to this run. Unheld, it ran the whole deploy a second time, mailing the
        certificate twice. Busy, unreadable or not writable here: `unblock` and `block` claim it as before."""
        if self.source is None:
            yield
            return
        with ExitStack() as stack:
            try:
                self._held = stack.enter_context(self.spool.claim(sp.blocked_id(self.source)))
                self._holding = True
            except (sp.Busy, sp.Rejected, OSError):
                pass
            try:
                yield
            finally:
                self._holding, self._held = False, None

    @contextmanager
    def _blocked_claim(self, source: LineageSource) -> Iterator[sp.Entry | None]:
        """The blocked entry, under its lock: the one `holding_blocked` holds (flock: claiming it again here would
        find it busy), or claimed now."""
        if self._holding:
            yield self._held
            return
        with self.spool.claim(sp.blocked_id(source)) as old:
            yield old

    def config_fixed(self) -> None:
        """The configuration loads cleanly now: a deploy it blocked is no longer an error but pending, and the next
        `retry` runs it again (closing it, or blocking it with today's reason)."""
        for item in self.spool.entries():
            if isinstance(item, sp.Rejected) or item.kind != sp.BLOCKED or item.state != sp.FAILED:
                continue
            if (item.last_failure or {}).get("error_code") != sp.CONFIG_BLOCK:
                continue
            with self.claim(item.id) as entry:
                if entry is None or (entry.last_failure or {}).get("error_code") != sp.CONFIG_BLOCK:
                    continue
                why = f"the configuration loads again; the next `{self._hint('retry')}` runs this deploy"
                self.record("config_fixed", None, None, certificate_entry=entry.certificate, detail=why)
                pending = sp.touched(entry, datetime.now(timezone.utc), state=sp.PENDING,
                                     last_failure=sp.needs_attention(why))
                self._guard("update the spool", lambda: self.spool.write(pending))  # noqa: B023 (called at once)

    def _hint(self, *words: str) -> str:
        return report.next_command(self.command, *words)

    def _needs_human(self, entry_id: str) -> str:
        return (f"after fixing the cause, `{self._hint('retry', '--include-failed')}`; or "
                f"`{self._hint('dismiss', entry_id)}`")

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _guard(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            self._trouble(what, exc)

    def _trouble(self, what: str, exc: OSError) -> None:
        self.healthy = False
        log.error("cannot %s in %s (%s): failed deliveries from this run will NOT be retried automatically",
                  what, self.state_dir, exc.strerror or exc)


_WRITERS = 8  # threads writing a run's write-ahead entries side by side (write_ahead_all)


def _enter(claim: AbstractContextManager[sp.Entry]) -> tuple[AbstractContextManager[sp.Entry], sp.Entry]:
    """On a writer thread: enter `claim` (take the entry's lock, write the entry); the caller's thread leaves it."""
    return claim, claim.__enter__()


class _Entered(AbstractContextManager[sp.Entry]):
    """A claim entered on a writer thread, as a context manager of this one: entering hands over the entry (or
    raises what entering raised there: Busy, Rejected, OSError), leaving releases the claim here."""

    def __init__(self, started: Future[tuple[AbstractContextManager[sp.Entry], sp.Entry]]) -> None:
        self._started = started
        self._claim: AbstractContextManager[sp.Entry] | None = None

    def __enter__(self) -> sp.Entry:
        self._claim, entry = self._started.result()
        return entry

    def __exit__(self, *exc: Any) -> bool | None:
        return self._claim.__exit__(*exc) if self._claim is not None else None


def _key_and_names(facts: CertificateFacts | None) -> dict[str, Any]:
    """What a quiet target compares with the next renewal: the public key (SPKI SHA-256) and the names."""
    if facts is None or not facts.spki_sha256:
        return {}
    return {"spki_sha256": facts.spki_sha256, "names": list(facts.subject_names)}


def _protection(message: Message | None) -> dict[str, Any]:
    """Whether the message was signed, and to which recipient certificates (SHA-256) it was encrypted (S/MIME)."""
    if message is None:
        return {}
    return {"signed": message.signed, "encrypted_to": list(message.encrypted_to)}
