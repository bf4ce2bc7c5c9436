"""Parse the TOML configuration once, at the edge, into validated `Settings`; report every problem at once."""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal.addresses import (
    ENCODED_WORD_RE,
    address_problem,
    header_text_problem,
    is_loopback_host,
)
from certbot_smtp_dist._internal.files import chosen_path
from certbot_smtp_dist.errors import ConfigError, ConfigProblem
from certbot_smtp_dist.model import (
    PASSPHRASE_KEY,
    AuthMethod,
    OAuth2Grant,
    PayloadFormat,
    RetryPolicy,
    Settings,
    SmimePolicy,
    Target,
    TlsMode,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

DEFAULT_CONFIG = Path("/etc/letsencrypt/smtp-dist/config.toml")
CONFIG_ENV = "CERTBOT_SMTP_DIST_CONFIG"

PASSWORD_TYPE = "smtp_password"
PASSPHRASE_TYPE = "smtp_pkcs12_passphrase"

MAX_TO = 50
MAX_RECIPIENTS = 100  # RFC 5321 §4.5.3.1.8: relays must accept at least 100 RCPTs
MAX_FROM_NAME = 128
MAX_SUBJECT_PREFIX = 64  # the Subject also holds the certificate's name and date (RFC 5322 §2.1.1: 78 per line)
TARGET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DURATION_RE = re.compile(r"([0-9]{1,7})([smhd])")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_MIN_INTERVAL = timedelta(days=366)

# [defaults] only: one policy for the whole run
RETRY_KEYS = ("retry_attempts", "retry_max_age", "connections_per_relay")
METRICS_KEY = "metrics_textfile"  # [defaults] only: one file per host
OAUTH2_CLIENT_SECRET_TYPE = "smtp_oauth2_client_secret"
OAUTH2_SERVICE_ACCOUNT_TYPE = "smtp_oauth2_service_account"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
OAUTH2_KEYS = ("oauth2_token_url", "oauth2_client_id", "oauth2_scope", "oauth2_client_secret_credential",
               "oauth2_service_account_credential", "oauth2_ca_file")
SMIME_KEYS = ("smime_sign_cert", "smime_sign_key", "smime_encrypt_to", "smime_encryption")  # smimecerts.py checks them
KNOWN_KEYS = frozenset(
    {
        "host", "port", "tls_mode", "tls_skip_verify", "tls_ca_file", "auth_method", "username",
        "password_credential", "timeout", "from_address", "from_name", "to", "cc", "bcc", "payload",
        "pkcs12_passphrase_credential", "subject_prefix", "certificates", "resend_uncertain", "min_interval",
        *OAUTH2_KEYS, *SMIME_KEYS, "helo_name",
    }
)


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """`--config` wins over $CERTBOT_SMTP_DIST_CONFIG, which wins over the default path."""
    return chosen_path(cli_value, CONFIG_ENV, DEFAULT_CONFIG, environ)


def load_settings(
    path: Path,
    credentials: Mapping[str, str],
    payload_formats: Mapping[str, PayloadFormat],
) -> Settings:
    """Read and validate `path`.

    `credentials` maps stored credential names to their types; `payload_formats` maps each registered
    payload format's name to the format, whose declarations (credential type, private key in clear) the rules
    read. Raises ConfigError with every problem.
    """
    from certbot_smtp_dist._internal.ownership import read_trusted_config
    from certbot_smtp_dist.errors import UnsafePathError

    try:
        raw = read_trusted_config(path)
    except UnsafePathError:
        raise  # 77, as the check before the read says it
    except OSError as exc:
        raise ConfigError([ConfigProblem(None, None, f"cannot read {path}: {exc.strerror}")], str(path)) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([ConfigProblem(None, None, f"not valid TOML: {exc}")], str(path)) from exc
    except RecursionError as exc:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError([ConfigProblem(None, None, "not valid TOML: nested too deeply")], str(path)) from exc
    return parse_settings(doc, path, credentials, payload_formats)


def credential_users(path: Path, name: str) -> list[str]:
    """`targets.NAME.KEY` (or `defaults.KEY`) for every key of the config at `path` that names the stored
    credential `name`, read as written (the file need not validate); [] when it cannot be read."""
    from certbot_smtp_dist._internal.ownership import read_trusted_config

    try:  # as load_settings reads it: a FIFO there is refused, not waited on
        doc = tomllib.loads(read_trusted_config(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return []
    tables = [("defaults", doc.get("defaults"))]
    targets = doc.get("targets")
    if isinstance(targets, dict):
        tables += [(f"targets.{target}", table) for target, table in targets.items()]
    return [f"{where}.{key}" for where, table in tables if isinstance(table, dict)
            for key, value in table.items() if key.endswith("_credential") and value == name]


def parse_settings(
    doc: Mapping[str, Any],
    path: Path,
    credentials: Mapping[str, str],
    payload_formats: Mapping[str, PayloadFormat],
) -> Settings:
    problems: list[ConfigProblem] = []
    for key in doc:
        if key not in ("defaults", "targets"):
            problems.append(ConfigProblem(None, key, unknown_key(
                key, ("defaults", "targets"), "unknown top-level key (expected [defaults] and [targets.NAME])")))
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(ConfigProblem(None, "defaults", "must be a table"))
        defaults = {}
    defaults = dict(defaults)
    known = KNOWN_KEYS | _format_keys(payload_formats, problems)
    retry = _retry_policy({k: defaults.pop(k) for k in RETRY_KEYS if k in defaults}, problems)
    metrics = _metrics_textfile(defaults.pop(METRICS_KEY, None), problems)
    for key in defaults:
        if key not in known:
            problems.append(ConfigProblem(None, f"defaults.{key}",
                                          unknown_key(key, known | set(RETRY_KEYS) | {METRICS_KEY})))
    tables = doc.get("targets", {})
    if not isinstance(tables, dict) or not tables:
        problems.append(ConfigProblem(None, "targets", "no targets: add at least one [targets.NAME] table"))
        tables = {}
    targets: list[Target] = []
    warnings: list[ConfigProblem] = []
    ca_verdicts: dict[Path, str | None] = {}  # one check of a CA file per load, however many targets name it
    signers: dict[object, Any] = {}  # one S/MIME signer key parsed per load, however many targets name it
    for name, table in tables.items():
        if not isinstance(table, dict):
            problems.append(ConfigProblem(name, None, "must be a table"))
            continue
        checker = _TargetChecker(name, {**defaults, **table}, credentials, payload_formats, path.parent,
                                 from_defaults=frozenset(defaults) - frozenset(table), config_path=path,
                                 known=known, ca_verdicts=ca_verdicts, signers=signers)
        target = checker.build()
        problems.extend(checker.problems)
        warnings.extend(checker.warnings)
        if target is not None:
            targets.append(target)
    if problems:
        raise ConfigError(_once(problems), str(path))
    return Settings(path=path, targets=tuple(targets), retry=retry, warnings=tuple(_once(warnings)),
                    metrics_textfile=metrics)


def _format_keys(formats: Mapping[str, PayloadFormat], problems: list[ConfigProblem]) -> frozenset[str]:
    """The config keys payload formats declare for their credentials (`credential_key`): accepted like the
    built-in keys, so an extension format has its own secret without a change here. One that would take over a
    key the configuration already means something else by is refused."""
    keys = set()
    for fmt in formats.values():
        key = fmt.credential_config_key
        if key is not None and key != PASSPHRASE_KEY and key in KNOWN_KEYS | set(RETRY_KEYS) | {METRICS_KEY}:
            problems.append(ConfigProblem(None, "payload", f"payload format {fmt.name!r} declares credential_key "
                                                           f"{key!r}, a key the configuration already uses"))
        elif key is not None:
            keys.add(key)
    return frozenset(keys)


def _metrics_textfile(value: Any, problems: list[ConfigProblem]) -> Path | None:
    """[defaults] metrics_textfile: an absolute path ending in .prom (node-exporter's textfile collector reads only
    those, and skips our temporary files beside it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.endswith(".prom") or not os.path.isabs(value) or "\0" in value:
        problems.append(ConfigProblem(None, f"defaults.{METRICS_KEY}", "must be an absolute path ending in .prom, "
                                      'e.g. "/var/lib/prometheus/node-exporter/certbot_smtp_dist.prom"'))
        return None
    return Path(value)


def _retry_policy(doc: Mapping[str, Any], problems: list[ConfigProblem]) -> RetryPolicy:
    """[defaults] retry_attempts (SMTP sessions per run, 1-10) and retry_max_age (days a spool entry is retried,
    RFC 5321 §4.5.4.1 suggests 4-5; more than 0, at most 30)."""
    policy = RetryPolicy()
    attempts = doc.get("retry_attempts", policy.attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10:
        problems.append(ConfigProblem(None, "defaults.retry_attempts", "must be a whole number from 1 to 10"))
        attempts = policy.attempts
    days = doc.get("retry_max_age", policy.max_age / timedelta(days=1))
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 30:
        problems.append(ConfigProblem(None, "defaults.retry_max_age", "must be a number of days, more than 0 and "
                                                                      "at most 30"))
        days = policy.max_age / timedelta(days=1)
    per_relay = doc.get("connections_per_relay", policy.connections_per_relay)
    if isinstance(per_relay, bool) or not isinstance(per_relay, int) or not 1 <= per_relay <= 100:
        problems.append(ConfigProblem(None, "defaults.connections_per_relay", "must be a whole number from 1 to 100"))
        per_relay = policy.connections_per_relay
    return replace(policy, attempts=attempts, max_age=timedelta(days=days), connections_per_relay=per_relay)


def closest_key(key: str, known: frozenset[str] | tuple[str, ...]) -> str | None:
    """The known key `key` is most likely a typo of, if any is close enough."""
    import difflib  # only on the error path

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_key(key: str, known: frozenset[str] | tuple[str, ...], text: str = "unknown key") -> str:
    """`text`, with the closest known key when one is close enough to be a typo."""
    close = closest_key(key, known)
    return f"{text}; did you mean {close!r}?" if close else text


def token_url_problem(url: str) -> str | None:
    """Why `url` cannot be a token endpoint, or None. RFC 6749 §3.2: it MUST be reached over TLS, the grant's
    secret travels in the request. Userinfo is refused and never quoted: RFC 3986 §3.2.1 deprecates
    "user:password" there, and a secret in the URL would be quoted in every failure, the journal and --json."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.port == 0:  # .port raises ValueError itself for one that is not a number up to 65535
            raise ValueError("port 0")
    except ValueError:
        return "is not a URL: a bracketed address or a port that does not parse"
    if "@" in parts.netloc:
        return ("holds userinfo (user:password@); the client secret belongs in the credential store "
                "(oauth2_client_secret_credential)")
    if parts.scheme != "https" or not parts.hostname or header_text_problem(url) or " " in url:
        shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))  # never a query either
        return f"{shown[:80]!r} is not an https:// URL"
    return None


def credentials_set_hint(name: str, type_: str, path: Path) -> str:
    """The command that stores credential `name` beside this config, ready to paste (the path shell-quoted)."""
    import shlex  # a problem's hint only

    where = "" if path == DEFAULT_CONFIG else f" --config {shlex.quote(str(path))}"
    return f"run: certbot-smtp-dist credentials set {shlex.quote(name)} --type {type_}{where}"


def _once(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """A [defaults] value shared by several targets is one problem, reported once (dict keeps the order)."""
    return list(dict.fromkeys(problems))


class _TargetChecker:
    """Validates one target's merged table, collecting problems instead of stopping at the first."""

    def __init__(
        self,
        name: str,
        table: Mapping[str, Any],
        credentials: Mapping[str, str],
        payload_formats: Mapping[str, PayloadFormat],
        base_dir: Path,
        from_defaults: frozenset[str] = frozenset(),
        config_path: Path = DEFAULT_CONFIG,
        known: frozenset[str] = KNOWN_KEYS,
        ca_verdicts: dict[Path, str | None] | None = None,
        signers: dict[object, Any] | None = None,
    ) -> None:
        self.name = name
        self.table = table
        self.credentials = credentials
        self.payload_formats = payload_formats
        self.base_dir = base_dir
        self.from_defaults = from_defaults  # keys this target took from [defaults], not from its own table
        self.config_path = config_path
        self.known = known  # KNOWN_KEYS and the credential keys the registered payload formats declare
        self.ca_verdicts = {} if ca_verdicts is None else ca_verdicts  # shared by the targets of one load
        self.signers = {} if signers is None else signers  # likewise (smimecerts.py)
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        # Keys a typo in this table or [defaults] most likely meant: their "did you mean" says they are missing.
        self.misspelled = {closest_key(k, known) for k in table if k not in known}

    def _where(self, key: str | None, text: str) -> ConfigProblem:
        """Keyed where the user wrote the value: a [defaults] value is `defaults.KEY`, never `targets.NAME.KEY`."""
        if key is not None and key in self.from_defaults:
            return ConfigProblem(None, f"defaults.{key}", text)
        return ConfigProblem(self.name, key, text)

    def problem(self, key: str | None, text: str) -> None:
        self.problems.append(self._where(key, text))

    def warning(self, key: str | None, text: str) -> None:
        self.warnings.append(self._where(key, text))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.table:
            if required and key not in self.misspelled:
                self.problem(key, "is required")
            return default
        value = self.table[key]
        # bool is an int in Python; TOML keeps them apart, so do we.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.problem(key, f"must be {_kind_name(kind)}, not a boolean")
            return default
        if not isinstance(value, kind):
            self.problem(key, f"must be {_kind_name(kind)}, not {type(value).__name__}")
            return default
        return value

    def choice(self, key: str, enum_type: Callable[[str], Any], allowed: tuple[str, ...], default: str) -> Any:
        value = self.get(key, str, default)
        if value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}, not {value!r}")
            value = default
        return enum_type(value)

    def address(self, key: str, value: str) -> None:
        why = address_problem(value)
        if why:
            self.problem(key, f"{value!r} {why}")

    def address_list(self, key: str, required: bool) -> tuple[str, ...]:
        values = self.get(key, list, [], required=required)
        out: list[str] = []
        for value in values:
            if not isinstance(value, str):
                self.problem(key, f"every entry must be a string, not {type(value).__name__}")
                continue
            self.address(key, value)
            out.append(value)
        return tuple(out)

    def header_text(self, key: str, limit: int) -> str | None:
        """Header text we write: printable, bounded, and never an RFC 2047 encoded word of its own. The email
        package would decode such a word when the header is set, and its decoded form (a CR LF, a second
        address in the From display name) would become header structure (RFC 2047 §5; CVE-2024-6923)."""
        value: str | None = self.get(key, str)
        if value is None:
            return None
        if len(value) > limit:
            self.problem(key, f"is longer than {limit} characters")
            return value  # the checks below would only repeat themselves over a megabyte of text
        why = header_text_problem(value)
        if why:
            self.problem(key, why)
        elif ENCODED_WORD_RE.search(value):
            self.problem(key, "holds an RFC 2047 encoded word (=?charset?q?...?=): write the text itself; "
                              "certbot-smtp-dist encodes header text where it has to")
        return value

    def credential(self, key: str, wanted_type: str, required: bool) -> str | None:
        value: str | None = self.get(key, str, required=required)
        if value is None:
            return None
        from certbot_smtp_dist._internal.credentials import NAME_RE

        if not NAME_RE.fullmatch(value):  # the secret itself, written where its name belongs: never repeated
            self.problem(key, "is not a credential name (letters, digits, '.', '_', '-'; at most 64): it names a "
                              "secret stored with `certbot-smtp-dist credentials set NAME`, never the secret itself")
            return value
        stored = self.credentials.get(value)
        if stored is None:
            self.problem(key, f"credential {value!r} is not stored; "
                              f"{credentials_set_hint(value, wanted_type, self.config_path)}")
        elif stored != wanted_type:
            self.problem(key, f"credential {value!r} has type {stored}, expected {wanted_type}")
        return value

    def build(self) -> Target | None:
        if not TARGET_NAME_RE.fullmatch(self.name):
            self.problem(None, "target names may use only letters, digits, '.', '_' and '-' (at most 64)")
        for key in self.table:
            if key not in self.known and key not in self.from_defaults:  # reported once, as defaults.KEY
                self.problem(key, unknown_key(key, self.known))
        relay, identity, payload = self._relay(), self._identity(), self._payload()
        payload["smime"] = self._smime()
        self._no_secrets_in_clear(relay, payload["payload"], payload["smime"])
        self._port_matches_tls_mode(relay["port"], relay["tls_mode"])
        self._unused_keys(relay, payload["payload"])
        if self.problems:
            return None
        return Target(name=self.name, **relay, **identity, **payload)

    def _relay(self) -> dict[str, Any]:
        """Where and how to connect: host, port, TLS and AUTH (RFC 8314, RFC 4954)."""
        host = self.get("host", str, "", required=True)
        if "host" in self.table and isinstance(host, str) and (not host or header_text_problem(host) or " " in host):
            self.problem("host", f"{host!r} is not a host name or address")
        tls_mode = self.choice("tls_mode", TlsMode, tuple(m.value for m in TlsMode), "starttls")
        port = self.get("port", int, tls_mode.default_port)
        if not 1 <= port <= 65535:
            self.problem("port", f"{port} is out of range 1..65535")
        ca = self.get("tls_ca_file", str)
        tls_ca_file = None
        if ca is not None:
            tls_ca_file = (self.base_dir / ca) if not os.path.isabs(ca) else Path(ca)
            why = self._ca_problem(tls_ca_file)
            if why:
                self.problem("tls_ca_file", why)
        auth_method = self.choice("auth_method", AuthMethod, tuple(m.value for m in AuthMethod), "none")
        needs_auth = auth_method is not AuthMethod.NONE
        username = self.get("username", str, required=needs_auth)
        if username is not None and header_text_problem(username):
            self.problem("username", "contains a control character")
        timeout = self.get("timeout", (int, float), 30)
        if not 1 <= timeout <= 600:
            self.problem("timeout", f"{timeout} is out of range 1..600 seconds")
        return {
            "host": host, "port": port, "tls_mode": tls_mode, "tls_skip_verify": self.get("tls_skip_verify", bool, False),
            "tls_ca_file": tls_ca_file, "auth_method": auth_method, "username": username,
            "password_credential": self.credential("password_credential", PASSWORD_TYPE, required=True)
            if needs_auth and not auth_method.oauth2 else None,
            "timeout": float(timeout), "oauth2": self._oauth2() if auth_method.oauth2 else None,
            "helo_name": self._helo_name(),
        }

    def _helo_name(self) -> str | None:
        """RFC 5321 §4.1.1.1: EHLO names a fully qualified domain or gives an address literal."""
        from certbot_smtp_dist._internal.greeting import helo_name_problem

        value: str | None = self.get("helo_name", str)
        if value is None:
            return None
        why = helo_name_problem(value)
        if why:
            self.problem("helo_name", why)
        # RFC 5321 §4.1.2: a Domain has no trailing root dot (is_fqdn accepts one, as DNS spells it)
        return value if value.startswith("[") else value.rstrip(".")

    def _oauth2(self) -> OAuth2Grant | None:
        """The grant of an OAuth 2.0 auth_method: client credentials (RFC 6749 §4.4) or a service account's
        JWT bearer (RFC 7523); exactly one credential, and no password beside it."""
        if "password_credential" in self.table and "password_credential" not in self.from_defaults:
            self.problem("password_credential", "is not used with an OAuth 2.0 auth_method; the token comes from "
                                                "oauth2_client_secret_credential or oauth2_service_account_credential")
        keys = [k for k in ("oauth2_client_secret_credential", "oauth2_service_account_credential") if k in self.table]
        if len(keys) != 1:
            self.problem(keys[-1] if keys else "oauth2_client_secret_credential",
                         "an OAuth 2.0 auth_method needs exactly one of oauth2_client_secret_credential and "
                         "oauth2_service_account_credential")
            return None
        if keys[0] == "oauth2_service_account_credential":
            secret = self.credential(keys[0], OAUTH2_SERVICE_ACCOUNT_TYPE, required=True)
            url, client_id = self.get("oauth2_token_url", str), None  # default: the key's token_uri
            scope = self.get("oauth2_scope", str, GOOGLE_MAIL_SCOPE)
        else:
            secret = self.credential(keys[0], OAUTH2_CLIENT_SECRET_TYPE, required=True)
            url = self.get("oauth2_token_url", str, "", required=True)
            client_id = self.get("oauth2_client_id", str, "", required=True)
            scope = self.get("oauth2_scope", str, "", required=True)
        self._oauth2_values(url, client_id, scope)
        ca_file = self._path_key("oauth2_ca_file")
        if self.problems or not secret or not scope:
            return None
        return OAuth2Grant(token_url=url, client_id=client_id, scope=scope, ca_file=ca_file,
                           **{keys[0].removeprefix("oauth2_"): secret})

    def _oauth2_values(self, url: str | None, client_id: str | None, scope: str) -> None:
        problem = token_url_problem(url) if url else None
        if problem is not None:
            self.problem("oauth2_token_url", problem)
        for key, value in (("oauth2_client_id", client_id), ("oauth2_scope", scope)):
            if key in self.table and (not value or header_text_problem(value)):
                self.problem(key, "must be a non-empty string without control characters")

    def _path_key(self, key: str) -> Path | None:
        """A CA file, relative to the config file's directory."""
        value = self.get(key, str)
        if value is None:
            return None
        path = (self.base_dir / value) if not os.path.isabs(value) else Path(value)
        why = self._ca_problem(path)
        if why:
            self.problem(key, why)
        return path

    def _ca_problem(self, path: Path) -> str | None:
        """ca_file_problem, once per file and load: 50 targets naming one CA file parsed it 50 times. The file
        decides whom the relay connection trusts, so the config file's ownership rule holds for it first: whoever
        could swap it could put a man in the middle (the AUTH password, the mail, a key some payloads carry)."""
        from certbot_smtp_dist._internal import ownership

        if path not in self.ca_verdicts:
            self.ca_verdicts[path] = ownership.untrusted_input(path, "tls_ca_file") or ca_file_problem(path)
        return self.ca_verdicts[path]

    def _identity(self) -> dict[str, Any]:
        """Who sends to whom, and the header text around it (RFC 5322 §3.4, §3.6)."""
        from_address = self.get("from_address", str, "", required=True)
        if from_address:
            self.address("from_address", from_address)
        to = self.address_list("to", required=True)
        if "to" in self.table and not to and isinstance(self.table["to"], list):
            self.problem("to", "needs at least one address")
        if len(to) > MAX_TO:
            self.problem("to", f"has {len(to)} addresses; at most {MAX_TO}")
        cc = self.address_list("cc", required=False)
        bcc = self.address_list("bcc", required=False)
        if len(to) + len(cc) + len(bcc) > MAX_RECIPIENTS:
            self.problem("bcc", f"to, cc and bcc together exceed {MAX_RECIPIENTS} recipients")
        return {"from_address": from_address, "from_name": self.header_text("from_name", MAX_FROM_NAME),
                "to": to, "cc": cc, "bcc": bcc, "subject_prefix": self.header_text("subject_prefix", MAX_SUBJECT_PREFIX)}

    def _payload(self) -> dict[str, Any]:
        """What to ship, and for which certificates."""
        payload = self.get("payload", str, "pem")
        if payload not in self.payload_formats:
            self.problem("payload", f"must be one of {', '.join(sorted(self.payload_formats))}, not {payload!r}")
        fmt = self.payload_formats.get(payload)
        credential = None  # a credential given to a format that takes none (e.g. from [defaults]) is unused
        if fmt is not None and fmt.credential_type is not None and fmt.credential_config_key is not None:
            # The key and type the format declares: pkcs12_passphrase_credential for pkcs12, its own for another.
            credential = self.credential(fmt.credential_config_key, fmt.credential_type, required=True)
        certificates = self.get("certificates", list, [])
        if "certificates" in self.table and isinstance(self.table["certificates"], list) and not certificates:
            # No glob matches no name; Target.matches reads an empty filter as none at all (every certificate).
            self.problem("certificates", 'an empty list matches no certificate: write ["*"] for every certificate, '
                                         "or remove the target")
        for pattern in certificates:
            if not isinstance(pattern, str) or not pattern:
                self.problem("certificates", "every entry must be a non-empty string (a name or shell-style glob)")
        return {"payload": payload, "payload_credential": credential, "certificates": tuple(certificates),
                "resend_uncertain": self.get("resend_uncertain", bool, True), "min_interval": self._min_interval()}

    def _smime(self) -> SmimePolicy | None:
        """The smime_* keys (RFC 8551): certificates and signer key checked now, so nothing is dialled for a
        target whose messages could not be signed or encrypted."""
        if not any(key in self.table for key in SMIME_KEYS):
            return None  # as smimecerts.policy answers, without loading it (a cold deploy, issue 16)
        from certbot_smtp_dist._internal import smimecerts

        return smimecerts.policy(self)

    def _min_interval(self) -> timedelta | None:
        """`min_interval = "7d"`: a whole number and one unit (s, m, h, d); "0d" sends every renewal (the default),
        so one target can opt out of a [defaults] interval."""
        text = self.get("min_interval", str)
        if text is None:
            return None
        found = DURATION_RE.fullmatch(text.strip())
        if found is None:
            self.problem("min_interval", f"{text[:40]!r} is not a duration: a whole number and one unit, s, m, h "
                                         "or d (\"7d\", \"36h\"); \"0d\" sends every renewal")
            return None
        interval = timedelta(**{DURATION_UNITS[found.group(2)]: int(found.group(1))})
        if interval > MAX_MIN_INTERVAL:
            self.problem("min_interval", f"{text!r} is longer than {MAX_MIN_INTERVAL.days} days")
            return None
        return interval or None

    def _port_matches_tls_mode(self, port: int, tls_mode: TlsMode) -> None:
        """The classic mix-ups, as warnings: the port may be remapped on purpose. RFC 8314 §3.3 gives 465 to
        implicit TLS; 587 (RFC 6409) and 25 (RFC 5321) speak plaintext first and upgrade with STARTTLS."""
        key = "port" if "port" in self.table else "tls_mode"
        if port == 465 and tls_mode is not TlsMode.SMTPS:
            self.warning(key, f"port 465 speaks implicit TLS (RFC 8314), but tls_mode = {tls_mode.value!r}: "
                              "the relay will not greet; set tls_mode = \"smtps\"")
        elif port in (25, 587) and tls_mode is TlsMode.SMTPS:
            self.warning(key, f"port {port} speaks plaintext first (STARTTLS, RFC 3207), but tls_mode = 'smtps': "
                              "the handshake will meet a plaintext greeting; set tls_mode = \"starttls\"")

    def _unused_keys(self, relay: dict[str, Any], payload: str) -> None:
        """Keys this target wrote that its payload, auth method or TLS mode never reads. Keys from [defaults]
        are shared by targets that differ, so only the target's own table is checked."""
        unused: dict[str, str] = {}
        if relay["auth_method"] is AuthMethod.NONE:
            unused.update(dict.fromkeys(("username", "password_credential"), "auth_method = 'none'"))
        if not relay["auth_method"].oauth2:
            unused.update(dict.fromkeys(OAUTH2_KEYS, f"auth_method = {relay['auth_method'].value!r}"))
        fmt = self.payload_formats.get(payload)
        if fmt is not None:  # what the formats declare, not their names
            mine = fmt.credential_config_key
            why = f"payload = {payload!r} takes no passphrase" if mine is None else f"payload = {payload!r} reads {mine}"
            for other in self.payload_formats.values():
                if other.credential_config_key not in (None, mine):
                    unused[str(other.credential_config_key)] = why
        if relay["tls_mode"] is TlsMode.PLAINTEXT:
            unused.update(dict.fromkeys(("tls_ca_file", "tls_skip_verify"), "tls_mode = 'plaintext'"))
        for key, why in unused.items():
            if key in self.table and key not in self.from_defaults and self.table[key] is not False:
                self.warning(key, f"is ignored: {why}")

    def _no_secrets_in_clear(self, relay: dict[str, Any], payload: str, smime: SmimePolicy | None) -> None:
        """Neither a password nor a private key crosses a network in clear; loopback is not a network. A message
        encrypted to the recipients' certificates (S/MIME) does not carry its key in clear."""
        host, auth_method = relay["host"], relay["auth_method"]
        if relay["tls_mode"] is not TlsMode.PLAINTEXT or not host or is_loopback_host(host):
            return
        if auth_method is not AuthMethod.NONE:
            self.problem("auth_method", f"auth_method = {auth_method.value!r} over tls_mode = 'plaintext' to "
                                        f"non-loopback host {host!r} would send the password in clear; "
                                        "use starttls or smtps")
        fmt = self.payload_formats.get(payload)
        if fmt is not None and fmt.key_in_clear and not (smime is not None and smime.encrypts):
            self.problem("payload", f"payload = {payload!r} over tls_mode = 'plaintext' to non-loopback host "
                                    f"{host!r} would ship the private key in clear; use starttls or smtps")


def ca_file_problem(path: Path) -> str | None:
    """Why `path` cannot serve as an extra trust anchor for the relay, or None. Checked here, not at delivery,
    where a bad file would read as the relay's TLS failing."""
    import ssl
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG  # missing or unreadable: OpenSSL's own error names it below
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # OpenSSL opens it blocking and reads to the end: a FIFO waits for a writer, /dev/kmsg for a message.
        return f"{path} is not a regular file (a FIFO, device or socket), not a PEM file"
    try:
        # A bare context: the file is checked on its own, without loading the system store (tens of ms each).
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        return f"{path} does not exist"
    except PermissionError:
        return f"{path} is not readable"
    except IsADirectoryError:
        return f"{path} is a directory, not a PEM file"
    except (ssl.SSLError, OSError, ValueError):
        return f"{path} holds no PEM certificate"
    return None


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kinds == (int, float):
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)
