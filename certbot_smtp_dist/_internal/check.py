"""The check use case: for each selected target, a session that sends no mail, and the verdict on it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certbot_smtp_dist._internal import loader, report, runloop, scrub
from certbot_smtp_dist._internal.addresses import is_loopback_host
from certbot_smtp_dist._internal.probe import Ehlo, Probe, size_number
from certbot_smtp_dist._internal.relaycert import EXPIRY_WARNING_DAYS, RelayCertificate
from certbot_smtp_dist.errors import ConfigError, ConfigProblem, ErrorCode
from certbot_smtp_dist.model import (
    Artefact,
    AuthMethod,
    Failure,
    LineageSource,
    Phase,
    Secret,
    Target,
    TlsMode,
    failure_json,
)

if TYPE_CHECKING:  # transport (and smtpwire) is imported only when something is dialled
    from certbot_smtp_dist._internal.anchors import Store
    from certbot_smtp_dist._internal.loader import Loaded
    from certbot_smtp_dist._internal.pipeline import RelaySlots
    from certbot_smtp_dist._internal.transport import TlsContexts

log = logging.getLogger("certbot_smtp_dist")
SCHEMA = 1
# The EHLO extensions a delivery may care about (RFC 1870, 4954, 2920, 6152, 6531, 8689, 2034, 3207).
REPORTED = ("size", "auth", "pipelining", "8bitmime", "smtputf8", "requiretls", "enhancedstatuscodes", "starttls")


@dataclass(frozen=True, slots=True)
class CheckRequest:
    config: Path
    targets: tuple[str, ...] = ()
    authenticate: bool = True  # False: `--no-auth`, no AUTH attempt
    source: LineageSource | None = None  # `--lineage`: render the next email to compare with SIZE
    environ: Mapping[str, str] | None = None
    names: tuple[str, ...] = ()  # only targets whose `certificates` filter wants one of these names (the plugin)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """What checking one target found; every relay-controlled string in it is printable and scrubbed."""

    target: str
    host: str
    port: int
    tls_mode: TlsMode
    helo_name: str | None
    failure: Failure | None
    tls_version: str | None
    cipher: str | None
    certificate: RelayCertificate | None
    before_tls: Ehlo | None
    after_tls: Ehlo | None
    auth: str  # accepted, refused, skipped (--no-auth), not_configured, not_reached
    message_size: int | None
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    duration_s: float

    @property
    def verdict(self) -> str:
        return "failed" if self.failure is not None else "warning" if self.warnings else "ok"

    def summary(self) -> str:
        """The verdict in one line: `NAME: OK`, `NAME: OK with N warning(s)`, `NAME: FAILED CODE in PHASE ...`."""
        f = self.failure
        if f is not None:
            klass = "retryable" if f.is_retryable else "not retryable"
            problems = "".join(f"; {p}" for p in (self.certificate.problems if self.certificate else ()))
            return f"{self.target}: FAILED {f.code.value} in {f.phase.value} ({klass}): {f.detail}{problems}"
        if self.warnings:
            return f"{self.target}: OK with {len(self.warnings)} warning(s)"
        return f"{self.target}: OK"

    @property
    def ehlo(self) -> Ehlo | None:
        """The EHLO a delivery's AUTH and MAIL would follow: after TLS, or the only one in plaintext."""
        return self.after_tls if self.tls_mode is not TlsMode.PLAINTEXT else self.before_tls


@dataclass(frozen=True, slots=True)
class CheckReport:
    checks: tuple[TargetCheck, ...]
    checked_at: datetime
    config_errors: tuple[ConfigProblem, ...] = ()
    exit_status: int = report.EX_OK


def run(request: CheckRequest, now: datetime | None = None) -> CheckReport:
    """Check the selected targets concurrently, each within its own `timeout`. Raises UsageError (unknown target),
    UnsafePathError, CertificateError (an unusable `--lineage`)."""
    now = now or datetime.now(timezone.utc)
    try:
        loaded = loader.load(request.config, request.environ)
    except ConfigError as exc:
        return CheckReport((), now, exc.problems, report.EX_CONFIG)
    targets = tuple(t for t in loader.select(loaded.settings, request.targets)
                    if not request.names or t.matches(request.names))
    try:
        secrets = loader.unlock(loaded.store, list(targets), loaded.formats)
    except loader.Locked as exc:
        return CheckReport((), now, tuple(exc.problems), report.EX_CONFIG)
    sizes = _message_sizes(request.source, targets, loaded, secrets, now)
    probes = runloop.run(_probe_all(targets, secrets, request.authenticate,
                                    loaded.settings.retry.connections_per_relay))
    scrubber = scrub.Scrubber.of(secrets.values())
    checks = tuple(_verdict(t, p, c, d, sizes.get(t.name), request, scrubber, now)
                   for t, (p, c, d) in zip(targets, probes, strict=True))
    return CheckReport(checks, now, exit_status=exit_status(checks))


def exit_status(checks: tuple[TargetCheck, ...]) -> int:
    """As deploy's: 0 without failures (warnings included), 75 when every failure is retryable, else 69."""
    failures = [c.failure for c in checks if c.failure is not None]
    if not failures:
        return report.EX_OK
    return report.EX_TEMPFAIL if all(f.is_retryable for f in failures) else report.EX_UNAVAILABLE


def _message_sizes(source: LineageSource | None, targets: tuple[Target, ...], loaded: Loaded,
                   secrets: Mapping[str, Secret], now: datetime) -> dict[str, int | str]:
    """Each target's next email rendered by the delivery code, message hooks (S/MIME) included, as its size on the
    wire (RFC 1870 §4: octets with CRLF line ends), or why it has none."""
    if source is None:
        return {}
    from certbot_smtp_dist._internal import lineage, pipeline
    from certbot_smtp_dist._internal.plugins import message_hook
    from certbot_smtp_dist._internal.transport import data_lines

    artefact: Artefact = lineage.load(source, now)
    transform = message_hook(loaded.plugins)
    sizes: dict[str, int | str] = {}
    for target in targets:
        job = pipeline.prepare_job(target, artefact, loaded.formats, secrets, now, message_hook=transform)
        if job.skipped:
            sizes[target.name] = f"{artefact.facts.name} is not in this target's `certificates` filter"
        elif job.message is None:
            sizes[target.name] = f"the message cannot be built: {job.failure.detail if job.failure else '?'}"
        else:
            sizes[target.name] = len(data_lines(job.message.data)) - len(b".\r\n")
    return sizes


async def _probe_all(targets: tuple[Target, ...], secrets: Mapping[str, Secret], authenticate: bool,
                     per_relay: int) -> list[tuple[Probe, RelayCertificate | None, float]]:
    from certbot_smtp_dist._internal.pipeline import RelaySlots
    from certbot_smtp_dist._internal.transport import TlsContexts, settle_lost_connections

    settle_lost_connections(asyncio.get_running_loop())
    slots, tls = RelaySlots(per_relay), TlsContexts()
    return list(await asyncio.gather(*(_probe_one(t, secrets, authenticate, slots, tls) for t in targets)))


async def _probe_one(target: Target, secrets: Mapping[str, Secret], authenticate: bool, slots: RelaySlots,
                     tls: TlsContexts) -> tuple[Probe, RelayCertificate | None, float]:
    """The probe as delivery would run it; when its TLS handshake failed where the relay does speak TLS, a second,
    unverified handshake (nothing sent after it) only to read the certificate and say why it was refused."""
    from certbot_smtp_dist._internal import relaycert, transport

    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + target.timeout
    login = target.oauth2.credential if target.oauth2 is not None else target.password_credential
    password = secrets.get(login) if login and authenticate else None
    known = tuple(secrets.values())
    waited = await slots.take(target, target.timeout)
    if waited is None:
        failure = Failure(ErrorCode.SMTP_TRANSIENT, Phase.CONNECT, "no free connection to the relay in time")
        return Probe(None, None, None, None, False, False, failure), None, loop.time() - started
    try:
        probe = await transport.probe(target, password, deadline - loop.time(), known, tls, None, authenticate)
        encryption = probe.encryption
        if _worth_a_look(target, probe) and deadline - loop.time() > _MIN_LOOK:
            unverified = replace(target, tls_skip_verify=True)  # same dial and STARTTLS; never a plaintext session
            second = await transport.probe(unverified, None, deadline - loop.time(), known, tls, None,
                                           authenticate=False, until_tls=True)
            encryption = second.encryption
    finally:
        slots.give_back(target)
    cert = None
    if encryption is not None and encryption.certificate is not None:
        verified = probe.encryption is not None and not target.tls_skip_verify
        leaf, chain = encryption.certificate, encryption.chain

        def diagnose() -> RelayCertificate | None:
            stores = () if verified else _anchor_stores(target)
            code = probe.failure.verify_code if probe.failure is not None else None  # OpenSSL's reason
            return relaycert.diagnose(leaf, chain, stores, target.host, verified, datetime.now(timezone.utc), code)

        # Looking issuers up in the trust store and checking signatures takes milliseconds per refused handshake:
        # in a worker thread, so hundreds of failing targets do not stall the other probes' I/O (CPU and local
        # files only, it never hangs).
        cert = await asyncio.to_thread(diagnose)
    return probe, cert, loop.time() - started


def _anchor_stores(target: Target) -> tuple[Store, ...]:
    """Where the verified handshake found its anchors: the system store (OpenSSL's hashed directories and bundle,
    SSL_CERT_DIR / SSL_CERT_FILE honoured as OpenSSL reads them), then `tls_ca_file`. Not
    SSLContext.get_ca_certs(): it lists only CA certificates (not a pinned self-signed relay certificate), and of a
    hashed directory only those OpenSSL has looked up so far."""
    from certbot_smtp_dist._internal import anchors

    system = anchors.system_store(thorough=True)
    if target.tls_ca_file is None:
        return (system,)
    return system, anchors.Store(f"tls_ca_file {target.tls_ca_file}", cafile=target.tls_ca_file)


_MIN_LOOK = 0.2  # seconds: less than this left is no time for a second handshake


def _worth_a_look(target: Target, probe: Probe) -> bool:
    """A refused handshake (SMTP_TLS, no TLS session) against a relay that offered TLS: smtps, or STARTTLS seen."""
    if probe.failure is None or probe.failure.code is not ErrorCode.SMTP_TLS or probe.encryption is not None:
        return False
    if target.tls_mode is TlsMode.PLAINTEXT or target.tls_skip_verify:
        return False
    return target.tls_mode is TlsMode.SMTPS or (probe.before_tls is not None and probe.before_tls.has("starttls"))


def _verdict(target: Target, probe: Probe, cert: RelayCertificate | None, duration: float, size: int | str | None,
             request: CheckRequest, scrubber: scrub.Scrubber, now: datetime) -> TargetCheck:
    failure = probe.failure
    if failure is not None:
        failure = replace(failure, detail=scrubber.text(failure.detail))
    enc = probe.encryption
    check = TargetCheck(
        target=target.name, host=target.host, port=target.port, tls_mode=target.tls_mode,
        helo_name=probe.helo_name or target.helo_name, failure=failure,
        tls_version=enc.version if enc else None, cipher=enc.cipher if enc else None,
        certificate=_scrubbed_cert(cert, scrubber), before_tls=_scrubbed_ehlo(probe.before_tls, scrubber),
        after_tls=_scrubbed_ehlo(probe.after_tls, scrubber), auth=_auth(target, probe, request.authenticate),
        message_size=size if isinstance(size, int) else None, warnings=(), notes=(), duration_s=duration)
    warnings, notes = _warnings(target, check, size, now)
    notes += [n for n in dict.fromkeys((_omitted(probe.before_tls), _omitted(probe.after_tls))) if n is not None]
    return replace(check, warnings=tuple(warnings), notes=tuple(notes))


def _auth(target: Target, probe: Probe, authenticate: bool) -> str:
    if target.auth_method is AuthMethod.NONE:
        return "not_configured"
    if not authenticate:
        return "skipped"
    if probe.authenticated:
        return "accepted"
    failure = probe.failure
    return "refused" if failure is not None and failure.code is ErrorCode.SMTP_AUTH else "not_reached"


def _warnings(target: Target, check: TargetCheck, size: int | str | None, now: datetime) -> tuple[list[str], list[str]]:
    warnings: list[str] = []
    notes: list[str] = []
    if check.failure is not None and check.failure.phase is Phase.MAIL:  # the probe's NOOP stands where MAIL would
        notes.append("the failure came at NOOP, after AUTH: no MAIL was sent (phase \"mail\" is where a delivery "
                     "would have met it)")
    if target.tls_mode is TlsMode.PLAINTEXT:
        where = "loopback" if is_loopback_host(target.host) else "the network"
        warnings.append(f"tls_mode = plaintext: certificates travel unencrypted over {where}")
    elif target.tls_skip_verify:
        warnings.append("tls_skip_verify = true: the relay's identity is NOT verified")
    cert = check.certificate
    if cert is not None and cert.days_left(now) < EXPIRY_WARNING_DAYS and cert.not_after > now:
        warnings.append(f"the relay's certificate expires in {cert.days_left(now):.0f} day(s), on "
                        f"{cert.not_after:%Y-%m-%d}")
    ehlo = check.ehlo
    mech = target.auth_method
    if ehlo is not None and mech is not AuthMethod.NONE and mech.value.upper() not in ehlo.auth:
        if check.failure is None or check.failure.code is not ErrorCode.SMTP_AUTH:
            warnings.append(f"auth_method = {mech.value}, but the relay does not offer AUTH {mech.value.upper()} "
                            f"(offers: {' '.join(ehlo.auth) or 'none'})")
    limit = ehlo.size_limit if ehlo is not None else None
    if isinstance(size, int):
        if limit:
            if size > limit:
                warnings.append(f"the relay's SIZE limit ({limit} bytes) is below this target's next email "
                                f"({size} bytes): the relay will refuse it (RFC 1870)")
            else:
                notes.append(f"next email {size} bytes, within the relay's SIZE limit of {limit}")
        elif ehlo is not None:
            notes.append(f"next email {size} bytes; the relay states no SIZE limit")
    elif isinstance(size, str):
        notes.append(f"message size not checked: {size}")
    else:
        notes.append("message size not checked: pass --lineage DIR to render this target's next email and compare "
                     "it with the relay's SIZE limit")
    return warnings, notes


# SASL mechanisms of the IANA registry a relay is likely to offer: our vocabulary, shown as is.
KNOWN_MECHANISMS = frozenset({"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
                              "SCRAM-SHA-256", "NTLM", "GSSAPI", "EXTERNAL", "ANONYMOUS"})


def _scrubbed_ehlo(ehlo: Ehlo | None, scrubber: scrub.Scrubber) -> Ehlo | None:
    """Keywords and mechanisms we know are our words, kept (so that a short secret, which withholds all relay
    text, does not turn STARTTLS into "not offered"); everything else the relay wrote is relay text."""
    if ehlo is None:
        return None
    shown = _bounded(ehlo)
    return Ehlo(tuple((k if k in REPORTED else _relay_text(k, scrubber, 40),
                       # SIZE's number, stated before any credential of ours was sent (AUTH comes after EHLO)
                       v if k == "size" and size_number(v) is not None else _relay_text(v, scrubber, 200))
                      for k, v in shown.extensions),
                tuple(m if m in KNOWN_MECHANISMS else _relay_text(m, scrubber, 40) for m in shown.auth))


MAX_OTHER_EXTENSIONS = 30  # EHLO keywords shown beyond REPORTED: a relay may send thousands (one block per target)
MAX_MECHANISMS = 20


def _bounded(ehlo: Ehlo) -> Ehlo:
    """The keywords a delivery cares about, all of them; of the rest and of the mechanisms, the first few."""
    others = [e for e in ehlo.extensions if e[0] not in REPORTED][:MAX_OTHER_EXTENSIONS]
    return Ehlo(tuple(e for e in ehlo.extensions if e[0] in REPORTED or e in others), ehlo.auth[:MAX_MECHANISMS])


def _omitted(ehlo: Ehlo | None) -> str | None:
    """A note when `_bounded` left part of a long EHLO reply out."""
    if ehlo is None:
        return None
    kept = _bounded(ehlo)
    extensions, mechanisms = len(ehlo.extensions) - len(kept.extensions), len(ehlo.auth) - len(kept.auth)
    if not extensions and not mechanisms:
        return None
    return (f"the relay's EHLO reply is long: {extensions} more keyword(s) and {mechanisms} more AUTH "
            "mechanism(s) are not shown")


def _scrubbed_cert(cert: RelayCertificate | None, scrubber: scrub.Scrubber) -> RelayCertificate | None:
    if cert is None:
        return None
    return replace(cert, subject=_relay_text(cert.subject, scrubber, 400),
                   sans=tuple(_relay_text(s, scrubber, 255) for s in cert.sans[:100]),
                   issuer=_relay_text(cert.issuer, scrubber, 400),
                   problems=tuple(_relay_text(p, scrubber, 1200) for p in cert.problems))


def _relay_text(text: str, scrubber: scrub.Scrubber, limit: int) -> str:
    """Relay-controlled text as printed: one printable line, every spelling of every secret masked, bounded."""
    masked = scrubber.masked(scrub.one_line(text))
    if masked is None:
        return scrub.WITHHELD
    return masked if len(masked) <= limit else masked[: limit - 3] + "..."


def document(result: CheckReport) -> dict[str, Any]:
    """The stable `check --json` document (schema 1, README.rst)."""
    return {"schema": SCHEMA, "checked_at": result.checked_at.isoformat(),
            "targets": [_target_json(c, result.checked_at) for c in result.checks],
            "config_errors": [p.to_json() for p in result.config_errors], "exit_status": result.exit_status}


def _target_json(c: TargetCheck, now: datetime) -> dict[str, Any]:
    return {"target": c.target, "verdict": c.verdict, "host": c.host, "port": c.port, "tls_mode": c.tls_mode.value,
            "helo_name": c.helo_name, **failure_json(c.failure),
            "tls": {"version": c.tls_version, "cipher": c.cipher} if c.tls_version else None,
            "certificate": c.certificate.to_json(now) if c.certificate else None,
            "ehlo_before_tls": ehlo_json(c.before_tls), "ehlo_after_tls": ehlo_json(c.after_tls),
            "auth": c.auth, "message_size": c.message_size, "warnings": list(c.warnings), "notes": list(c.notes),
            "duration_s": round(c.duration_s, 3)}


def ehlo_json(ehlo: Ehlo | None) -> dict[str, Any] | None:
    if ehlo is None:
        return None
    flags = {k: ehlo.has(k) for k in REPORTED if k not in ("size", "auth")}
    return {"size_limit": ehlo.size_limit, "auth": list(ehlo.auth), **flags,
            "extensions": {k: v for k, v in ehlo.extensions}}
