"""What the fault-injecting SMTP server (:mod:`support.faultsmtp`) does, stage by stage.

Every default is a well-behaved ESMTP server; each knob breaks one thing.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Then = Literal["continue", "close", "stall"]
TLSAction = Literal["handshake", "close", "garbage"]

#: Keys accepted in :attr:`Script.replies`.  ``DATA`` is the reply to the DATA command
#: (normally 354); ``DATA_END`` the reply after the final ``.``; ``UNKNOWN`` the reply
#: to unrecognised commands.
STAGES = frozenset(
    {
        "greeting",
        "EHLO",
        "HELO",
        "STARTTLS",
        "AUTH",
        "MAIL",
        "RCPT",
        "DATA",
        "DATA_END",
        "RSET",
        "NOOP",
        "QUIT",
        "UNKNOWN",
    }
)

NEED_TLS_REPLY = "530 5.7.0 Must issue a STARTTLS command first"
NEED_AUTH_REPLY = "530 5.7.0 Authentication required"
AUTH_OK_REPLY = "235 2.7.0 Authentication successful"
AUTH_BAD_REPLY = "535 5.7.8 Authentication credentials invalid"


@dataclass(frozen=True)
class Reply:
    """How the server answers at one stage.

    ``lines``: raw reply lines sent verbatim (CRLF appended), so malformed replies are
    possible; ``None`` means the stage's normal reply, ``()`` sends nothing.
    ``then``: ``continue``; ``close`` the connection; ``stall`` (stay silent, reading and
    recording whatever the client sends, until it hangs up or the server stops).
    ``None`` means ``close`` when the last line is a 421 reply, else ``continue``.
    ``trickle``: seconds to wait after each byte sent (0 sends at once).
    """

    lines: tuple[str, ...] | None = None
    then: Then | None = None
    trickle: float = 0.0

    @classmethod
    def text(cls, *lines: str, then: Then | None = None, trickle: float = 0.0) -> Reply:
        return cls(lines=lines, then=then, trickle=trickle)

    def resolve(self, default: tuple[str, ...]) -> tuple[tuple[str, ...], Then]:
        lines = default if self.lines is None else self.lines
        then = self.then
        if then is None:
            then = "close" if lines and lines[-1][:4] in ("421 ", "421-", "421") else "continue"
        return lines, then


#: Say nothing and wait; close without a reply.
STALL = Reply(lines=(), then="stall")
CLOSE = Reply(lines=(), then="close")

ReplySpec = Reply | str


def as_reply(spec: ReplySpec) -> Reply:
    """A plain string is a reply; embedded newlines separate reply lines."""
    if isinstance(spec, Reply):
        return spec
    return Reply(lines=tuple(spec.split("\n")))


@dataclass(frozen=True)
class Script:
    """Behaviour of a :class:`~support.faultsmtp.FaultServer`.

    ``replies``: stage (see :data:`STAGES`) -> :class:`Reply` or reply string.
    ``ehlo_extensions``: advertised after the hostname line of the default EHLO reply.
    ``advertise_starttls``: add STARTTLS to the default EHLO reply (``None``: when a
    ``tls_context`` is set and the session is not yet encrypted).
    ``tls_context``: server context used for STARTTLS (or for ``tls_on_connect``);
    without one, STARTTLS answers ``454 4.7.0 TLS not available``.
    ``tls_action``: after a 220 to STARTTLS, ``handshake`` for real, ``close`` when the
    ClientHello arrives, or send ``garbage`` bytes and close.
    ``require_tls``/``require_auth``: answer 530 to MAIL/RCPT/DATA (and AUTH, for TLS)
    until the session is encrypted / authenticated.
    ``credentials``: the accepted (user, password); ``None`` accepts anything.
    ``auth_replies``: final AUTH reply per mechanism (``PLAIN``, ``LOGIN``, ...), after
    the 334 exchange; overrides ``credentials`` and ``replies["AUTH"]``.
    ``rcpt_replies``: reply per recipient address (case-insensitive), over ``RCPT``.
    ``drop_data_after``: abort the connection once that many message bytes arrived.
    ``faulty_connections``: apply ``replies``, ``auth_replies``, ``rcpt_replies`` and
    ``drop_data_after`` to the first N connections only; later connections get the
    normal replies ("fails first, succeeds later").  ``None``: every connection.
    ``later``: with ``faulty_connections``, the script connections after the first N follow
    instead of the normal replies (numbered from 1 again), e.g. "partial, then 421".
    """

    replies: Mapping[str, ReplySpec] = field(default_factory=dict)
    hostname: str = "fault.test"
    ehlo_extensions: tuple[str, ...] = ("8BITMIME", "SIZE 10485760", "AUTH PLAIN LOGIN")
    advertise_starttls: bool | None = None
    tls_context: ssl.SSLContext | None = None
    tls_on_connect: bool = False
    tls_action: TLSAction = "handshake"
    require_tls: bool = False
    require_auth: bool = False
    credentials: tuple[str, str] | None = None
    auth_replies: Mapping[str, ReplySpec] = field(default_factory=dict)
    rcpt_replies: Mapping[str, ReplySpec] = field(default_factory=dict)
    drop_data_after: int | None = None
    handshake_timeout: float = 10.0
    faulty_connections: int | None = None
    later: Script | None = None

    def __post_init__(self) -> None:
        unknown = set(self.replies) - STAGES
        if unknown:
            raise ValueError(f"unknown reply stage(s) {sorted(unknown)}; use {sorted(STAGES)}")
        if self.tls_on_connect and self.tls_context is None:
            raise ValueError("tls_on_connect needs a tls_context")
        # Freeze the mappings (copy, normalised) so a shared dict cannot change a script.
        object.__setattr__(self, "replies", {k: as_reply(v) for k, v in self.replies.items()})
        object.__setattr__(
            self, "auth_replies", {k.upper(): as_reply(v) for k, v in self.auth_replies.items()}
        )
        object.__setattr__(
            self, "rcpt_replies", {k.lower(): as_reply(v) for k, v in self.rcpt_replies.items()}
        )

    def for_connection(self, number: int) -> Script:
        """The script connection ``number`` (from 1) follows; see ``faulty_connections``."""
        if self.faulty_connections is None or number <= self.faulty_connections:
            return self
        if self.later is not None:
            return self.later.for_connection(number - self.faulty_connections)
        return replace(
            self,
            replies={},
            auth_replies={},
            rcpt_replies={},
            drop_data_after=None,
            faulty_connections=None,
        )

    def reply(self, stage: str) -> Reply:
        spec = self.replies.get(stage)
        return spec if isinstance(spec, Reply) else Reply()

    def ehlo_lines(self, *, tls_active: bool) -> tuple[str, ...]:
        extensions = list(self.ehlo_extensions)
        starttls = self.advertise_starttls
        if starttls is None:
            starttls = self.tls_context is not None and not tls_active
        if starttls and "STARTTLS" not in extensions:
            extensions.append("STARTTLS")
        items = [self.hostname, *extensions]
        return tuple(
            f"250{' ' if i == len(items) - 1 else '-'}{item}" for i, item in enumerate(items)
        )


@dataclass(frozen=True)
class AcceptedMessage:
    """A message the server answered 2xx to at end of DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # dot-unstuffed, CRLF line ends, without the final "."
    tls: bool
    auth_user: str | None


@dataclass(frozen=True)
class FaultAuthAttempt:
    mechanism: str
    username: str | None  # None when the exchange was aborted or undecodable
    code: int  # the final reply code sent (0 when no reply was sent)

    @property
    def success(self) -> bool:
        return self.code == 235
