"""The certbot adapter's logic, free of certbot: resolve options, collect certificates, ship, and word the outcome.

`certbot_plugin.Installer` decides *when* to call these and whether an outcome is raised or only logged; everything
here returns data or raises `SetupError`, and imports the delivery core lazily (certbot imports the plugin module,
and therefore this one, on every run).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certbot_smtp_dist.errors import (
    AccessError,
    CertificateError,
    ConfigError,
    SmtpDistError,
    UnsafePathError,
    UsageError,
)
from certbot_smtp_dist.model import LineageSource, Status

if TYPE_CHECKING:
    from certbot_smtp_dist._internal.deploy import DeployReport

log = logging.getLogger("certbot_smtp_dist")


class SetupError(SmtpDistError):
    """The plugin cannot work as configured: a headline and every problem found, not just the first."""

    def __init__(self, headline: str, problems: Sequence[str] = ()) -> None:
        self.headline = headline
        self.problems = tuple(problems)
        super().__init__(headline + "".join(f"\n  - {p}" for p in self.problems))

    def one_line(self) -> str:
        """For hosts that show the message through repr() (certbot's "plugin is not working ... The error was")."""
        return self.headline + (": " + "; ".join(self.problems) if self.problems else "")


@dataclass(frozen=True, slots=True)
class Options:
    """The plugin's options, resolved: configuration file, targets (empty: every target), state directory."""

    config: Path
    targets: tuple[str, ...] = ()
    state_dir: Path | None = None  # journal + spool of failed deliveries; None: keep no state


def resolve_options(config: str | None, targets: str | None,
                    environ: Mapping[str, str] | None = None) -> Options:
    """As the `certbot-smtp-dist` command resolves them: the option, else the environment, else the default path.

    The state directory has no certbot option: it is per host, not per certificate, so the command's
    $CERTBOT_SMTP_DIST_STATE_DIR and default apply, and `certbot-smtp-dist retry` finds what renewals spooled.
    """
    from certbot_smtp_dist._internal.config import config_path
    from certbot_smtp_dist._internal.state import state_dir

    env = os.environ if environ is None else environ
    return Options(config_path(config, env), parse_targets(targets), state_dir(None, env))


def parse_targets(value: str | None) -> tuple[str, ...]:
    """`"a, b,,a"` -> `("a", "b")`: certbot persists the option as one string, so it is a comma-separated list."""
    names: list[str] = []
    for part in (value or "").split(","):
        name = part.strip()
        if name and name not in names:
            names.append(name)
    return tuple(names)


def lineage_source(cert: str | None, key: str, chain: str | None, fullchain: str | None,
                   name: str | None) -> LineageSource:
    """The files certbot names, as the core's source."""
    from certbot_smtp_dist._internal.lineage import from_paths

    return from_paths(cert, key, chain, fullchain, name)


def lineage_name(fullchain: str | None, live_dir: str, certname: str | None) -> str | None:
    """certbot's name for the certificate: `--cert-name`, else the live directory it sits in, else unknown (None).

    None lets the core fall back to the leaf's common name, as it does for files outside certbot's tree.
    """
    if certname:
        return certname
    if fullchain:
        parent = Path(fullchain).parent
        if parent.parent == Path(live_dir):
            return parent.name
    return None


class Collector:
    """Gathers `deploy_cert` calls: certbot makes one per name on the certificate, we send one email per target.

    Calls are keyed by the files they name, so the names of one certificate collapse into one entry, in the order
    certbot first mentioned each certificate.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[Path | None, ...], LineageSource] = {}

    def add(self, source: LineageSource) -> None:
        self._pending.setdefault((source.cert, source.key, source.chain, source.fullchain), source)

    def take(self) -> tuple[LineageSource, ...]:
        """Everything collected so far; the collector is empty afterwards, so a second flush sends nothing."""
        taken = tuple(self._pending.values())
        self._pending.clear()
        return taken

    def __len__(self) -> int:
        return len(self._pending)


def check(options: Options) -> None:
    """Validate the configuration file and the target selection without touching any certificate or relay."""
    from certbot_smtp_dist._internal import loader

    try:
        loaded = loader.load(options.config)
        loader.select(loaded.settings, options.targets)
    except ConfigError as exc:
        raise SetupError(f"configuration {options.config} is unusable", [str(p) for p in exc.problems]) from exc
    except UsageError as exc:
        raise SetupError(f"--smtp-dist-targets: {exc}") from exc
    except UnsafePathError as exc:
        raise SetupError(exc.refusal) from exc
    except AccessError as exc:
        raise SetupError(str(exc)) from exc


def certificate_names(source: LineageSource | None) -> tuple[str, ...]:
    """The names a delivery matches `certificates` filters against (lineage name, CN, SANs) of the certificate in
    `source`; () when there is none or it cannot be used (rehearse and the delivery name that). Read as a deploy
    reads it (lineage.read_trusted): files reached through a link another user can re-point would let them choose
    whose names pick the targets, so they give () too, logged as the deploy's refusal (which the deploy repeats)."""
    from datetime import datetime, timezone

    from certbot_smtp_dist._internal import lineage

    if source is None:
        return ()
    try:
        raw, twins, _ = lineage.read_trusted(source)
        artefact, _ = lineage.check(raw, source, datetime.now(timezone.utc), twins)
    except UnsafePathError as exc:
        log.warning("smtp-dist: not reading the certificate's names (no target is chosen by them): %s", exc.refusal)
        return ()
    except (CertificateError, OSError):
        return ()
    return artefact.facts.names


def check_relays(options: Options, names: tuple[str, ...]) -> None:
    """`certbot-smtp-dist check` for the selected targets that want a certificate of these `names` (every selected
    target when none are known): dial, TLS, AUTH, NOOP, and no mail. Raises SetupError naming every target that
    cannot work; warnings are logged."""
    from certbot_smtp_dist._internal import check as relay_check

    try:
        result = relay_check.run(relay_check.CheckRequest(options.config, options.targets, names=names))
    except UsageError as exc:
        raise SetupError(f"--smtp-dist-targets: {exc}") from exc
    except (UnsafePathError, AccessError) as exc:
        raise SetupError(str(exc)) from exc
    if result.config_errors:
        raise SetupError(f"configuration {options.config} is unusable", [str(p) for p in result.config_errors])
    for c in result.checks:
        for warning in c.warnings:
            log.warning("smtp-dist: target %s: %s", c.target, warning)
    failed = [c.summary() for c in result.checks if c.failure is not None]
    if failed:
        raise SetupError("the relay check (`certbot-smtp-dist check`) found target(s) that cannot work; nothing was "
                         "saved", failed)


@dataclass(frozen=True, slots=True)
class Shipment:
    """What shipping one certificate came to."""

    options: Options
    source: LineageSource
    report: DeployReport | None  # None: the request itself was refused (see `refused`)
    refused: str | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.refused is None and self.report is not None and self.report.exit_status == 0

    @property
    def label(self) -> str:
        facts = self.report.facts if self.report is not None else None
        return facts.name if facts is not None else (self.source.name or str(self.source.fullchain or self.source.cert))

    def problems(self) -> list[str]:
        """One line per reason something was not (or would not be) delivered; empty when all went well."""
        from certbot_smtp_dist._internal import report as wording

        if self.refused is not None:
            return [self.refused]
        assert self.report is not None
        if self.report.config_errors:
            return [f"configuration {self.options.config}: {p}" for p in self.report.config_errors]
        if self.report.certificate_problems:
            return ["certificate files unusable: " + "; ".join(self.report.certificate_problems)]
        return [wording.human_line(r) for r in self.report.results if not r.ok]

    def failed_targets(self) -> tuple[str, ...]:
        if self.report is None:
            return ()
        return tuple(r.target for r in self.report.results if not r.ok)

    def uncertain_targets(self) -> tuple[str, ...]:
        """Targets whose relay may have the message although its final reply was lost (or contradicted itself)."""
        if self.report is None:
            return ()
        return tuple(r.target for r in self.report.results if r.status is Status.UNCERTAIN)

    def resend_command(self) -> str:
        """The command that ships this certificate again, to the targets that did not get it."""
        where = self.source.lineage_dir
        source = ["--lineage", str(where)] if where is not None else [
            arg for flag, path in (("--cert", self.source.cert), ("--key", self.source.key),
                                   ("--chain", self.source.chain), ("--fullchain", self.source.fullchain))
            if path is not None for arg in (flag, str(path))
        ]
        targets = self.failed_targets() or self.options.targets
        argv = ["certbot-smtp-dist", "deploy", "--config", str(self.options.config), *self._state_args(), *source]
        for name in targets:
            argv += ["--target", name]
        return shlex.join(argv)

    def spooled(self) -> bool:
        """Whether a failed delivery waits in the spool for `certbot-smtp-dist retry` (retryable, message built)."""
        if self.report is None or self.options.state_dir is None or self.dry_run or not self.report.state_ok:
            return False
        return any(r.failure is not None and r.failure.is_retryable and r.message_id is not None
                   for r in self.report.results if not r.ok)

    def retry_command(self) -> str:
        """`retry` with this run's configuration: spool entries are authenticated under the key of the credential
        store beside it, so a drain under the default configuration would (rightly) refuse them."""
        from certbot_smtp_dist._internal.config import DEFAULT_CONFIG

        config = self.options.config
        where = ["--config", str(config)] if config != DEFAULT_CONFIG else []
        return shlex.join(["certbot-smtp-dist", "retry", *where, *self._state_args()])

    def _state_args(self) -> list[str]:
        from certbot_smtp_dist._internal.state import DEFAULT_STATE_DIR

        state = self.options.state_dir
        return ["--state-dir", str(state)] if state is not None and state != DEFAULT_STATE_DIR else []


def ship(options: Options, source: LineageSource, dry_run: bool = False) -> Shipment:
    """Deliver (or, on a dry run, only render) one certificate to the selected targets. Never raises.

    The core logs one line per target through the `certbot_smtp_dist` logger, which certbot records in its log.
    """
    from certbot_smtp_dist._internal import deploy
    from certbot_smtp_dist._internal.config import DEFAULT_CONFIG
    from certbot_smtp_dist._internal.report import command_prefix
    from certbot_smtp_dist._internal.state import DEFAULT_STATE_DIR

    state = options.state_dir
    command = command_prefix(str(options.config) if options.config != DEFAULT_CONFIG else None,
                             str(state) if state is not None and state != DEFAULT_STATE_DIR else None)
    request = deploy.DeployRequest(config=options.config, source=source, targets=options.targets, dry_run=dry_run,
                                   state_dir=state, from_renewal=True,  # certbot runs us: a renewal
                                   command=command)
    try:
        result = deploy.run(request)
    except UsageError as exc:
        return Shipment(options, source, None, refused=f"--smtp-dist-targets: {exc}", dry_run=dry_run)
    except UnsafePathError as exc:
        return Shipment(options, source, None, refused=exc.refusal, dry_run=dry_run)
    except AccessError as exc:  # a path closed to the user certbot runs as: never raised into certbot
        return Shipment(options, source, None, refused=str(exc), dry_run=dry_run)
    return Shipment(options, source, result, dry_run=dry_run)  # deploy.run rewrote the metrics file, as it loaded


def rehearse(options: Options, source: LineageSource) -> None:
    """Everything short of sending: configuration, credentials, target selection, one rendered email per target.

    A certificate that fails its own checks (expired, unreadable) does not fail the rehearsal: renewal replaces it.
    """
    check(options)  # first, so configuration problems are reported once, by the exception, not also by the core
    shipment = ship(options, source, dry_run=True)
    if shipment.report is not None and shipment.report.certificate_problems:
        log.warning("smtp-dist: the current certificate could not be rendered (%s); the settings were checked "
                    "without it", "; ".join(shipment.report.certificate_problems))
        return
    if not shipment.ok:
        raise SetupError(f"rehearsing delivery of {shipment.label} failed (nothing was sent)", shipment.problems())


def renewal_failure_message(shipment: Shipment) -> str:
    """What certbot's log says when a renewed certificate did not reach every target (renewal itself succeeded)."""
    failed = shipment.failed_targets()
    what = f"was not delivered to target(s) {', '.join(failed)}" if failed else "was not sent"
    lines = [f"smtp-dist: certificate {shipment.label} was renewed and saved, but {what}:"]
    lines += [f"  {line}" for line in shipment.problems()]
    lines.append("certbot will not offer this certificate to smtp-dist again.")
    if shipment.spooled():
        lines.append(f"The retryable deliveries are spooled; `{shipment.retry_command()}` (from its timer, or now) "
                     "re-sends them.")
    unsure = shipment.uncertain_targets()
    if unsure:  # RFC 1047: a hand-made re-send on top of retry's one would make a third copy
        lines.append(f"Target(s) {', '.join(unsure)} may have it already (the relay's reply to the end of the message "
                     "was lost, or contradicted itself): check with their recipients before sending it again by hand.")
    lines.append(f"Once the cause is fixed, to send it at once: {shipment.resend_command()}")
    return "\n".join(lines)


def install_failure_message(shipments: list[Shipment]) -> str:
    """The PluginError text for `certbot install`/`run` when any certificate did not reach every target."""
    lines = []
    for s in shipments:
        if not s.ok:
            lines.append(f"certificate {s.label}:")
            lines += [f"  {line}" for line in s.problems()]
    return "smtp-dist could not deliver the certificate:\n" + "\n".join(lines)
