"""The SMTP conversation as `-vv` shows it: client and server lines, TLS facts; never a secret, an AUTH payload
or a message body.

`Transcribed` wraps the client transport.py creates and logs each command it issues and the reply it gets; it
relies only on the calls transport.py makes on smtpwire's client. `-v` gets one
line per stage (connected, TLS, auth, send) from the same place. Everything the relay says passes through
scrub.py, the one scrubber of relay text, with every secret of the run: while one is too short to mask, the
relay's text is withheld here as everywhere else, and only its reply code is shown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from certbot_smtp_dist._internal import classify
from certbot_smtp_dist._internal.addresses import printable
from certbot_smtp_dist._internal.scrub import MASK, WITHHELD, Scrubber, scrubber_of
from certbot_smtp_dist.model import Phase, Secret, Target, TlsMode

LOGGER = "certbot_smtp_dist.transcript"
log = logging.getLogger(LOGGER)
stages = logging.getLogger("certbot_smtp_dist")


class Transcribed:
    """An smtpwire client whose every command and reply is logged, redacted, at DEBUG on `LOGGER`."""

    def __init__(self, client: Any, target: Target, secrets: tuple[Secret, ...]) -> None:
        self._client = client
        self._target = target
        self._secrets = secrets
        self._scrubber: Scrubber | None = None  # built on the first line logged: costly, and -vv is rare

    def __getattr__(self, name: str) -> Any:  # everything not a command: supports_extension, close, ...
        return getattr(self._client, name)

    # -- commands ---------------------------------------------------------------------------------------------
    async def connect(self, *args: Any, **kwargs: Any) -> Any:
        # Implicit TLS (RFC 8314 §3.3): the handshake comes before the greeting, and so do its facts.
        first = self._tls_facts if self._target.tls_mode is TlsMode.SMTPS else None
        return await self._command(None, Phase.CONNECT, self._client.connect, *args, first=first, **kwargs)

    async def ehlo(self, *args: Any, **kwargs: Any) -> Any:
        hostname = kwargs.get("hostname") or getattr(self._client, "local_hostname", None) or ""
        return await self._command(f"EHLO {hostname}".rstrip(), Phase.CONNECT, self._client.ehlo, *args, **kwargs)

    async def starttls(self, *args: Any, **kwargs: Any) -> Any:
        answer = await self._command("STARTTLS", Phase.TLS, self._client.starttls, *args, **kwargs)
        self._tls_facts()
        return answer

    async def auth_plain(self, username: str, password: str, **kwargs: Any) -> Any:
        # RFC 4954 §4: the initial response carries the password; only the mechanism is shown.
        self._authenticating("PLAIN", username)
        return await self._command(f"AUTH PLAIN {MASK}", Phase.AUTH, self._client.auth_plain, username, password,
                                   **kwargs)

    async def auth_login(self, username: str, password: str, **kwargs: Any) -> Any:
        # The 334 challenges and our base64 answers are all redacted: only the outcome is shown.
        self._authenticating("LOGIN", username)
        return await self._command(f"AUTH LOGIN {MASK} (334 challenges and responses redacted)", Phase.AUTH,
                                   self._client.auth_login, username, password, **kwargs)

    async def auth_token(self, mechanism: str, username: str, run: Callable[[Any], Awaitable[Any]]) -> Any:
        """A bearer-token mechanism (XOAUTH2) run by `run` on the bare client: its initial response carries the
        access token, so only the mechanism and the outcome are shown, never the 334 exchange."""
        self._authenticating(mechanism, username)
        return await self._command(f"AUTH {mechanism} {MASK} (334 challenge and response redacted)", Phase.AUTH,
                                   run, self._client)

    async def mail(self, sender: str, options: tuple[str, ...] = ()) -> Any:
        shown = "".join(f" {option}" for option in options)
        return await self._command(f"MAIL FROM:<{sender}>{shown}", Phase.MAIL, self._client.mail, sender, options)

    async def rcpt(self, recipient: str, *args: Any, **kwargs: Any) -> Any:
        return await self._command(f"RCPT TO:<{recipient}>", Phase.RCPT, self._client.rcpt, recipient, *args,
                                   **kwargs)

    async def execute_command(self, *args: bytes, **kwargs: Any) -> Any:
        # transport.py sends DATA through here (RFC 5321 §4.1.1.4, the first of its two steps). Any argument is
        # shown masked: only the verb is known to hold nothing secret.
        words = b" ".join(args).split(b" ", 1)
        verb = words[0].decode("ascii", "replace")
        line = f"{verb} {MASK}" if len(words) > 1 else verb
        return await self._command(line, Phase.DATA, self._client.execute_command, *args, **kwargs)

    def sending_message(self, size: int) -> None:
        """The message itself is never shown (it may hold a private key): only its size."""
        self._stage(Phase.DATA, f"sending the message ({size} bytes)")
        self._line("C", f"<message body, {size} bytes>")

    async def final_reply(self, read: Callable[[], Awaitable[Any]]) -> Any:
        """The relay's answer to the final "." (RFC 5321 §4.1.1.4), or the note that none came."""
        return await self._command(None, Phase.DATA, read)

    async def noop(self, *args: Any, **kwargs: Any) -> Any:
        return await self._command("NOOP", Phase.MAIL, self._client.noop, *args, **kwargs)

    async def quit(self, *args: Any, **kwargs: Any) -> Any:
        return await self._command("QUIT", Phase.DATA, self._client.quit, *args, **kwargs)

    # -- logging ----------------------------------------------------------------------------------------------
    async def _command(self, line: str | None, phase: Phase, call: Callable[..., Awaitable[Any]],
                       *args: Any, first: Callable[[], None] | None = None, **kwargs: Any) -> Any:
        if line is not None:
            self._line("C", line)
        try:
            answer = await call(*args, **kwargs)
            if first is not None:
                first()
        except Exception as exc:
            reply = classify.reply_of(exc)
            if reply is not None:
                self._reply(*reply)
            else:
                self._line("*", f"no reply ({type(exc).__name__})")
            raise
        if log.isEnabledFor(logging.DEBUG):  # _reply's own test, made before its arguments are
            self._reply(int(getattr(answer, "code", 0) or 0), str(getattr(answer, "message", "")))
        if phase is Phase.CONNECT and line is None:
            self._stage(phase, "connected; relay greeted")
        elif phase is Phase.AUTH:
            self._stage(phase, "authenticated")
        return answer

    def _reply(self, code: int, text: str) -> None:
        """A reply's lines, scrubbed as one text: a secret split across two lines is found whole (scrub.py)."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        clean = self._relay_text(text)
        lines = (clean.split("\n") or [""]) if clean is not None else [WITHHELD]
        for index, part in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            self._line("S", f"{code}{sep}{part}")

    def _relay_text(self, text: str) -> str | None:
        """Relay text, each line made printable (untrusted: no control characters reach the log) and then every
        secret of the run masked; None when scrub.py says it must be withheld."""
        if self._scrubber is None:
            self._scrubber = scrubber_of(self._secrets)
        return self._scrubber.masked("\n".join(printable(line) for line in text.splitlines()))

    def _line(self, who: str, text: str) -> None:
        """One line of ours, or relay text already scrubbed, as one printable line."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("target %s: %s: %s", self._target.name, who, printable(text),
                      extra={"target": self._target.name})

    def _stage(self, phase: Phase, text: str) -> None:
        if stages.isEnabledFor(logging.DEBUG):  # debug()'s own test, made before its `extra` is
            stages.debug("target %s: %s", self._target.name, text, extra={"target": self._target.name,
                                                                           "phase": phase.value})

    def _authenticating(self, mechanism: str, username: str) -> None:
        if stages.isEnabledFor(logging.DEBUG):  # the user name made printable only for a reader
            self._stage(Phase.AUTH, f"authenticating with AUTH {mechanism} as {printable(username)!r}")

    def _tls_facts(self) -> None:
        """RFC 8314 §5 / RFC 7525: which protocol and cipher protect the session, and whom we talk to."""
        if not (log.isEnabledFor(logging.DEBUG) or stages.isEnabledFor(logging.DEBUG)):
            return  # nobody reads it: skip the certificate parsing and the scrubbing
        try:  # only ever an observer: nothing here may fail the delivery
            tls = self._client.get_transport_info("ssl_object")
            if tls is None:
                return
            cipher = (tls.cipher() or ("?",))[0]
            subject = _subject(tls)
        except Exception as exc:
            self._line("*", f"TLS details unavailable ({type(exc).__name__})")
            return
        self._stage(Phase.TLS, f"TLS established: {tls.version()}, {cipher}")
        # The subject is the relay's to choose, so it is relay text like any reply.
        shown = self._relay_text(subject)
        self._line("*", f"TLS {tls.version()} {cipher}; relay certificate subject: "
                        f"{WITHHELD if shown is None else shown}")


def _subject(tls: Any) -> str:
    der = tls.getpeercert(binary_form=True)
    if not der:
        return "(none)"
    from cryptography import x509

    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return "(unparseable)"
