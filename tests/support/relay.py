"""A real aiosmtpd relay on loopback, in a background thread.

Usable from sync tests (``with Relay(...) as relay:``) and from async code
(``async with Relay(...) as relay:``; the server lives on its own loop either way).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, AnyStr, Literal, final

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from .loopthread import BackgroundServer
from .pki import RelayPKI, ServerCertName

RelayMode = Literal["starttls", "smtps", "plaintext", "starttls_not_offered"]
RELAY_MODES: tuple[RelayMode, ...] = ("starttls", "smtps", "plaintext", "starttls_not_offered")
ACCEPT_REPLY = "250 2.0.0 Ok: queued"


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # message content as received (dot-unstuffed, CRLF line ends)
    tls: bool  # the session was encrypted (STARTTLS or implicit TLS)
    auth_user: str | None


@dataclass(frozen=True)
class AuthAttempt:
    mechanism: str
    username: str
    success: bool


class _Recorder:
    """Thread-safe store shared by the loop thread and the test thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._auth: list[AuthAttempt] = []
        self.connections = 0

    def add_message(self, message: ReceivedMessage) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def add_auth(self, attempt: AuthAttempt) -> None:
        with self._cond:
            self._auth.append(attempt)

    def add_connection(self) -> None:
        with self._cond:
            self.connections += 1

    def messages(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._messages)

    def auth_attempts(self) -> list[AuthAttempt]:
        with self._cond:
            return list(self._auth)

    def wait_messages(self, count: int, timeout: float) -> list[ReceivedMessage]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"expected {count} message(s), got {len(self._messages)}")
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()
            self._auth.clear()
            self.connections = 0


class _Handler:
    """aiosmtpd handler: per-recipient rejection and message recording."""

    def __init__(self, recorder: _Recorder, reject: Mapping[str, str]) -> None:
        self._recorder = recorder
        self.set_reject(reject)

    def set_reject(self, reject: Mapping[str, str]) -> None:
        self._reject = {addr.lower(): reply for addr, reply in reject.items()}

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._reject.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        auth_data = getattr(session, "auth_data", None)  # Session.login_data is deprecated
        self._recorder.add_message(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                tls=tls,
                auth_user=(
                    auth_data.login.decode("utf-8", "replace")
                    if isinstance(auth_data, LoginPassword)
                    else None
                ),
            )
        )
        return ACCEPT_REPLY


@dataclass
class Bearer:
    """What a relay with ``bearer=`` accepts from AUTH XOAUTH2 and OAUTHBEARER: this user with any of these
    tokens."""

    user: str
    tokens: set[str]
    refuse: bool = False  # answer every attempt with the 334 error challenge, then 535
    seen: list[bytes] | None = None  # every decoded initial response, for wire-format assertions


# The error challenge for a refused token (Google's; RFC 7628 §3.2.2): base64 of a JSON status, before the 535.
XOAUTH2_ERROR = b'{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}'


class _BearerHandler(_Handler):
    """A `_Handler` that also offers AUTH XOAUTH2 and OAUTHBEARER (aiosmtpd takes `auth_*` methods from the
    handler)."""

    def __init__(self, recorder: _Recorder, reject: Mapping[str, str], bearer: Bearer) -> None:
        super().__init__(recorder, reject)
        self.bearer = bearer

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's naming
        raw = self._initial(args)
        parts = raw.split(b"\x01")
        fields = dict(p.split(b"=", 1) for p in parts[:2] if b"=" in p)
        user = fields.get(b"user", b"").decode("utf-8", "replace")
        shape = len(parts) == 4 and parts[2:] == [b"", b""]
        # Google's documentation: the client answers the error challenge with an empty response.
        return await self._decide(server, "XOAUTH2", user, fields.get(b"auth", b""), shape, b"")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        raw = self._initial(args)
        # RFC 7628 §3.1: gs2-header ^A *kvpair ^A; the user is a GS2 saslname (RFC 5801: =2C and =3D escapes).
        gs2, _, rest = raw.partition(b"\x01")
        head = gs2.split(b",")
        user = (head[1][2:] if len(head) == 3 and head[0] == b"n" and head[1].startswith(b"a=") else b"")
        user_text = user.decode("utf-8", "replace").replace("=2C", ",").replace("=3D", "=")
        pairs = rest.split(b"\x01")
        fields = dict(p.split(b"=", 1) for p in pairs[:-2] if b"=" in p)
        shape = (pairs[-2:] == [b"", b""] and head[2:] == [b""] and set(fields) == {b"host", b"port", b"auth"}
                 and fields[b"host"] == b"127.0.0.1" and fields[b"port"].isdigit())
        # RFC 7628 §3.2.3: the client answers the error challenge with a single ^A.
        return await self._decide(server, "OAUTHBEARER", user_text, fields.get(b"auth", b""), shape, b"\x01")

    def _initial(self, args: list[str]) -> bytes:
        try:
            raw = base64.b64decode(args[1], validate=True) if len(args) == 2 else b""
        except binascii.Error:
            raw = b""
        self.bearer.seen = [*(self.bearer.seen or []), raw]
        return raw

    async def _decide(self, server: SMTP, mechanism: str, user: str, auth: bytes, shape: bool,
                      ending: bytes) -> AuthResult:
        token = auth.decode("utf-8", "replace")
        good = (shape and user == self.bearer.user and token.startswith("Bearer ")
                and token[7:] in self.bearer.tokens and not self.bearer.refuse)
        self._recorder.add_auth(AuthAttempt(mechanism, user, good))
        if not good:
            answer = await server.challenge_auth(base64.b64encode(XOAUTH2_ERROR), encode_to_b64=False)
            if answer != ending:
                return AuthResult(success=False, handled=False, message="501 5.5.2 wrong response to the challenge")
            return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")
        return AuthResult(success=True, handled=False, auth_data=LoginPassword(user.encode(), b""))


class _Authenticator:
    def __init__(self, recorder: _Recorder, credentials: tuple[str, str] | None) -> None:
        self._recorder = recorder
        self._credentials = credentials

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        success = self._credentials is not None and (username, password) == self._credentials
        self._recorder.add_auth(AuthAttempt(mechanism, username, success))
        return AuthResult(success=success, handled=False, auth_data=auth_data)


class _DelayingSMTP(SMTP):
    """aiosmtpd's server, each reply (greeting included) sent `delay` seconds late: a distant relay."""

    def __init__(self, *args: Any, delay: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delay = delay

    async def push(self, status: AnyStr) -> None:
        await asyncio.sleep(self._delay)
        await super().push(status)


@final
class Relay(BackgroundServer):
    """aiosmtpd relay bound to ``host`` on a free port.

    Modes: ``starttls`` (STARTTLS offered and required before MAIL/AUTH), ``smtps``
    (implicit TLS), ``plaintext`` and ``starttls_not_offered`` (both plain servers that do
    not offer STARTTLS; AUTH, when configured, is offered in clear text).
    ``auth=(user, password)`` makes AUTH (PLAIN, LOGIN) mandatory before MAIL.
    ``reject`` maps recipient address -> full reply (e.g. ``"550 5.1.1 No such user"``).
    ``tls_context`` overrides the server context built from ``pki`` and ``cert``.
    ``reply_delay`` sends every reply, greeting included, that many seconds late (a distant relay).
    """

    def __init__(
        self,
        pki: RelayPKI | None,
        *,
        mode: RelayMode = "starttls",
        auth: tuple[str, str] | None = None,
        cert: ServerCertName = "valid",
        reject: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        hostname: str = "relay.test",
        tls_context: ssl.SSLContext | None = None,
        port: int = 0,
        bearer: Bearer | None = None,
        reply_delay: float = 0.0,
    ) -> None:
        if mode not in RELAY_MODES:
            raise ValueError(f"unknown relay mode {mode!r}")
        self.mode: RelayMode = mode
        self.pki = pki
        self.auth = auth
        self.cert: ServerCertName = cert
        self.host = host
        self.hostname = hostname
        self.port = port  # 0: any free port; fixed: restart a relay where a target expects it
        self._recorder = _Recorder()
        self._handler = (_Handler(self._recorder, reject or {}) if bearer is None
                         else _BearerHandler(self._recorder, reject or {}, bearer))
        self._authenticator = _Authenticator(self._recorder, auth)
        self._tls_context = tls_context
        self.reply_delay = reply_delay
        super().__init__()
        self._protocols: list[SMTP] = []

    # ------------------------------------------------------------------ lifecycle

    def _thread_name(self) -> str:
        return f"relay-{self.mode}"

    def _server_tls(self) -> ssl.SSLContext | None:
        if self.mode in ("plaintext", "starttls_not_offered"):
            return None
        if self._tls_context is not None:
            return self._tls_context
        if self.pki is None:
            raise ValueError(f"relay mode {self.mode!r} needs a RelayPKI or tls_context")
        return self.pki.server_context(self.cert)

    def _make_protocol(self, tls: ssl.SSLContext | None, loop: asyncio.AbstractEventLoop) -> SMTP:
        self._recorder.add_connection()
        delayed: dict[str, Any] = {"delay": self.reply_delay} if self.reply_delay else {}
        smtp = (_DelayingSMTP if delayed else SMTP)(
            self._handler,
            hostname=self.hostname,
            tls_context=tls if self.mode == "starttls" else None,
            require_starttls=self.mode == "starttls",
            # aiosmtpd only counts STARTTLS as TLS: implicit TLS must not demand it.
            auth_require_tls=self.mode == "starttls",
            auth_required=False,
            authenticator=self._authenticator,
            enable_SMTPUTF8=True,
            loop=loop,
            **delayed,
        )
        # Set after __init__ to skip aiosmtpd's "AUTH without TLS" UserWarning in the
        # plain modes (that is exactly what those modes are for).
        smtp._auth_required = self.auth is not None or isinstance(self._handler, _BearerHandler)
        self._protocols.append(smtp)
        return smtp

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self._server_tls()
        self._server = await loop.create_server(
            lambda: self._make_protocol(tls, loop),
            host=self.host,
            port=self.port,
            ssl=tls if self.mode == "smtps" else None,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for smtp in self._protocols:
            if smtp.transport is not None:
                smtp.transport.close()
        await asyncio.sleep(0)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
        self._protocols.clear()

    # ------------------------------------------------------------------ records

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self._recorder.messages()

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        return self._recorder.auth_attempts()

    @property
    def auth_successes(self) -> int:
        return sum(1 for attempt in self.auth_attempts if attempt.success)

    @property
    def auth_failures(self) -> int:
        return sum(1 for attempt in self.auth_attempts if not attempt.success)

    @property
    def connections(self) -> int:
        return self._recorder.connections

    def wait_for_messages(self, count: int = 1, timeout: float = 5.0) -> list[ReceivedMessage]:
        return self._recorder.wait_messages(count, timeout)

    def clear(self) -> None:
        self._recorder.clear()

    def set_reject(self, reject: Mapping[str, str]) -> None:
        """Change the per-recipient refusals of a running relay."""
        self._handler.set_reject(reject)

    def client_context(self) -> ssl.SSLContext:
        """Client context trusting the relay CA (needs ``pki``)."""
        if self.pki is None:
            raise ValueError("relay has no PKI")
        return self.pki.client_context()

    def __repr__(self) -> str:
        return f"<Relay {self.mode} {self.host}:{self.port} auth={self.auth is not None}>"
