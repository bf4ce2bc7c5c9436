"""Drain the spool: re-send pending deliveries with their original Message-ID, close what can no longer apply."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from certbot_smtp_dist._internal import lineage, loader, pipeline, report, runloop
from certbot_smtp_dist._internal import spool as sp
from certbot_smtp_dist._internal.ledger import Ledger
from certbot_smtp_dist._internal.state import Lock, StateKeys, state_keys
from certbot_smtp_dist.errors import CertificateError, ConfigError, CredentialError, UnsafePathError
from certbot_smtp_dist.model import (
    Artefact,
    CertificateFacts,
    DeliveryResult,
    LineageSource,
    RetryPolicy,
    Secret,
    Target,
)

log = logging.getLogger("certbot_smtp_dist")

@dataclass(frozen=True, slots=True)
class RetryReport:
    results: tuple[DeliveryResult, ...]
    closed: tuple[tuple[str, str], ...]  # (entry id, why)
    busy: bool = False
    exit_status: int = report.EX_OK


@dataclass(frozen=True, slots=True)
class Preloaded:
    """What `retry` hands deploy.run when it re-runs a blocked deploy, having loaded them already, so nothing is
    read, checked or decrypted twice: the configuration, trusted and validated, and the state keys."""

    loaded: loader.Loaded
    keys: StateKeys


@dataclass(frozen=True, slots=True)
class _Planned:
    entry: sp.Entry
    job: pipeline.Job
    facts: CertificateFacts


def run(state_dir: Path, config: Path, include_failed: bool = False, now: datetime | None = None,
        include_uncertain: bool = False, command: tuple[str, ...] = (report.PROGRAM,)) -> RetryReport:
    """One drain at a time: a second `retry` finds the run lock taken and leaves at once.

    `config` is resolved exactly as `deploy` resolves it (--config, $CERTBOT_SMTP_DIST_CONFIG, the default): an
    entry never names a config file, so whoever could write an entry still cannot choose the relay or the payload.
    """
    from certbot_smtp_dist._internal.ownership import require_trusted_config, require_trusted_state
    from certbot_smtp_dist._internal.upgrade import upgrade

    require_trusted_state(state_dir)
    require_trusted_config(config)
    # Without the keys there is nothing to drain: CredentialError (78) or AccessError (77), reported once by the
    # caller (a deploy, by contrast, still delivers without its state).
    keys = state_keys(loader.credential_store(config), state_dir, create=True)
    run_lock = Lock(state_dir / "retry.lock")
    if not run_lock.acquire(blocking=False):
        log.info("another `certbot-smtp-dist retry` is running; nothing to do")
        return RetryReport((), (), busy=True)
    try:
        upgrade(state_dir, config, keys)
        return _Drain(state_dir, config, keys, include_failed, now or datetime.now(timezone.utc),
                      include_uncertain, command).run()
    finally:
        run_lock.release()


class _Drain:
    """List the entries, claim each (re-read under its lock), revalidate against today's config and files, deliver
    while holding the claims, save the outcomes, release. Blocked deploys run again afterwards, unclaimed."""

    def __init__(self, state_dir: Path, config: Path, keys: StateKeys, include_failed: bool, now: datetime,
                 include_uncertain: bool = False, command: tuple[str, ...] = (report.PROGRAM,)) -> None:
        self.state_dir = state_dir
        self.command = command
        self.config = config
        self.include_failed = include_failed
        self.include_uncertain = include_uncertain  # also re-send entries whose relay may already have them
        self.now = now
        self.ledger = Ledger(state_dir, "retry", keys, now, command=command)
        self.loaded: loader.Loaded | ConfigError | None = None
        self.blocked: list[sp.Entry] = []
        self.closed: list[tuple[str, str]] = []
        self.results: list[DeliveryResult] = []
        self.trouble = False
        self.started = time.monotonic()  # each entry's `timeout` counts from here, rendering included
        # Read and decrypted once per drain, not once per entry: the lineages and each target's secrets.
        self.artefacts: dict[LineageSource, Artefact | CertificateError] = {}
        self.secrets: dict[str, dict[str, Secret] | CredentialError] = {}

    def run(self) -> RetryReport:
        if self._config() is not None:
            self.ledger.config_fixed()
        candidates = []
        for item in self.ledger.spool.entries():
            if isinstance(item, sp.Rejected):
                log.error("spool entry %s rejected: %s (left in place, see `%s`)", item.path, item.problem,
                          report.next_command(self.command, "status"))
                self.trouble = True
            elif self._wanted(item):
                candidates.append(item)
        try:
            with ExitStack() as claims:
                planned = self._plan_all(candidates, claims)
                self.results.extend(self._deliver(planned))
            for entry in self.blocked:  # outside every claim: the deploy claims its own entry
                self._rerun(entry)
        except BaseException as exc:  # interrupted too (Ctrl-C, exit 130): what it saved is in the file, as deploy's
            self._refresh_metrics(unwinding=exc)
            raise
        self._refresh_metrics()
        status = report.exit_status(self.results)
        if status == report.EX_OK and (self.trouble or not self.ledger.healthy):
            status = report.EX_TEMPFAIL
        return RetryReport(tuple(self.results), tuple(self.closed), exit_status=status)

    def _refresh_metrics(self, unwinding: BaseException | None = None) -> None:
        """Rewrite `metrics_textfile` after what this drain recorded. `unwinding`: the exception ending the run
        (Ctrl-C): a failure here is logged, never raised in its place."""
        loaded = self._config()
        if loaded is None:
            return
        from certbot_smtp_dist._internal.textfile import refresh

        try:
            refresh(self.state_dir, self.ledger.keys, loaded.settings)
        except Exception as exc:
            if unwinding is None:
                raise
            log.error("metrics file not refreshed after the run ended by %s: %s", type(unwinding).__name__,
                      type(exc).__name__)

    def _wanted(self, item: sp.Entry) -> bool:
        if item.state == sp.UNCERTAIN:  # re-sent once by itself, then only when asked (RFC 1047)
            return item.resend_due or self.include_uncertain
        return item.state == sp.PENDING or self.include_failed

    def _plan_all(self, candidates: list[sp.Entry], claims: ExitStack) -> list[_Planned]:
        """Claim each listed entry; what another process closed or holds meanwhile is left alone."""
        planned = []
        for item in candidates:
            entry = claims.enter_context(self.ledger.claim(item.id))
            if entry is not None and self._wanted(entry):
                plan = self._plan(entry)
                if plan is not None:
                    planned.append(plan)
        return planned

    def _plan(self, entry: sp.Entry) -> _Planned | None:
        """A delivery for a claimed entry, or None once the entry was closed, failed or set aside."""
        max_age = self._policy().max_age
        if self.now - datetime.fromisoformat(entry.created) > max_age:
            days = f"{max_age / timedelta(days=1):g}"
            log.error("target %s: gave up on %s after %d attempt(s) over %s days", entry.target,
                      entry.certificate, entry.attempts, days)
            return self._close(entry, "expired", f"undeliverable for more than {days} days (retry_max_age)")
        source = entry.lineage_source()
        if source is None:
            return self._fail(entry, "the entry records no certificate files to send")
        if entry.kind == sp.BLOCKED:
            self.blocked.append(entry)
            return None
        loaded = self._config()
        if loaded is None:
            return self._fail(entry, f"configuration {self.config} is unusable (see the error above)")
        target = loaded.settings.target(entry.target)
        if target is None:
            return self._close(entry, "target_removed", f"target {entry.target} is no longer in {self.config}")
        if entry.envelope_to:  # only those the target still names: one removed since may not get the key now
            wanted = {addr.lower() for addr in target.envelope_recipients}
            still = tuple(addr for addr in entry.envelope_to if addr.lower() in wanted)
            if not still:
                return self._close(entry, "recipients_removed", f"none of its {len(entry.envelope_to)} recipient(s) "
                                                                f"is a recipient of target {entry.target} any more")
            entry = replace(entry, envelope_to=still)
        if entry.state == sp.UNCERTAIN and not (self.include_uncertain or target.resend_uncertain):
            log.warning("target %s: %s may already be delivered and resend_uncertain = false: it waits for "
                        "`retry --include-uncertain` or `dismiss`", entry.target, entry.message_id)
            self.ledger.spool.write(sp.touched(entry, datetime.now(timezone.utc), resend_due=False))
            return None
        artefact = self._artefact(source)
        if isinstance(artefact, CertificateError):
            return self._fail(entry, f"certificate files unusable: {'; '.join(artefact.problems)}", "SMTP_PAYLOAD")
        if artefact.facts.sha256_fingerprint != entry.fingerprint:
            if sp.newer_than(entry, artefact.facts):
                # Files put back by hand, or another lineage at the same path: what it holds now is older, so it
                # does not stand in for this entry's certificate, which is no longer there to send.
                return self._fail(entry, f"the lineage now holds an older certificate (serial "
                                         f"{artefact.facts.serial_hex}) than this entry's (serial {entry.serial}); "
                                         "put the newer files back", "SMTP_PAYLOAD")
            return self._close(entry, "superseded",
                               f"the lineage now holds a newer certificate (serial {artefact.facts.serial_hex})",
                               artefact.facts)
        secrets = self._secrets(loaded, target)
        if isinstance(secrets, CredentialError):
            return self._fail(entry, str(secrets))
        from certbot_smtp_dist._internal.plugins import message_hook

        job = pipeline.prepare_job(target, artefact, loaded.formats, secrets, datetime.fromisoformat(entry.date),
                                   entry.message_id, entry.envelope_to or None, message_hook(loaded.plugins),
                                   started=self.started)
        if job.skipped:
            return self._close(entry, "skipped", "the target's filter no longer matches", artefact.facts)
        if job.message is None:
            return self._fail(entry, job.failure.detail if job.failure else "the payload cannot be built",
                              "SMTP_PAYLOAD")
        if entry.message_id is None:  # a payload that failed before: it gets its Message-ID now
            entry = replace(entry, message_id=job.message.message_id, envelope_to=job.message.envelope_to)
            self.ledger.spool.write(entry)
        return _Planned(entry, job, artefact.facts)

    def _artefact(self, source: LineageSource) -> Artefact | CertificateError:
        if source not in self.artefacts:
            try:
                self.artefacts[source] = lineage.load(source, self.now)
            except CertificateError as exc:
                self.artefacts[source] = exc
            except UnsafePathError as exc:  # reached through a link another user can re-point: never read
                self.artefacts[source] = CertificateError([exc.refusal])
        return self.artefacts[source]

    def _secrets(self, loaded: loader.Loaded, target: Target) -> dict[str, Secret] | CredentialError:
        if target.name not in self.secrets:
            try:
                self.secrets[target.name] = loader.unlock(loaded.store, [target], loaded.formats)
            except CredentialError as exc:
                self.secrets[target.name] = exc
        return self.secrets[target.name]

    def _deliver(self, planned: list[_Planned]) -> list[DeliveryResult]:
        """The event loop only delivers; each outcome is saved afterwards, its entry still claimed."""
        if not planned:
            return []
        from certbot_smtp_dist._internal.plugins import notify_all

        with runloop.HeldOff():  # from the end of the deliveries' event loop (which takes it over) to the save's
            try:
                deliveries = pipeline.deliver_all([p.job for p in planned], self._policy(), started=self.started,
                                                  tokens=self.ledger.token_cache())
            except pipeline.Interrupted as stop:  # Ctrl-C: what was delivered before it is saved, not sent again
                self._save([(planned[i], delivery) for i, delivery in stop.finished.items()])
                raise
            self._save(list(zip(planned, deliveries, strict=True)))
        for delivery in deliveries:
            log.log(logging.INFO if delivery.result.ok else logging.ERROR, "retry %s",
                    report.human_line(delivery.result))
        loaded = self._config()
        for plan, delivery in zip(planned, deliveries, strict=True):
            if loaded is not None:
                notify_all(loaded.plugins, plan.facts, [delivery.result])
        return [d.result for d in deliveries]

    def _save(self, outcomes: list[tuple[_Planned, pipeline.Delivery]]) -> None:
        """Each outcome, its entry still claimed: one journal append (one fsync) a certificate. A Ctrl-C waits for
        the last (runloop.HeldOff): after the first, the others' entries stayed pending, sent again."""
        with runloop.HeldOff():
            for facts in dict.fromkeys(plan.facts for plan, _ in outcomes):
                self.ledger.save_all(facts, [(delivery, plan.entry) for plan, delivery in outcomes
                                             if plan.facts == facts])

    def _rerun(self, entry: sp.Entry) -> None:
        """A blocked deploy: run it again whole, unclaimed. The deploy closes the entry once it got past config,
        certificate and credentials and wrote its deliveries ahead (or made them), or updates it with the new reason."""
        from certbot_smtp_dist._internal import deploy

        source = entry.lineage_source()
        assert source is not None  # checked when planned
        loaded = self._config()  # an unusable configuration is loaded again by the deploy, which records why
        outcome = deploy.run(deploy.DeployRequest(config=self.config, source=source, state_dir=self.state_dir,
                                                  from_renewal=True, command=self.command, refresh_metrics=False),
                             self.now, Preloaded(loaded, self.ledger.keys) if loaded is not None else None)
        self.results.extend(outcome.results)
        if outcome.exit_status in (report.EX_CONFIG, report.EX_DATAERR, report.EX_NOPERM):
            log.error("the deploy of %s is still blocked (see the errors above)", entry.certificate)
            self.trouble = True
        else:
            self.closed.append((entry.id, "unblocked"))

    def _policy(self) -> RetryPolicy:
        """The configured policy; the default one while the configuration is unusable (entries still expire)."""
        loaded = self._config()
        return loaded.settings.retry if loaded is not None else RetryPolicy()

    def _config(self) -> loader.Loaded | None:
        if self.loaded is None:
            try:
                self.loaded = loader.load(self.config, trusted=True)  # checked by drain(), first thing
            except ConfigError as exc:
                log.error("%s", exc)
                self.loaded = exc
        return None if isinstance(self.loaded, ConfigError) else self.loaded

    def _close(self, entry: sp.Entry, event: str, why: str, facts: CertificateFacts | None = None) -> _Planned | None:
        self.ledger.close(entry, event, facts, why)
        self.closed.append((entry.id, event))
        return None

    def _fail(self, entry: sp.Entry, why: str, code: str | None = None) -> _Planned | None:
        self.ledger.fail(entry, why, code)
        self.trouble = True
        return None
