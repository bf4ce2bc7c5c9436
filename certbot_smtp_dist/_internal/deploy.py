"""The deploy use case both adapters call: ship one certificate to the configured targets, save, and report."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from certbot_smtp_dist._internal import loader, pipeline, report, runloop, startup
from certbot_smtp_dist._internal.spool import CONFIG_BLOCK
from certbot_smtp_dist.errors import (
    CertificateError,
    ConfigError,
    ConfigProblem,
    ErrorCode,
    UnsafePathError,
)
from certbot_smtp_dist.model import (
    Artefact,
    CertificateFacts,
    DeliveryResult,
    Failure,
    Finding,
    LineageSource,
    Phase,
    RetryPolicy,
    Secret,
    Status,
    Target,
    failure_json,
)

if TYPE_CHECKING:  # Preloaded: made by `retry` only, so its class is defined there (a dataclass costs start-up)
    from certbot_smtp_dist._internal.drain import Preloaded
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.state import StateKeys

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
    from_renewal: bool = False  # run by an ACME client's renewal (hook, plugin, retry), not typed on a terminal
    command: tuple[str, ...] = (report.PROGRAM,)  # how to call us again, in the commands we suggest
    force: bool = False  # `deploy --force`: send to quiet targets (min_interval) too
    refresh_metrics: bool = True  # rewrite `metrics_textfile` afterwards (a caller that refreshes it itself: False)


@dataclass(frozen=True, slots=True)
class DeployReport:
    facts: CertificateFacts | None
    results: tuple[DeliveryResult, ...] = ()
    config_errors: tuple[ConfigProblem, ...] = ()
    certificate_problems: tuple[str, ...] = ()
    exit_status: int = report.EX_OK
    findings: tuple[Finding, ...] = ()  # the artefact's Diagnostics (diagnose.py), as in every email's body
    state_ok: bool = True  # journal and spool written; False: failures of this run will not be retried


def run(request: DeployRequest, now: datetime | None = None, preloaded: Preloaded | None = None) -> DeployReport:
    """Validate config and artefact, then deliver (or render). Raises only UsageError and UnsafePathError
    (a config, credentials or state path someone else could write: nothing is read there, nothing dialled); certificate
    files reached through a link another user can re-point are reported as unusable ones are, with exit 77."""
    now = now or datetime.now(timezone.utc)
    ledger, state_ok = _open_state(request, now, preloaded.keys if preloaded else None)
    try:
        loaded = preloaded.loaded if preloaded else loader.load(request.config, request.environ, trusted=True)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config %s: %s", request.config, problem)
        if ledger:
            ledger.record("config_error", None, None, detail=str(exc))
            ledger.block(f"configuration unusable: {exc}", CONFIG_BLOCK)
        return DeployReport(None, config_errors=exc.problems, exit_status=report.EX_CONFIG,
                            state_ok=ledger.healthy if ledger else state_ok)
    if ledger:
        ledger.config_fixed()
    targets = loader.select(loaded.settings, request.targets)
    if not request.dry_run:  # the system trust store loads on a thread while the certificate is read and checked
        from certbot_smtp_dist._internal.transport import TlsContexts

        TlsContexts.prefetch(targets)
    started = time.monotonic()  # every target's `timeout` counts from here: reading the files and payloads included
    try:
        artefact = _read_certificate(request.source, now)
    except (CertificateError, UnsafePathError) as exc:
        unusable = _unusable_certificate(exc, targets, ledger, state_ok)
        _refresh_metrics(request, ledger, loaded)
        return unusable
    wanted = [t for t in targets if t.matches(artefact.facts.names)]
    try:
        # A dry run decrypts every secret the real run would use (and so checks the master key and the modes
        # and owners of the files): only dialling is skipped.
        secrets = loader.unlock(loaded.store, wanted, loaded.formats)
    except loader.Locked as exc:
        for problem in exc.problems:
            log.error("config %s: %s", request.config, problem)
        if ledger:
            ledger.block(f"credentials unusable: {exc}", None, artefact.facts)
        _refresh_metrics(request, ledger, loaded)
        return DeployReport(artefact.facts, config_errors=tuple(exc.problems), exit_status=report.EX_CONFIG,
                            state_ok=ledger.healthy if ledger else state_ok, findings=artefact.findings)
    startup.resume()  # the modules are loaded: collect the deliveries' garbage as always (a paused cold start)
    with ledger.holding_blocked() if ledger else nullcontext():  # a `retry` meanwhile must not run it again
        try:
            held = _held_back(request, ledger, wanted, artefact.facts, now)
            results = _ship(request, loaded, artefact, targets, wanted, secrets, ledger, now, started, held)
        except BaseException as exc:  # interrupted too (Ctrl-C, exit 130)
            _unwinding(request, ledger, loaded, artefact.facts, exc)
            raise
        if ledger:  # after the entries written ahead (a Ctrl-C before them must not leave nothing at all)
            ledger.unblock()
    _refresh_metrics(request, ledger, loaded)
    for result in results:
        (log.info if result.ok else log.error)("%s", report.human_line(result), extra=report.log_fields(result))
    return DeployReport(artefact.facts, tuple(results), exit_status=report.exit_status(results),
                        state_ok=ledger.healthy if ledger else state_ok, findings=artefact.findings)


def _unwinding(request: DeployRequest, ledger: Ledger | None, loaded: loader.Loaded, facts: CertificateFacts,
               exc: BaseException) -> None:
    """The shipping ended by `exc`. Interrupted after the write-ahead (in the deliveries, or while they were saved):
    its entries, spooled, stand for a renewal's blocked entry (`retry` sends them); before it, a renewal's blocked
    entry says so, or nothing would."""
    if ledger and ledger.written_ahead:
        ledger.unblock()
    elif ledger and isinstance(exc, KeyboardInterrupt):
        ledger.block("interrupted (Ctrl-C) before its deliveries were spooled; nothing was sent", None, facts)
    _refresh_metrics(request, ledger, loaded, unwinding=exc)


def _refresh_metrics(request: DeployRequest, ledger: Ledger | None, loaded: loader.Loaded,
                     unwinding: BaseException | None = None) -> None:
    """Rewrite `metrics_textfile` after whatever this run recorded (deliveries, or a certificate or credentials it
    could not use), with the settings and keys it loaded and checked already: nothing is read again. `unwinding`:
    the exception ending the run (Ctrl-C): a failure here is logged, never raised in its place."""
    if ledger and request.refresh_metrics and loaded.settings.metrics_textfile is not None:
        from certbot_smtp_dist._internal.textfile import refresh

        try:
            refresh(ledger.state_dir, ledger.keys, loaded.settings)
        except Exception as exc:
            if unwinding is None:
                raise
            log.error("metrics file not refreshed after the run ended by %s: %s", type(unwinding).__name__,
                      type(exc).__name__)


def _open_state(request: DeployRequest, now: datetime, keys: StateKeys | None) -> tuple[Ledger | None, bool]:
    """Trust checks first (nothing read or dialled otherwise), then the keyed state, upgraded from 0.1.0 if needed.
    (None, True): no state wanted; (None, False): wanted but unusable (logged). `keys`: the caller's, who checked
    the config, opened and upgraded the state already."""
    from certbot_smtp_dist._internal.ledger import Ledger
    from certbot_smtp_dist._internal.ownership import require_trusted_config, require_trusted_state
    from certbot_smtp_dist._internal.upgrade import upgrade

    if keys is None:
        require_trusted_config(request.config)
    if request.state_dir is None or request.dry_run:
        return None, True
    if keys is None:
        require_trusted_state(request.state_dir)
        keys = loader.open_state_keys(request.config, request.environ, request.state_dir)
        if keys is None:
            return None, False
        upgrade(request.state_dir, request.config, keys)
    return Ledger(request.state_dir, "deploy", keys, now, request.source, request.from_renewal,
                  request.command), True


def _ship(request: DeployRequest, loaded: loader.Loaded, artefact: Artefact, targets: tuple[Target, ...],
          wanted: list[Target], secrets: Mapping[str, Secret], ledger: Ledger | None,
          now: datetime, started: float, held: Mapping[str, str]) -> list[DeliveryResult]:
    from certbot_smtp_dist._internal import render
    from certbot_smtp_dist._internal.plugins import message_hook

    if ledger is not None and not wanted:  # journalled, or `status` could not tell this run from none at all
        ledger.no_target(artefact.facts, [t.name for t in targets])
    transform, jobs = message_hook(loaded.plugins), []
    parts = render.PartCache()  # what this run's messages share (attachment parts...), made once for all
    chosen = {t.name for t in wanted}  # names are unique: by name, not `in wanted` (n² dataclass compares)
    for target in targets:
        if target.name in held:
            continue
        if target.name in chosen:
            pipeline.warn_about(target, loaded.formats[target.payload])
        jobs.append(pipeline.prepare_job(target, artefact, loaded.formats, secrets, now, message_hook=transform,
                                         started=started, parts=parts))
        _log_prepared(jobs[-1])
    if request.dry_run:
        return pipeline.rendered_results(jobs, request.output)
    from certbot_smtp_dist._internal.plugins import notify_all

    sent = iter(_deliver(jobs, artefact.facts, request.source, ledger, loaded.settings.retry, started))
    results = [DeliveryResult(t.name, Status.SKIPPED, reason=held[t.name]) if t.name in held else next(sent)
               for t in targets]
    notify_all(loaded.plugins, artefact.facts, results)
    return results


def _held_back(request: DeployRequest, ledger: Ledger | None, wanted: list[Target], facts: CertificateFacts,
               now: datetime) -> dict[str, str]:
    """Quiet targets whose `min_interval` holds this renewal back, with the reason (journalled). Decided from the
    keyed journal only; without a trustworthy one (no state, a journal failing verification) everything is sent."""
    names = [t.name for t in wanted if t.min_interval is not None]
    if not names or ledger is None:
        return {}
    from certbot_smtp_dist._internal import quiet

    if request.force:
        log.info("--force: min_interval not applied to %s", ", ".join(names))
        return {}
    last = quiet.last_deliveries(ledger.journal, facts.name, names)
    if last is None:
        return {}
    held: dict[str, str] = {}
    for target in wanted:
        why = quiet.hold_back(target, facts, last.get(target.name), now)
        if why is not None:
            held[target.name] = why
            ledger.held_back(facts, target.name, why)
    ledger.supersede_older(set(held), facts, held_back=True)
    return held


def _read_certificate(source: LineageSource, now: datetime) -> Artefact:
    from certbot_smtp_dist._internal import lineage

    log.debug("reading the certificate from %s", source.lineage_dir or source.fullchain or source.cert)
    artefact = lineage.load(source, now)
    log.debug("certificate %s: serial %s, expires %s", artefact.facts.name, artefact.facts.serial_hex,
              artefact.facts.not_after.isoformat())
    return artefact


def _log_prepared(job: pipeline.Job) -> None:
    """-v: the payload built and the message rendered for one target (never its content)."""
    if job.message is not None:
        log.debug("target %s: payload %s built, message rendered: %d bytes, %d recipient(s), Message-ID %s",
                  job.target.name, job.target.payload, len(job.message.data), len(job.message.envelope_to),
                  job.message.message_id, extra={"target": job.target.name, "phase": "payload",
                                                 "message_id": job.message.message_id})


def _unusable_certificate(exc: CertificateError | UnsafePathError, targets: tuple[Target, ...],
                          ledger: Ledger | None, state_ok: bool) -> DeployReport:
    """Every selected target fails with SMTP_PAYLOAD; nothing is dialled. Files reached through a path not safe to
    trust (lineage.require_steady) exit 77, as every such path does; the journal and a renewal's blocked entry are
    those of any unusable files, so `status` alerts and `retry --include-failed` runs the deploy again."""
    unsafe = isinstance(exc, UnsafePathError)
    problems = exc.problems if isinstance(exc, CertificateError) else (exc.refusal,)
    log.error("certificate files unusable: %s; nothing was sent", "; ".join(problems))
    failure = Failure(ErrorCode.SMTP_PAYLOAD, Phase.PAYLOAD, "; ".join(problems))
    if ledger is not None:
        for t in targets:
            ledger.record("attempt", None, t.name, outcome="failed", attempt=0, **failure_json(failure))
        ledger.block(f"certificate files unusable: {failure.detail}", failure.code.value)
    failed = tuple(DeliveryResult(t.name, Status.FAILED, failure) for t in targets)
    return DeployReport(None, failed, certificate_problems=problems,
                        exit_status=report.EX_NOPERM if unsafe else report.EX_DATAERR,
                        state_ok=ledger.healthy if ledger else state_ok)


def _deliver(jobs: list[pipeline.Job], facts: CertificateFacts, source: LineageSource,
             ledger: Ledger | None, policy: RetryPolicy, started: float) -> list[DeliveryResult]:
    """Write ahead (each entry claimed before the first connection), deliver, then save each outcome while the
    entry is still claimed; the event loop itself touches no state."""
    if ledger is None:
        return [d.result for d in pipeline.deliver_all(jobs, policy, started=started)]
    with ExitStack() as saving:  # from the end of the deliveries to the end of the supersede step: a Ctrl-C waits
        try:
            with ledger.write_ahead_all(facts, source, jobs) as entries:
                saving.enter_context(runloop.HeldOff())  # the deliveries' event loop takes it over while it runs
                try:
                    deliveries = pipeline.deliver_all(jobs, policy, started=started, tokens=ledger.token_cache())
                except pipeline.Interrupted as stop:  # Ctrl-C: what was delivered before it is saved, not sent again
                    ledger.save_all(facts, [(d, entries[i]) for i, d in stop.finished.items()])
                    raise
                ledger.save_all(facts, list(zip(deliveries, entries, strict=True)))
        except pipeline.Interrupted as stop:
            _supersede(ledger, facts, list(stop.finished.values()))
            raise
        _supersede(ledger, facts, deliveries)
    return [d.result for d in deliveries]


def _supersede(ledger: Ledger, facts: CertificateFacts, deliveries: list[pipeline.Delivery]) -> None:
    """Once this run's entries are released: what they delivered closes the older entries for those targets."""
    ledger.supersede_older({d.result.target for d in deliveries if d.result.status is Status.DELIVERED}, facts)
