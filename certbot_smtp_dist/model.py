"""Frozen value types that flow one way through the stages: Target -> Artefact -> Payload -> Message -> Result."""

from __future__ import annotations

import enum
import fnmatch
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from certbot_smtp_dist.errors import ConfigProblem, ErrorCode


class TlsMode(str, enum.Enum):
    """How the SMTP session is protected. Exactly one mode; there is no "TLS if offered"."""

    STARTTLS = "starttls"  # RFC 3207: required, never downgraded
    SMTPS = "smtps"  # RFC 8314 §3.3: implicit TLS from the first byte
    PLAINTEXT = "plaintext"  # explicit, warned on every run

    @property
    def default_port(self) -> int:
        return {TlsMode.STARTTLS: 587, TlsMode.SMTPS: 465, TlsMode.PLAINTEXT: 25}[self]


class AuthMethod(str, enum.Enum):
    """The one SASL mechanism used (RFC 4954); never a cascade through several."""

    PLAIN = "plain"
    LOGIN = "login"
    XOAUTH2 = "xoauth2"  # Google's and Microsoft's bearer-token mechanism (a vendor format, no RFC)
    OAUTHBEARER = "oauthbearer"  # RFC 7628
    NONE = "none"

    @property
    def oauth2(self) -> bool:
        """Whether the mechanism carries an OAuth 2.0 access token rather than a password."""
        return self in (AuthMethod.XOAUTH2, AuthMethod.OAUTHBEARER)


class Phase(str, enum.Enum):
    """Where in the delivery a failure happened."""

    PAYLOAD = "payload"
    CONNECT = "connect"
    TLS = "tls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class Status(str, enum.Enum):
    DELIVERED = "delivered"
    PARTIAL = "partial"
    FAILED = "failed"
    # The final "." was sent and its reply never came (connection lost, unparseable reply, deadline): the relay
    # may have queued the message (RFC 5321 §4.1.1.4, §4.5.3.2; RFC 1047). Never re-sent within the run.
    UNCERTAIN = "uncertain"
    SKIPPED = "skipped"
    RENDERED = "rendered"


class Secret:
    """A secret string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class OAuth2Grant:
    """Where and how a target obtains its OAuth 2.0 access token: the client-credentials grant (RFC 6749 §4.4)
    with `client_secret_credential`, or a service account's JWT-bearer grant (RFC 7523 §2.1) with
    `service_account_credential`; exactly one of the two is set."""

    token_url: str | None  # None: the service account key's token_uri
    client_id: str | None  # the client-credentials grant only
    scope: str
    client_secret_credential: str | None = None
    service_account_credential: str | None = None
    ca_file: Path | None = None

    @property
    def credential(self) -> str:
        """The stored credential the grant is made from."""
        return self.client_secret_credential or self.service_account_credential or ""


@dataclass(frozen=True, slots=True)
class SmimePolicy:
    """A target's S/MIME (RFC 8551), validated at config time: the signer's certificate chain and the recipients'
    certificates, as canonical PEM, and `signer`, the signer's key and chain as loaded and checked to belong
    together by that load (held in memory for the run, never written, never shown in a repr)."""

    sign_cert: Path | None = None
    sign_key: Path | None = None
    signer_chain_pem: tuple[bytes, ...] = field(default=(), repr=False)  # signer first, then its chain
    encrypt_to: tuple[Path, ...] = ()
    recipients_pem: tuple[bytes, ...] = field(default=(), repr=False)
    recipient_fingerprints: tuple[str, ...] = ()  # SHA-256 of each recipient certificate's DER, lowercase hex
    recipient_names: tuple[str, ...] = ()  # each recipient certificate's subject, for the warnings
    encryption: str = "aes256-cbc"
    signer: object | None = field(default=None, repr=False, compare=False)  # _internal/cms.py's Signer

    @property
    def signs(self) -> bool:
        return self.sign_key is not None

    @property
    def encrypts(self) -> bool:
        return bool(self.recipients_pem)


@dataclass(frozen=True, slots=True)
class Target:
    """One delivery destination: relay, sender identity, recipients and payload format."""

    name: str
    host: str
    port: int
    tls_mode: TlsMode
    tls_skip_verify: bool
    tls_ca_file: Path | None
    auth_method: AuthMethod
    username: str | None
    password_credential: str | None
    timeout: float
    from_address: str
    from_name: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    payload: str
    # The stored credential the payload format declares it needs (its `credential_key`, e.g.
    # `pkcs12_passphrase_credential`); None when it takes none.
    payload_credential: str | None
    subject_prefix: str | None
    certificates: tuple[str, ...]
    # Whether `retry` re-sends an `uncertain` delivery once, with the same Message-ID (a duplicate the recipient
    # can recognise beats a hand-off that never arrived); false waits for `dismiss` or `retry --include-uncertain`.
    resend_uncertain: bool = True
    # Quiet target: a renewal of a certificate delivered here less than this long ago, with the same public key and
    # names, is not sent (journalled as `skipped`). None: every renewal is sent.
    min_interval: timedelta | None = None
    # With an OAuth 2.0 auth_method: the grant that yields the access token (password_credential is then None).
    oauth2: OAuth2Grant | None = None
    # S/MIME signing and/or encryption of every message to this target (smime_* keys); None: neither.
    smime: SmimePolicy | None = None
    # The name given in EHLO (RFC 5321 §4.1.1.1): a fully qualified domain or an address literal. None: this host's
    # FQDN when it has one, else the address literal of the local end of the connection.
    helo_name: str | None = None

    @property
    def message_encrypted(self) -> bool:
        """Whether every message to this target is encrypted to the recipients' certificates, so that what it
        carries is readable by them only, not by the SMTP hops and mailboxes on the way."""
        return self.smime is not None and self.smime.encrypts

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        """TO, CC and BCC in order, each address once (RFC 5321 §4.1.1.3: one RCPT per recipient)."""
        seen: set[str] = set()
        out: list[str] = []
        for addr in (*self.to, *self.cc, *self.bcc):
            if addr.lower() not in seen:
                seen.add(addr.lower())
                out.append(addr)
        return tuple(out)

    def matches(self, names: tuple[str, ...]) -> bool:
        """Whether this target wants a certificate known by these names (lineage name and SANs)."""
        if not self.certificates:
            return True
        lowered = [n.lower() for n in names]
        return any(fnmatch.fnmatchcase(n, pat.lower()) for pat in self.certificates for n in lowered)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again, in one value: within a run (`attempts`, exponential backoff with jitter, all inside the
    target's `timeout`), and across runs (`retry` gives up on a spool entry older than `max_age`). RFC 5321
    §4.5.4.1 asks for backoff between attempts and for giving up after at least 4-5 days.
    From [defaults]: `retry_attempts`, `retry_max_age` (days), `connections_per_relay`."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    min_budget: float = 1.0  # do not start an attempt with less time left than this
    max_age: timedelta = timedelta(days=5)
    # How many of a run's sessions may be open against one relay (host, port) at once; a session waits for a slot
    # inside its target's timeout. From [defaults]: `connections_per_relay`. 20: under the MTAs' own per-client
    # defaults (Postfix 50; Exim and sendmail set none), and a hand-off to 20 targets behind one distant relay is
    # one wave of sessions, not two (issue 16, scenario 4).
    connections_per_relay: int = 20

    def delay(self, attempt: int) -> float:
        raw: float = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return raw * random.uniform(0.5, 1.5)  # full jitter keeps many hosts from retrying in step


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration file, and what in it deserves a warning but works."""

    path: Path
    targets: tuple[Target, ...]
    retry: RetryPolicy = RetryPolicy()
    warnings: tuple[ConfigProblem, ...] = ()
    metrics_textfile: Path | None = None  # [defaults] only: rewritten after every deploy, retry and dismiss

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


@dataclass(frozen=True, slots=True)
class LineageSource:
    """Where a certificate artefact lives on disk, before it is read."""

    cert: Path | None
    key: Path
    chain: Path | None
    fullchain: Path | None
    name: str | None = None
    lineage_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What a human or a journal needs to know about the shipped certificate."""

    name: str
    common_name: str
    sans: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime
    serial_hex: str
    sha256_fingerprint: str
    spki_sha256: str = ""  # SHA-256 of the leaf's SubjectPublicKeyInfo (DER): the same key across renewals

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.common_name, *self.sans)

    @property
    def subject_names(self) -> tuple[str, ...]:
        """The names the certificate is for (CN and SANs), lowercased, sorted, each once: equal when the names are."""
        return tuple(sorted({n.lower() for n in (self.common_name, *self.sans) if n}))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "common_name": self.common_name,
            "sans": list(self.sans),
            "issuer": self.issuer,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "serial": self.serial_hex,
            "sha256_fingerprint": self.sha256_fingerprint,
            "spki_sha256": self.spki_sha256,
        }


class Severity(str, enum.Enum):
    """How much a finding about the shipped artefact matters (`inspect` exits non-zero on an error)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Finding:
    """One fact `inspect` and the email's Diagnostics section report about the artefact: a stable `code`, what is
    wrong (or right) in one printable line, and how to fix it. Never a path, never a secret."""

    severity: Severity
    code: str
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "code": self.code, "message": self.message, "fix": self.fix}


@dataclass(frozen=True, slots=True)
class Artefact:
    """A validated certificate: facts plus the bytes the payload formats may ship.

    `fullchain_pem` is rebuilt from the parsed certificates (leaf, then issuers, canonical PEM, nothing else) and
    `key_pem` is the key file's one private key block: never a file's bytes as they were. Formats that do not declare
    `ships_private_key` get an artefact whose `key_pem` is empty.
    """

    facts: CertificateFacts
    fullchain_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    source: LineageSource
    findings: tuple[Finding, ...] = ()  # diagnose.py's findings: the email's Diagnostics section, deploy's warnings


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str  # "maintype/subtype"
    data: bytes = field(repr=False)
    contains_private_key: bool = False


@dataclass(frozen=True, slots=True)
class Payload:
    format: str
    attachments: tuple[Attachment, ...]

    @property
    def contains_private_key(self) -> bool:
        return any(a.contains_private_key for a in self.attachments)


@dataclass(frozen=True, slots=True)
class Message:
    """A rendered email and its envelope (RFC 5321 §2.3.1: the envelope is not the header)."""

    message_id: str
    subject: str
    envelope_from: str
    envelope_to: tuple[str, ...]
    data: bytes = field(repr=False)
    # What a message hook did to it, for the journal: signed (S/MIME), and to which recipient certificates it was
    # encrypted (SHA-256 fingerprints).
    signed: bool = False
    encrypted_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply (RFC 5321 §4.2) with its enhanced status code (RFC 3463) when the relay sent one."""

    code: int
    enhanced_status: str | None
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"smtp_code": self.code, "enhanced_status": self.enhanced_status, "message": self.text}


@dataclass(frozen=True, slots=True)
class Failure:
    """The facts of one failed delivery: callers decide policy from these, not from exception types."""

    code: ErrorCode
    phase: Phase
    detail: str
    smtp_code: int | None = None
    enhanced_status: str | None = None
    retryable: bool | None = None  # None: the code's own class
    # The final "." of DATA was handed to the relay and no valid reply came back (connection lost, unparseable or
    # oversized reply, deadline): the relay may have queued the message (RFC 5321 §4.1.1.4; RFC 1047). Such a
    # delivery is `uncertain`, never re-sent within the run.
    maybe_delivered: bool = False
    # OpenSSL's X509_V_ERR_* code of a refused relay certificate (ssl.SSLCertVerificationError.verify_code): what
    # `check` explains the refusal from (a strict RFC 5280 check of Python 3.13+, for one). Not in the JSON.
    verify_code: int | None = None

    @property
    def is_retryable(self) -> bool:
        return self.code.retryable if self.retryable is None else self.retryable


def failure_json(failure: Failure | None) -> dict[str, Any]:
    """The one place a failure becomes JSON: the --json output, spool entries and journal lines all use it."""
    f = failure
    return {
        "error_code": f.code.value if f else None,
        "retryable": f.is_retryable if f else False,
        "phase": f.phase.value if f else None,
        "smtp_code": f.smtp_code if f else None,
        "enhanced_status": f.enhanced_status if f else None,
        "detail": f.detail if f else None,
    }


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    target: str
    status: Status
    failure: Failure | None = None
    message_id: str | None = None
    refused: tuple[tuple[str, Reply], ...] = ()
    duration_s: float = 0.0
    attempts: int = 0
    recipients: int = 0
    accepted: tuple[str, ...] = ()  # envelope recipients that took the message (not part of the JSON format)
    reason: str | None = None  # why a `skipped` target was skipped, one line


    @property
    def ok(self) -> bool:
        return self.status in (Status.DELIVERED, Status.SKIPPED, Status.RENDERED)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status.value,
            **failure_json(self.failure),
            "message_id": self.message_id,
            "refused_recipients": {addr: r.to_json() for addr, r in self.refused},
            "duration_s": round(self.duration_s, 3),
            "attempts": self.attempts,
            "reason": self.reason,
        }


PASSPHRASE_KEY = "pkcs12_passphrase_credential"  # the config key of a format's credential unless it names another


@dataclass(frozen=True, slots=True)
class PayloadFormat:
    """A way of packaging an artefact as attachments, registered through the `smtp_dist_payload_formats` hook.

    `build` must be pure: it receives the validated artefact and the secret (only when `credential_type` is set)
    and returns the attachments, or raises PayloadError.

    A format that needs a secret declares which: `credential_type` (the type of the stored credential) and
    `credential_key` (the config key that names it, ending in `_credential`; `pkcs12_passphrase_credential` when not
    given). The config parser accepts and checks that key, and the credential store unlocks it, for any format.

    The security rules read the declaration, never the name: `ships_private_key` (the artefact's key is given to
    `build` only then) and `key_encrypted` (the key travels encrypted under the target's credential, which needs a
    `credential_type`). A format that ships the key without declaring it encrypted ships it in clear, and is held to
    the rules for `pem_and_key` (never over plaintext to a non-loopback relay; warned on every run), unless the
    target encrypts the whole message to its recipients' certificates (`Target.message_encrypted`, S/MIME).
    """

    name: str
    description: str
    build: Callable[[Artefact, Secret | None], tuple[Attachment, ...]]
    credential_type: str | None = None
    ships_private_key: bool = False
    key_encrypted: bool = False
    credential_key: str | None = None

    def __post_init__(self) -> None:
        if self.credential_key is not None and (self.credential_type is None or not re.fullmatch(
                r"[a-z][a-z0-9_]{0,62}_credential", self.credential_key)):
            raise ValueError(f"payload format {self.name!r}: credential_key must be a lowercase config key ending "
                             "in _credential, with a credential_type")
        if self.key_encrypted and (not self.ships_private_key or self.credential_type is None):
            raise ValueError(f"payload format {self.name!r}: key_encrypted needs ships_private_key and the "
                             "credential_type that encrypts it")

    @property
    def credential_config_key(self) -> str | None:
        """The config key naming this format's credential; None when it takes none."""
        if self.credential_type is None:
            return None
        return self.credential_key or PASSPHRASE_KEY

    @property
    def key_in_clear(self) -> bool:
        """Whether whoever reads the message reads the private key: every SMTP hop and mailbox on the way."""
        return self.ships_private_key and not self.key_encrypted
