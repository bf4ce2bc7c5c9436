"""Deliver one artefact to every selected target concurrently: payload -> render -> session(s) -> result."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from certbot_smtp_dist._internal import payload as payload_formats
from certbot_smtp_dist._internal import render, runloop, scrub
from certbot_smtp_dist._internal.addresses import is_loopback_host
from certbot_smtp_dist.errors import ErrorCode, OutputError, PayloadError
from certbot_smtp_dist.model import (
    Artefact,
    CertificateFacts,
    DeliveryResult,
    Failure,
    Message,
    PayloadFormat,
    Phase,
    Reply,
    RetryPolicy,
    Secret,
    Status,
    Target,
    TlsMode,
)

if TYPE_CHECKING:  # transport (and smtpwire) is imported only when something is sent
    from certbot_smtp_dist._internal.tokencache import TokenCache
    from certbot_smtp_dist._internal.transport import SessionOutcome, TlsContexts

log = logging.getLogger("certbot_smtp_dist")
DEFAULT_POLICY = RetryPolicy()
NOT_IN_FILTER = "certificate not in this target's `certificates` filter"


@dataclass(frozen=True, slots=True)
class Job:
    """Everything one target's delivery needs; built up front so a bad target fails before anything is dialled."""

    target: Target
    message: Message | None
    password: Secret | None
    secrets: tuple[Secret, ...]
    failure: Failure | None = None  # set when the job cannot be attempted (payload)
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One SMTP session of a delivery, as the journal records it."""

    number: int
    accepted: int
    refused: int
    failure: Failure | None
    duration_s: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """What delivering one job came to: the result and every SMTP session, as values for the use case to save."""

    job: Job
    result: DeliveryResult
    attempts: tuple[Attempt, ...] = ()


def prepare_job(
    target: Target,
    artefact: Artefact,
    formats: Mapping[str, PayloadFormat],
    secrets: Mapping[str, Secret],
    now: datetime,
    message_id: str | None = None,
    envelope_to: tuple[str, ...] | None = None,
    message_hook: Callable[[Target, CertificateFacts, Message], Message] | None = None,
    started: float | None = None,
    parts: render.PartCache | None = None,
) -> Job:
    """Payload + render + the message hooks (plugins.message_hook: S/MIME, extensions) for one target, or the
    reason it cannot be built. Pure but for what the hooks do (S/MIME reads the signer key). `started`: the run's
    start (time.monotonic()), from which the target's `timeout` counts: the hooks get only what is left of it
    (budget.py). `parts`: the run's attachment parts, shared by its targets (render.attachment_part)."""
    # With OAuth 2.0 the session's secret is the grant's (client secret or key), which transport.py trades for a token.
    login = target.oauth2.credential if target.oauth2 is not None else target.password_credential
    password = secrets.get(login) if login else None
    passphrase = secrets.get(target.payload_credential) if target.payload_credential else None
    # Scrub every secret of the run from this target's relay text, not just its own: defence in depth.
    known = tuple(secrets.values())
    if not target.matches(artefact.facts.names):
        return Job(target, None, None, known, skipped=True)
    fmt = formats[target.payload]
    try:
        payload = payload_formats.build(fmt, artefact, passphrase)
    except PayloadError as exc:
        return Job(target, None, None, known, failure=Failure(ErrorCode.SMTP_PAYLOAD, Phase.PAYLOAD, str(exc)))
    try:
        message = render.render(
            target, artefact.facts, payload, message_id or render.new_message_id(target.from_address), now,
            envelope_to, artefact.findings, parts,
        )
    except ValueError as exc:  # the email package refuses a header value: this target only, never the whole run
        return Job(target, None, None, known,
                   failure=Failure(ErrorCode.SMTP_PAYLOAD, Phase.PAYLOAD, f"cannot render the message: {exc}"))
    if message_hook is not None:
        from certbot_smtp_dist._internal import budget

        try:
            with budget.running(started):
                message = message_hook(target, artefact.facts, message)
        except PayloadError as exc:
            detail = scrub.Scrubber.of(known).text(str(exc)) if known else str(exc)
            return Job(target, None, None, known, failure=Failure(ErrorCode.SMTP_PAYLOAD, Phase.PAYLOAD, detail))
    return Job(target, message, password, known)


def warn_about(target: Target, fmt: PayloadFormat) -> None:
    """Loud, per-run warnings for the dangerous options a user opted into."""
    if fmt.key_in_clear and target.smime is not None and target.message_encrypted:
        log.warning("target %s: payload %s ships the PRIVATE KEY inside the email, encrypted (S/MIME) to %s: "
                    "whoever holds one of their private keys can read it", target.name, fmt.name,
                    ", ".join(f"{name} (SHA-256 {fp[:16]}...)" for name, fp in
                              zip(target.smime.recipient_names, target.smime.recipient_fingerprints, strict=True)))
    elif fmt.key_in_clear:
        log.warning("target %s: payload %s ships the PRIVATE KEY in clear text inside the email; "
                    "every SMTP hop and mailbox on the way can read it", target.name, fmt.name)
    if target.tls_mode is TlsMode.PLAINTEXT:
        where = "loopback" if is_loopback_host(target.host) else "the network"
        log.warning("target %s: tls_mode = plaintext: the certificate travels unencrypted over %s", target.name, where)
    elif target.tls_skip_verify:
        log.warning("target %s: tls_skip_verify = true: the relay's identity is NOT verified", target.name)


class RelaySlots:
    """At most `limit` SMTP sessions at once against one relay (host, port), across the targets of a run.

    Postfix lets one client hold 50 connections by default (smtpd_client_connection_count_limit) and hosted relays
    a handful; 500 targets must not open 500 at once. A session waits for a slot inside its target's deadline.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[tuple[str, int], asyncio.Semaphore] = {}

    def _of(self, target: Target) -> asyncio.Semaphore:
        key = (target.host.lower(), target.port)
        slot = self._held.get(key)
        if slot is None:  # made once per relay, not once per call as setdefault's argument was
            slot = self._held[key] = asyncio.Semaphore(self.limit)
        return slot

    async def take(self, target: Target, within: float) -> float | None:
        """Seconds waited for a slot, or None when none came free `within` seconds."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        slot = self._of(target)
        if not slot.locked():  # one is free: acquire() takes it without waiting, so no timer and no task for it
            await slot.acquire()
            return loop.time() - began
        try:
            await asyncio.wait_for(slot.acquire(), timeout=max(within, 0.001))
        except (asyncio.TimeoutError, TimeoutError):
            return None
        return loop.time() - began

    def give_back(self, target: Target) -> None:
        self._of(target).release()


_MIN_SESSION = 0.5  # seconds: less than this left after waiting for a slot cannot carry a session
_SLOW_SLOT = 0.1  # seconds: a wait for a slot this long is worth a log line


def _no_slot(target: Target, limit: int, waited: float) -> Failure:
    return Failure(ErrorCode.SMTP_TRANSIENT, Phase.CONNECT,
                   f"no free connection to {target.host}:{target.port} within {waited:.1f}s: {limit} other "
                   f"deliveries of this run held them (connections_per_relay = {limit})")


async def _session(job: Job, message: Message, budget: float, slots: RelaySlots, tls: TlsContexts,
                   tokens: TokenCache | None = None) -> SessionOutcome:
    """One SMTP session in a relay slot; the wait for the slot counts against the same budget."""
    from certbot_smtp_dist._internal import transport

    target = job.target
    waited = await slots.take(target, budget)
    # A slot that came only after a wait, too late to hold a session, is no slot (a budget that was short before
    # any wait is the session's own business: it fails at its deadline as it always did).
    if waited is not None and waited >= _SLOW_SLOT and budget - waited < _MIN_SESSION:
        slots.give_back(target)
        waited = None
    if waited is None:
        return transport.SessionOutcome(failure=_no_slot(target, slots.limit, budget))
    if waited >= _SLOW_SLOT:
        log.info("target %s: waited %.1fs for one of %d connections to %s:%d", target.name, waited, slots.limit,
                 target.host, target.port)
    try:
        return await transport.deliver(target, message, job.password, max(budget - waited, 0.01), job.secrets, tls,
                                       tokens)
    finally:
        slots.give_back(target)


async def deliver_job(job: Job, policy: RetryPolicy = DEFAULT_POLICY, started: float | None = None,
                      slots: RelaySlots | None = None, tls: TlsContexts | None = None,
                      tokens: TokenCache | None = None) -> Delivery:
    """Attempt delivery until success, a permanent failure, the attempt limit, or the deadline. No I/O but SMTP."""
    from certbot_smtp_dist._internal import transport

    slots = slots or RelaySlots(policy.connections_per_relay)
    tls = tls or transport.TlsContexts()

    target = job.target
    if job.skipped:
        return Delivery(job, DeliveryResult(target.name, Status.SKIPPED, reason=NOT_IN_FILTER))
    if job.message is None:
        return Delivery(job, DeliveryResult(target.name, Status.FAILED, failure=job.failure))
    loop = asyncio.get_running_loop()
    # The clock starts when the run started (payloads were built since), so everything this run did for the
    # target fits in its `timeout`. asyncio's loop clock is time.monotonic().
    started = loop.time() if started is None else started
    deadline = started + target.timeout
    if deadline - loop.time() < policy.min_budget / 10:
        return Delivery(job, _out_of_time(job.message, target, loop.time() - started))
    message = job.message
    accepted: list[str] = []
    refusals: dict[str, Reply] = {}  # the latest refusal of each recipient still owed the message
    outcome = None
    attempts = 0
    sessions: list[Attempt] = []
    try:
        while True:
            attempts += 1
            began = loop.time()
            outcome = await _session(job, message, max(deadline - loop.time(), 0.01), slots, tls, tokens)
            accepted.extend(outcome.accepted)
            refusals.update(outcome.refused)
            failure = outcome.failure
            sessions.append(Attempt(attempts, len(outcome.accepted), len(outcome.refused),
                                    _redact(failure, job.secrets, target.username) if failure else None,
                                    loop.time() - began))
            if failure is None or not failure.is_retryable or failure.maybe_delivered or attempts >= policy.attempts:
                break  # a maybe-delivered message is never sent again in this run: that is how duplicates multiply
            pause = policy.delay(attempts)
            if deadline - loop.time() - pause < policy.min_budget:
                break
            log.info("target %s: attempt %d failed (%s), retrying in %.1fs", target.name, attempts, failure.code.value,
                     pause)
            await asyncio.sleep(pause)
            # RFC 5321 §3.3: re-send only to those that have not taken it.
            message = replace(message, envelope_to=tuple(r for r in message.envelope_to if r not in accepted))
    except asyncio.CancelledError:  # Ctrl-C (runloop.py)
        if not accepted or outcome is None:
            raise
        attempts = len(sessions)  # an interrupted session is no attempt of the result
        # Some recipients took it before: a fact to save (PARTIAL, RFC 5321 §3.3), or `retry` sends it to them again.
    return Delivery(job, _result(job.message, target, outcome, accepted, refusals, attempts, job.secrets,
                                 loop.time() - started), tuple(sessions))


def _result(message: Message, target: Target, outcome: SessionOutcome, accepted: list[str],
            refusals: dict[str, Reply], attempts: int, secrets: tuple[Secret, ...], duration: float) -> DeliveryResult:
    """What the sessions of one delivery came to (the last one's failure, every recipient's), redacted."""
    failure = _redact(outcome.failure, secrets, target.username) if outcome.failure else None
    owed = [r for r in message.envelope_to if r not in accepted]
    refused = tuple((addr, _redact_reply(refusals[addr], secrets, target.username))
                    for addr in owed if addr in refusals)
    if failure is None:
        status = Status.DELIVERED
    elif failure.maybe_delivered:
        status = Status.UNCERTAIN
    elif accepted:
        status = Status.PARTIAL  # someone has it: a retry must not send it to them again
    else:
        status = Status.FAILED
    return DeliveryResult(target.name, status, failure, message.message_id, refused, duration, attempts,
                          recipients=len(message.envelope_to), accepted=tuple(accepted))


def _out_of_time(message: Message, target: Target, spent: float) -> DeliveryResult:
    failure = Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT,
                      f"no time left to connect: preparing this run took longer than timeout = {target.timeout:g}s")
    return DeliveryResult(target.name, Status.FAILED, failure, message.message_id, duration_s=spent,
                          recipients=len(message.envelope_to))


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C ended `deliver_all` (exit status 130). `finished`: the deliveries that ended before it, by the
    index of their job, for the use case to save: a target delivered before the Ctrl-C must not stay pending and be
    sent again by `retry`. The other jobs' write-ahead entries stay pending, as they were."""

    def __init__(self, finished: dict[int, Delivery]) -> None:
        super().__init__()
        self.finished = finished


def deliver_all(jobs: list[Job], policy: RetryPolicy = DEFAULT_POLICY, started: float | None = None,
                tokens: TokenCache | None = None) -> list[Delivery]:
    """Run every job concurrently; one target's failure or stall never delays another beyond its own deadline.
    The event loop only delivers: results and attempts come back as values, saved by the use case afterwards
    (the OAuth 2.0 token cache, `tokens`, is the one piece of state a session reads and writes).
    Raises Interrupted after a Ctrl-C, with what finished before it (a cancelled gather drops its results)."""
    finished: dict[int, Delivery] = {}

    async def run_one(index: int, job: Job, slots: RelaySlots, tls: TlsContexts) -> Delivery:
        try:
            delivery = await deliver_job(job, policy, started, slots, tls, tokens)
        except Exception as exc:  # a defect must not take the other targets down with it
            log.exception("target %s: internal error", job.target.name)
            delivery = Delivery(job, DeliveryResult(job.target.name, Status.FAILED,
                                                    Failure(ErrorCode.SMTP_TRANSIENT, Phase.CONNECT,
                                                            f"internal error: {type(exc).__name__}"),
                                                    job.message.message_id if job.message else None))
        finished[index] = delivery
        return delivery

    async def run_all() -> list[Delivery]:
        from certbot_smtp_dist._internal.transport import TlsContexts, settle_lost_connections

        settle_lost_connections(asyncio.get_running_loop())
        slots, tls = RelaySlots(policy.connections_per_relay), TlsContexts()  # shared by every target of the run
        return list(await asyncio.gather(*(run_one(i, j, slots, tls) for i, j in enumerate(jobs))))

    try:
        return runloop.run(run_all())
    except KeyboardInterrupt as exc:
        raise Interrupted(dict(finished)) from exc


def rendered_results(jobs: list[Job], output: Path | None) -> list[DeliveryResult]:
    """Dry run: report each buildable job as rendered and optionally write its .eml (0600).

    Raises OutputError (exit status 73 or 74, one line naming the path) when `output` cannot take the files.
    """
    results = []
    for job in jobs:
        if job.skipped:
            results.append(DeliveryResult(job.target.name, Status.SKIPPED, reason=NOT_IN_FILTER))
        elif job.message is None:
            results.append(DeliveryResult(job.target.name, Status.FAILED, job.failure))
        else:
            if output is not None:
                _write_eml(output, f"{job.target.name}.eml", job.message.data)
            results.append(DeliveryResult(job.target.name, Status.RENDERED, message_id=job.message.message_id,
                                          recipients=len(job.message.envelope_to)))
    return results


# Out of space or a failing device: the directory was fine, the write was not (sysexits EX_IOERR).
_IO_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})


def _write_eml(output: Path, name: str, data: bytes) -> None:
    """One rendered message (it may hold the private key) into the operator's --output directory, 0600. The
    directory is the operator's choice, but the links on the way to it are held to the rule every path root
    writes through obeys (ownership.require_steady_links, as files.write_public): another user's link in /tmp
    would let them choose where root writes the message (UnsafePathError, exit 77)."""
    from certbot_smtp_dist._internal import files, ownership, report

    ownership.require_steady_links(output.parent)  # before anything is made there; at `output`: ensure_private_dir
    step, where = "create directory", output
    try:
        files.ensure_private_dir(output, ours=False)  # the operator's choice (files.py)
        step, where = "write", output / name
        files.write_private(where, data)
    except OSError as exc:
        status = report.EX_IOERR if exc.errno in _IO_ERRNOS else report.EX_CANTCREAT
        raise OutputError(f"--output: cannot {step} {where}: {exc.strerror or exc}", status) from exc


def _redact(failure: Failure, secrets: tuple[Secret, ...], username: str | None) -> Failure:
    # Every spelling of every secret of the run (scrub.py). The username needs no special case any more: the
    # SASL blobs are found by the base64 of the secret alone, at whatever alignment it sits.
    return scrub.scrub_failure(failure, secrets)


def _redact_reply(r: Reply, secrets: tuple[Secret, ...], username: str | None) -> Reply:
    return scrub.scrub_reply(r, secrets)
