"""The one loader: settings, payload formats, the credential store, the extensions and the state keys, built once by
one function for every entry point (deploy, retry, the certbot plugin), so none reaches into another."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pluggy

from certbot_smtp_dist._internal.config import (
    OAUTH2_CLIENT_SECRET_TYPE,
    OAUTH2_SERVICE_ACCOUNT_TYPE,
    PASSWORD_TYPE,
    load_settings,
)
from certbot_smtp_dist._internal.credentials import CredentialStore
from certbot_smtp_dist._internal.ownership import require_trusted_config
from certbot_smtp_dist._internal.state import StateKeys, state_keys
from certbot_smtp_dist.errors import (
    ConfigError,
    ConfigProblem,
    CredentialError,
    UnsafePathError,
    UsageError,
)
from certbot_smtp_dist.model import AuthMethod, PayloadFormat, Secret, Settings, Target

log = logging.getLogger("certbot_smtp_dist")


@dataclass(frozen=True, slots=True)
class Loaded:
    """Validated settings plus the registries and store they were validated against."""

    settings: Settings
    formats: Mapping[str, PayloadFormat]
    store: CredentialStore
    plugins: pluggy.PluginManager


def load(path: Path, environ: Mapping[str, str] | None = None, trusted: bool = False) -> Loaded:
    """Everything a run needs from the configuration. Raises ConfigError (every problem), UnsafePathError.
    `trusted`: the caller has just run require_trusted_config(path) itself (the deploy use case, first thing)."""
    from certbot_smtp_dist._internal.plugins import make_manager, payload_formats

    if not trusted:
        require_trusted_config(path)  # before a byte of it, or of the credentials beside it, is read
    log.debug("loading config %s", path)
    pm = make_manager()
    formats = payload_formats(pm)
    store = credential_store(path, environ)
    try:
        stored = store.types()
    except CredentialError as exc:  # a credential file not read at all (a FIFO, oversized): no credential is known
        raise ConfigError([ConfigProblem(None, None, str(exc))], str(path)) from exc
    settings = load_settings(path, stored, formats)
    for warning in settings.warnings:
        log.warning("config %s: %s", path, warning)
    log.debug("config %s: target(s) %s", path, ", ".join(t.name for t in settings.targets))
    return Loaded(settings, formats, store, pm)


def credential_store(config: Path, environ: Mapping[str, str] | None = None) -> CredentialStore:
    """The store beside `config` (its master key there, or the systemd credential)."""
    return CredentialStore(config.parent, dict(environ) if environ is not None else None)


def open_state_keys(config: Path, environ: Mapping[str, str] | None, state_dir: Path) -> StateKeys | None:
    """The journal and spool keys (the master key is created if there is none yet); None, logged, if unusable.
    A master key not safe to trust stops the run (UnsafePathError, exit 77), as an untrusted state does."""
    try:
        return state_keys(credential_store(config, environ), state_dir, create=True)
    except UnsafePathError:
        raise
    except (CredentialError, OSError) as exc:
        log.error("cannot use the state in %s (%s): failed deliveries from this run will NOT be retried "
                  "automatically", state_dir, exc)
        return None


def select(settings: Settings, names: tuple[str, ...]) -> tuple[Target, ...]:
    if not names:
        return settings.targets
    unknown = [n for n in names if settings.target(n) is None]
    if unknown:
        raise UsageError(f"unknown target(s): {', '.join(unknown)} (configured: "
                         f"{', '.join(t.name for t in settings.targets)})")
    return tuple(t for t in settings.targets if t.name in names)


class Locked(CredentialError):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def unlock(
    store: CredentialStore, targets: list[Target], formats: Mapping[str, PayloadFormat]
) -> dict[str, Secret]:
    """Decrypt exactly the secrets the matching targets need; every failure named by target and key."""
    secrets: dict[str, Secret] = {}
    problems: list[ConfigProblem] = []
    for t in targets:
        needed: list[tuple[str, str, str]] = []
        if t.auth_method is not AuthMethod.NONE and t.password_credential:
            needed.append(("password_credential", t.password_credential, PASSWORD_TYPE))
        if t.oauth2 is not None:
            if t.oauth2.service_account_credential:
                needed.append(("oauth2_service_account_credential", t.oauth2.service_account_credential,
                               OAUTH2_SERVICE_ACCOUNT_TYPE))
            else:
                needed.append(("oauth2_client_secret_credential", t.oauth2.credential, OAUTH2_CLIENT_SECRET_TYPE))
        fmt = formats[t.payload]
        if fmt.credential_type and fmt.credential_config_key and t.payload_credential:
            needed.append((fmt.credential_config_key, t.payload_credential, fmt.credential_type))
        for key, name, ctype_ in needed:
            if name in secrets:
                continue
            try:
                secrets[name] = store.get(name, ctype_)
            except CredentialError as exc:
                problems.append(ConfigProblem(t.name, key, str(exc)))
    if problems:
        raise Locked(problems)
    return secrets
