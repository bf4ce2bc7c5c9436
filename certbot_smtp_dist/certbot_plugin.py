"""The certbot installer plugin ``smtp-dist``: certbot's calls mapped onto the delivery core, and nothing more.

Usage::

    certbot reconfigure --cert-name example.com -i smtp-dist --smtp-dist-config /etc/letsencrypt/smtp-dist/config.toml
    certbot renew          # every renewal now ships the new certificate by email

certbot imports this module for every command and every certificate, so a failure here breaks certbot as a whole:
it imports only certbot at module level (even this package's own modules are imported by the methods that need them:
`certbot plugins` must not pay for them) and does no I/O until a method is called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from certbot import errors, interfaces
from certbot.plugins import common

if TYPE_CHECKING:
    from certbot_smtp_dist._internal import certbot_adapter as core
    from certbot_smtp_dist.model import LineageSource

log = logging.getLogger("certbot_smtp_dist")

# certbot verbs that cannot work without the installer: there, a PluginError from prepare() makes certbot stop and
# show it. Elsewhere (`reconfigure`, `certonly -i`) certbot silently drops an installer whose prepare() raised a
# PluginError and saves the renewal file without it, so those verbs get an error certbot does not swallow.
_NEEDS_INSTALLER = frozenset({"install", "run", "enhance"})
# The interactive verbs that set up delivery: there the relays are checked (`certbot-smtp-dist check`, no mail sent)
# before anything is saved. Never during `renew`.
_CHECKS_RELAYS = frozenset({"install", "run", "reconfigure"})
# An error other than PluginError stops certbot outright, so it is only raised when the user asked for this plugin;
# certbot also prepares every installer to offer a menu (`certbot install` without -i, `certbot plugins --prepare`).


def _absolute(value: object) -> str:
    """certbot saves the option as parsed, and `renew` runs from cron's or systemd's working directory: a relative
    path would name another file there than the one `reconfigure` checked. Empty stays empty (the default).

    certbot also casts the saved value with this on restore, where a hand-edited `a, b` is a list (configobj):
    as the default cast (str) did, it becomes a path that names no file, never an exception, which would make
    certbot skip renewing the certificate."""
    text = value if isinstance(value, str) else str(value)
    return os.path.abspath(text) if text else text


class Installer(common.Installer, interfaces.RenewDeployer):
    """Ships the certificate by email to the targets of certbot-smtp-dist's configuration file.

    Exception policy, by certbot verb:

    - ``renew``: nothing raises, ever. A raising ``prepare()`` would make certbot rewrite the renewal file without
      this installer (detaching the certificate from delivery for good), and a raising ``renew_deploy()`` would
      report a renewal as failed whose certificate is saved. Problems are logged as errors with a re-send command.
    - ``install``/``run``/``reconfigure``/``certonly``: configuration problems and failed deliveries raise, with every
      problem in one message. ``install``/``run``/``reconfigure`` also check the relays first (`check`, no mail) and
      raise, before anything is saved, naming every target that cannot work.
    - dry runs (``renew --dry-run``, and the test renewal ``reconfigure`` performs) send nothing.
    """

    description = "Ship the certificate by email (SMTP) to configured recipients"

    @classmethod
    def add_parser_arguments(cls, add: Callable[..., None]) -> None:
        # Never add an option that carries a secret: certbot persists options in renewal/NAME.conf.
        add("config", default=None, metavar="FILE", type=_absolute,
            help="certbot-smtp-dist configuration file (default: $CERTBOT_SMTP_DIST_CONFIG or "
                 "/etc/letsencrypt/smtp-dist/config.toml); saved for renewals")
        add("targets", default=None, metavar="NAME[,NAME...]",
            help="only these targets of the configuration file (default: every target whose `certificates` "
                 "filter matches); saved for renewals")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from certbot_smtp_dist._internal import certbot_adapter as core

        super().__init__(*args, **kwargs)
        self._collected = core.Collector()

    # ------------------------------------------------------------------ plugin

    def more_info(self) -> str:
        return ("Sends the certificate (full chain as PEM, or what each target's `payload` asks for) by email over "
                "SMTP to every target in certbot-smtp-dist's configuration file whose `certificates` filter "
                "matches, on `install`/`run` and after every renewal. It changes no server configuration and "
                "hosts no names. Dry runs send nothing.")

    def prepare(self) -> None:
        from certbot_smtp_dist._internal import certbot_adapter as core

        if self._renewing:
            # renew_deploy() reports configuration problems with the certificate they affect; raising here would
            # detach the certificate from delivery (see the class docstring).
            if getattr(self.config, "disable_renew_updates", False):
                log.warning("smtp-dist: --disable-renew-updates is set: renewed certificates will not be shipped")
            return
        options = self._options()
        try:
            source = self._current_lineage()
            if source is not None:
                core.rehearse(options, source)
            else:
                core.check(options)
            if self._chosen and getattr(self.config, "verb", None) in _CHECKS_RELAYS:
                # `--cert-name X-0001` alone: the live certificate's names select the targets renewals ship to.
                core.check_relays(options, self._names() + core.certificate_names(source or self._live_lineage()))
        except core.SetupError as exc:
            raise self._setup_error(exc) from exc

    # ------------------------------------------------------------------ installer

    def get_all_names(self) -> Iterable[str]:
        return []  # an email recipient hosts no names; certbot must be told the names (-d or --cert-name)

    def deploy_cert(self, domain: str, cert_path: str, key_path: str, chain_path: str | None = None,
                    fullchain_path: str | None = None) -> None:
        """Remember the certificate; certbot calls this once per name, and `save`/`restart` send it once."""
        from certbot_smtp_dist._internal import certbot_adapter as core

        name = core.lineage_name(fullchain_path, self.config.live_dir, self.config.certname)
        self._collected.add(core.lineage_source(cert_path, key_path, chain_path, fullchain_path, name))

    def enhance(self, domain: str, enhancement: str, options: list[str] | str | None = None) -> None:
        raise errors.NotSupportedError(f"smtp-dist supports no enhancements (asked for {enhancement!r})")

    def supported_enhancements(self) -> list[str]:
        return []

    def save(self, title: str | None = None, temporary: bool = False) -> None:
        """A titled, permanent save closes certbot's deployment of a certificate: send what was collected.

        Sending here rather than in `restart` makes a failure read as "Could not install certificate" followed by
        our reasons, instead of certbot's "restored your server to its prior configuration".
        """
        if title is not None and not temporary:
            self._flush()

    def restart(self) -> None:
        """Send anything `save` did not (no certificate is collected during `renew`: renew_deploy ships those)."""
        self._flush()

    def rollback_checkpoints(self, rollback: int = 1) -> None:
        """Nothing to roll back: this plugin changes no files, and a sent email cannot be recalled."""

    def recovery_routine(self) -> None:
        """Nothing to recover: no files were changed. Unsent certificates are simply dropped."""
        self._collected.take()

    def config_test(self) -> None:
        """The configuration file is validated by `prepare` (outside `renew`) and on every delivery."""

    # ------------------------------------------------------------------ RenewDeployer

    def renew_deploy(self, lineage: interfaces.RenewableCert, *args: Any, **kwargs: Any) -> None:
        """Ship the renewed certificate. Never raises: certbot would report a saved renewal as failed."""
        if self.config.dry_run:  # certbot skips renew_deploy on dry runs; never rely on it alone
            log.info("smtp-dist: dry run: nothing sent for %s", lineage.lineagename)
            return
        try:
            from certbot_smtp_dist._internal import certbot_adapter as core

            source = core.lineage_source(lineage.cert_path, lineage.key_path, lineage.chain_path,
                                         lineage.fullchain_path, lineage.lineagename)
            shipment = core.ship(self._options(), source)
            if not shipment.ok:
                log.error("%s", core.renewal_failure_message(shipment))
        except Exception:  # a defect must not turn a saved renewal into a reported failure
            log.exception("smtp-dist: internal error while shipping %s; the renewal itself succeeded",
                          getattr(lineage, "lineagename", lineage))

    # ------------------------------------------------------------------ helpers

    @property
    def _renewing(self) -> bool:
        return getattr(self.config, "verb", None) == "renew"

    @property
    def _chosen(self) -> bool:
        """Whether the user asked for this installer (certbot also prepares every installer to offer a menu)."""
        return self.name in (getattr(self.config, "installer", None), getattr(self.config, "configurator", None))

    def _names(self) -> tuple[str, ...]:
        """The certificate's names as certbot knows them before issuing (`-d`, `--cert-name`); may be empty."""
        names = [*(getattr(self.config, "domains", None) or []), getattr(self.config, "certname", None)]
        return tuple(str(n) for n in names if n)

    def _options(self) -> core.Options:
        from certbot_smtp_dist._internal import certbot_adapter as core

        return core.resolve_options(self.conf("config"), self.conf("targets"))

    def _current_lineage(self) -> LineageSource | None:
        """On `reconfigure`, the live certificate to rehearse with (render, send nothing); None elsewhere."""
        if getattr(self.config, "verb", None) != "reconfigure":
            return None
        return self._live_lineage()

    def _live_lineage(self) -> LineageSource | None:
        """The certificate `--cert-name` names in certbot's live directory, if it exists yet."""
        from pathlib import Path

        from certbot_smtp_dist._internal import certbot_adapter as core

        certname = self.config.certname
        if not certname:
            return None
        live = Path(self.config.live_dir) / certname
        if not (live / "fullchain.pem").exists():
            return None
        return core.lineage_source(str(live / "cert.pem"), str(live / "privkey.pem"), str(live / "chain.pem"),
                                   str(live / "fullchain.pem"), certname)

    def _setup_error(self, exc: core.SetupError) -> errors.Error:
        """certbot's error for a setup problem, worded for the way this verb will show it."""
        if self._chosen and getattr(self.config, "verb", None) not in _NEEDS_INSTALLER:
            return errors.ConfigurationError(f"smtp-dist: {exc}")
        return errors.PluginError(f"smtp-dist: {exc.one_line()}")  # certbot shows it through repr()

    def _flush(self) -> None:
        from certbot_smtp_dist._internal import certbot_adapter as core

        sources = self._collected.take()
        if not sources:
            return
        options = self._options()
        dry_run = bool(self.config.dry_run)
        shipments = [core.ship(options, source, dry_run=dry_run) for source in sources]
        if any(not s.ok for s in shipments):
            raise errors.PluginError(core.install_failure_message(shipments))
        if dry_run:
            log.info("smtp-dist: dry run: nothing sent")

