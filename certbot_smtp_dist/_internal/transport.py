"""One SMTP session for one target under a hard deadline, conducted on smtpwire's client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from certbot_smtp_dist._internal import (
    abandon,
    classify,
    greeting,
    offloop,
    portprobe,
    scrub,
    transcript,
)
from certbot_smtp_dist._internal.addresses import is_loopback_host
from certbot_smtp_dist._internal.tlspolicy import lookup_differs, verified_context
from certbot_smtp_dist._internal.tokencache import TokenCache
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import (
    AuthMethod,
    Failure,
    Message,
    Phase,
    Reply,
    Secret,
    Target,
    TlsMode,
)

# oauth2 (urllib, http.client): imported in _authorised only when a target uses OAuth 2.0; probe's facts where a
# probe (`check`) makes them: neither is on a delivery's start-up path.
if TYPE_CHECKING:
    from certbot_smtp_dist._internal import oauth2
    from certbot_smtp_dist._internal.probe import Ehlo, Encryption, Probe, Seen

_log = logging.getLogger("certbot_smtp_dist")
_CACHE_IO_FLOOR = 2.0  # seconds a token-cache write or removal may take even when the deadline has passed


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """What one session achieved: recipients accepted, recipients refused, and the failure if any."""

    accepted: tuple[str, ...] = ()
    refused: tuple[tuple[str, Reply], ...] = ()
    failure: Failure | None = None



@dataclass(slots=True)
class _Progress:
    phase: Phase = Phase.CONNECT
    resolving: bool = False
    connected: bool = False
    # The final "." of DATA is on its way: from here a missing reply means the relay may have the message.
    dot_sent: bool = False
    client: Any = None
    sock: socket.socket | None = None
    # Set once the relay took the message (a reply to the final "."): whatever happens to QUIT or the deadline
    # afterwards, this is the outcome, never a failure that would spool the message for a second copy.
    accepted: SessionOutcome | None = None


class _Abort(Exception):
    """Our own decision to end the session (no STARTTLS, no such AUTH mechanism, every RCPT refused)."""

    def __init__(self, failure: Failure, refused: tuple[tuple[str, Reply], ...] = ()) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.refused = refused


def client_tls_context(target: Target, whole_store: bool = True) -> ssl.SSLContext:
    """Verified TLS 1.2+ against the system store plus `tls_ca_file` (RFC 8314 §5, RFC 7525 §3.1.1); without
    `whole_store`, the store's hashed directory alone where it has one (tlspolicy.verified_context)."""
    # tls_skip_verify consults no anchor: the bundle is never parsed for it.
    ctx = verified_context(target.tls_ca_file, whole_store=whole_store and not target.tls_skip_verify)
    if target.tls_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_Key = tuple[Path | None, bool, tuple[int, ...], bool]
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH (x509_vfy.c, check_id): the leaf's
# names against the host dialled, checked after the chain is built.
_LEAF_NAME_MISMATCH = frozenset({62, 63, 64})


class TlsContexts:
    """The verified client contexts of each distinct trust configuration, shared by every run in the process.

    A delivery's first session uses the first-look context (`first`): on a system store with a c_rehash directory
    (Debian's), that directory looked up by subject, without parsing the store's bundle (~30 ms and a quarter of a
    cold deploy's instructions). A relay certificate refused under it is judged again under the whole store
    (`get`, and `second_look`), so what is trusted is exactly what the whole store trusts. `check` (probe) uses the
    whole store from the start: its diagnosis of a refusal must be the whole store's.

    One context serves any number of concurrent connections, and the sessions of later runs in the same process
    (the certbot plugin, `retry`). The key holds the `tls_ca_file`'s identity (device, inode, size, modification
    time), so an anchor replaced on disk is read again; the system store itself is read once per process (a renewal
    run is short). Nothing changes a context once made.
    """

    _made: ClassVar[dict[_Key, ssl.SSLContext]] = {}
    _MAX = 32  # distinct trust configurations kept; past that the cache starts again
    _loading: ClassVar[threading.Thread | None] = None  # prefetch's thread, joined by the first context asked

    @classmethod
    def prefetch(cls, targets: Iterable[Target]) -> None:
        """Start building the first-look contexts `targets` will need on a thread of its own, so that reading a
        `tls_ca_file` or, where there is no hashed directory, the system store's bundle (OpenSSL releases the GIL
        while it parses it) overlaps the run's other work before the first connection: reading and checking the
        certificate, rendering, the write-ahead. One that fails to build is left for first() to build again,
        which raises and names the file."""
        wanted: dict[_Key, Target] = {}
        for t in targets:
            if t.tls_mode is not TlsMode.PLAINTEXT and _key(t, False) not in cls._made:
                wanted.setdefault(_key(t, False), t)
        if not wanted or (cls._loading is not None and cls._loading.is_alive()):
            return

        def build() -> None:
            for key, target in wanted.items():
                try:
                    cls._made.setdefault(key, client_tls_context(target, whole_store=False))
                except (OSError, ssl.SSLError, ValueError):
                    continue

        # Not a daemon (abandon.start): a daemon thread was still inside OpenSSL when a run ended before its first
        # connection (an unusable certificate), and OpenSSL's cleanup at exit crashed the process (SIGSEGV instead of
        # the run's exit status). A host interpreter (certbot) waits for it; our own process ends without the
        # teardown and without waiting (abandon.end_process): nobody wants the store any more.
        cls._loading = abandon.start(build, "certbot-smtp-dist-trust")

    def get(self, target: Target) -> ssl.SSLContext | None:
        """The whole store's context for `target` (None: plaintext)."""
        return self._context(target, True)

    def first(self, target: Target) -> ssl.SSLContext | None:
        """The first-look context for a delivery's first session to `target` (None: plaintext)."""
        return self._context(target, False)

    @staticmethod
    def second_look(target: Target, failure: Failure | None) -> bool:
        """Whether a session under first() failed in a way the whole store might not: the relay's certificate was
        refused (OpenSSL gave its verification code) and the first look trusted less than the whole store. Any
        refusal of the chain counts (more anchors can build another chain, past an expired CA, say); not a name
        mismatch, which is the leaf's own and no anchor changes."""
        return (failure is not None and failure.code is ErrorCode.SMTP_TLS and failure.verify_code is not None
                and failure.verify_code not in _LEAF_NAME_MISMATCH and not target.tls_skip_verify
                and lookup_differs())

    def _context(self, target: Target, whole_store: bool) -> ssl.SSLContext | None:
        if target.tls_mode is TlsMode.PLAINTEXT:
            return None
        loading = type(self)._loading
        if loading is not None:  # a prefetch under way: wait for it rather than load the same store twice
            loading.join()
            type(self)._loading = None
        key = _key(target, whole_store)
        made = self._made.get(key)
        if made is None:
            made = client_tls_context(target, whole_store)  # an unreadable anchor raises here, and is not cached
            if len(self._made) >= self._MAX:
                self._made.clear()
            self._made[key] = made
        return made


def _key(target: Target, whole_store: bool) -> _Key:
    return (target.tls_ca_file, target.tls_skip_verify, _identity(target.tls_ca_file), whole_store)


def _identity(path: Path | None) -> tuple[int, ...]:
    if path is None:
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return ()  # the load that follows fails and names the file
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


async def deliver(target: Target, message: Message, password: Secret | None, budget: float,
                  secrets: tuple[Secret, ...] = (), tls: TlsContexts | None = None,
                  tokens: TokenCache | None = None) -> SessionOutcome:
    """Run one SMTP session; never raises for SMTP, network or TLS trouble, and never outlives `budget`.

    `secrets`: every secret of the run, scrubbed from the `-vv` transcript along with `password`.
    `tls`: the run's TLS contexts (one is made for this session when not given).
    `tokens`: the OAuth 2.0 token cache (None: every session of an OAuth target asks the token endpoint).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    contexts = tls or TlsContexts()

    async def run(secret: Secret | None, left: float, known: tuple[Secret, ...]) -> SessionOutcome:
        progress = _Progress()
        outcome = await _deliver(target, _delivery(target, message, secret, progress), left, known,
                                 lambda: contexts.first(target), progress, deadline)
        rest = deadline - loop.time()
        if not contexts.second_look(target, outcome.failure) or rest <= 0:
            return outcome
        # Nothing went to the relay but EHLO and STARTTLS (for smtps, nothing at all), and that connection is closed:
        # a new session from the start, under the whole store.
        transcript.stages.debug("target %s: relay certificate refused under the system store's hashed directory; "
                                "judging it again under the whole store", target.name,
                                extra={"target": target.name, "phase": Phase.TLS.value})
        progress = _Progress()
        return await _deliver(target, _delivery(target, message, secret, progress), rest, known,
                              lambda: contexts.get(target), progress, deadline)

    return await _authorised(target, password, budget, secrets, tokens, deadline, run)


async def probe(target: Target, password: Secret | None, budget: float, secrets: tuple[Secret, ...] = (),
                tls: TlsContexts | None = None, tokens: TokenCache | None = None, authenticate: bool = True,
                until_tls: bool = False) -> Probe:
    """A session that sends no mail (no MAIL, RCPT or DATA): EHLO, TLS exactly as `deliver` does it, AUTH with
    the stored credential unless `authenticate` is false, NOOP, QUIT; what the relay showed, as facts. With
    `until_tls` the session ends after the TLS handshake (to fetch a certificate that did not verify).
    Never raises for SMTP, network or TLS trouble, and never outlives `budget`."""
    from certbot_smtp_dist._internal.probe import Seen

    progress = _Progress()
    deadline = asyncio.get_running_loop().time() + budget
    seen = Seen(authenticate=authenticate, until_tls=until_tls)

    async def run(secret: Secret | None, left: float, known: tuple[Secret, ...]) -> SessionOutcome:
        async def converse(client: Any, name: str) -> SessionOutcome:
            await _open(client, target, secret, progress, name, seen)
            return SessionOutcome()
        return await _deliver(target, converse, left, known, lambda: (tls or TlsContexts()).get(target), progress,
                              deadline)

    outcome = await _authorised(target, password if authenticate else None, budget, secrets, tokens, deadline, run)
    return seen.facts(outcome.failure)


async def _authorised(target: Target, password: Secret | None, budget: float, secrets: tuple[Secret, ...],
                      tokens: TokenCache | None, deadline: float,
                      run: Callable[[Secret | None, float, tuple[Secret, ...]], Awaitable[SessionOutcome]],
                      ) -> SessionOutcome:
    """`run` with the session's secret: the password, or for OAuth 2.0 a token fetched (or cached) first."""
    known = (*secrets, password) if password is not None else secrets
    if target.oauth2 is None or password is None:
        return await run(password, budget, known)
    # The token first: nothing reaches the relay when none could be had. `password` is the grant's secret.
    from certbot_smtp_dist._internal import oauth2

    try:
        client = oauth2.client(target.oauth2, password)
        identity = oauth2.identity(client, target.username or "")
        token = await _token(client, identity, deadline, tokens)
    except oauth2.TokenFailure as refused:
        return SessionOutcome(failure=refused.failure)
    known = (*known, token)
    outcome = await run(token, max(deadline - asyncio.get_running_loop().time(), 0.01), known)
    if tokens is not None and outcome.failure is not None and outcome.failure.phase is Phase.AUTH:
        # The relay refused it: the next session asks the endpoint again.
        with contextlib.suppress(TimeoutError):
            await offloop.call(lambda: tokens.drop(identity), _CACHE_IO_FLOOR, "oauth2-cache")
    # The relay may quote the token back: its text is scrubbed here, where the token is known.
    return replace(outcome, refused=tuple((a, scrub.scrub_reply(r, known)) for a, r in outcome.refused),
                   failure=scrub.scrub_failure(outcome.failure, known) if outcome.failure else None)


async def _token(client: oauth2.Client, identity: tuple[str, str, str, str], deadline: float,
                 tokens: TokenCache | None) -> Secret:
    """A cached token still well inside its lifetime, else a fresh one (cached); one fetch per identity at a time,
    so the targets of a run that share a grant ask the endpoint once. Every wait (for another target's fetch, the
    cache file, the endpoint) gets only what is left of this target's deadline; the cache's file I/O runs off the
    event loop, so it never stalls another target's session."""
    from certbot_smtp_dist._internal import oauth2

    loop = asyncio.get_running_loop()

    def left() -> float:
        return max(deadline - loop.time(), 0.01)

    if tokens is None:
        return (await oauth2.fetch(client, identity[3], left())).value
    lock = tokens.lock(identity)
    try:
        await asyncio.wait_for(lock.acquire(), timeout=left())
    except asyncio.TimeoutError as exc:  # a distinct class before Python 3.11
        raise oauth2.TokenFailure(oauth2.unreachable(client.token_url, "the deadline passed while another target "
                                                                       "was fetching the same token")) from exc
    try:
        try:
            cached = await offloop.call(lambda: tokens.get(identity), left(), "oauth2-cache")
        except TimeoutError as exc:
            raise oauth2.TokenFailure(oauth2.unreachable(client.token_url, "the token cache did not answer within "
                                                                           "the deadline")) from exc
        if cached is not None:
            return cached
        fetched = await oauth2.fetch(client, identity[3], left())
        with contextlib.suppress(TimeoutError):  # not cached in time: the next run asks again
            await offloop.call(lambda: tokens.put(identity, fetched.value, fetched.expires_in),
                               max(left(), _CACHE_IO_FLOOR), "oauth2-cache")
        return fetched.value
    finally:
        lock.release()


Converse = Callable[[Any, str], Awaitable[SessionOutcome]]  # (client, EHLO name): what follows the greeting


def _delivery(target: Target, message: Message, password: Secret | None, progress: _Progress) -> Converse:
    async def converse(client: Any, name: str) -> SessionOutcome:
        return await _converse(client, target, message, password, progress, name)
    return converse


async def _deliver(target: Target, converse: Converse, budget: float, known: tuple[Secret, ...],
                   context: Callable[[], ssl.SSLContext | None], progress: _Progress, deadline: float,
                   ) -> SessionOutcome:
    try:
        session = _session(target, converse, progress, budget, known, context())
        if sys.version_info >= (3, 11):  # in this task: no task of its own to start and to wake us (3.12's wait_for)
            async with asyncio.timeout(budget):
                return await session
        return await asyncio.wait_for(session, timeout=budget)
    except _Abort as abort:
        return SessionOutcome(refused=abort.refused, failure=abort.failure)
    except (asyncio.TimeoutError, TimeoutError):
        if progress.accepted is not None:  # the deadline came during QUIT, after the relay took the message
            return progress.accepted
        # Ours, or the greeting's own timeout, which is set to the remaining budget: either way the
        # deadline is reached.
        connected = progress.connected
        if progress.resolving:
            return SessionOutcome(failure=Failure(
                ErrorCode.SMTP_CONNECT, Phase.CONNECT,
                f"cannot resolve host {target.host}: no answer from the resolver within {budget:.1f}s"))
        return SessionOutcome(failure=classify.deadline(progress.phase, connected, budget, progress.dot_sent,
                                                        target.timeout))
    except asyncio.CancelledError:  # a Ctrl-C (runloop.py); only our own deadline is a TimeoutError above
        if progress.accepted is not None:  # during QUIT: the relay has the message, retry must not send it again
            return progress.accepted
        if progress.dot_sent:  # the relay may have it: uncertain, as at our deadline, never plainly pending
            return SessionOutcome(failure=classify.interrupted_after_dot())
        raise
    except Exception as exc:
        if progress.accepted is not None:
            return progress.accepted
        head = _reply_head(progress)
        code = head.code() if head is not None else None
        failure = classify.translate(exc, progress.phase, progress.connected, progress.dot_sent, code)
        return SessionOutcome(failure=await _wrong_port_hint(target, progress, exc, failure, deadline))
    finally:
        _close(progress)


async def _session(
    target: Target, converse: Converse, progress: _Progress, budget: float,
    secrets: tuple[Secret, ...], tls_context: ssl.SSLContext | None,
) -> SessionOutcome:
    from certbot_smtp_dist._internal import smtpwire

    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    # Dial TCP ourselves so that a connect timeout (SMTP_CONNECT) is told apart from a stalled greeting
    # (SMTP_TRANSIENT).
    smtps = target.tls_mode is TlsMode.SMTPS
    transcript.stages.debug("target %s: dialling %s port %d (tls_mode %s, %.1fs left)", target.name, target.host,
                            target.port, target.tls_mode.value, budget,
                            extra={"target": target.name, "phase": Phase.CONNECT.value})
    progress.sock = await _open_socket(target.host, target.port, progress)
    progress.connected = True
    if not smtps:
        await _await_greeting(progress.sock, target, deadline)
    smtp = smtpwire.Client(
        sock=progress.sock,
        hostname=target.host,
        use_tls=smtps,
        tls_context=tls_context,
        # For the greeting only (see below): a hair under our deadline, so that its own timeout (which says what
        # it waited for) wins.
        timeout=max(deadline - loop.time() - 0.05, 0.1),
        local_hostname=target.helo_name or "localhost",  # never used: every EHLO below names itself
    )
    client = transcript.Transcribed(smtp, target, secrets)  # logs the conversation, scrubbed, for -vv
    progress.client = client
    progress.phase = Phase.TLS if target.tls_mode is TlsMode.SMTPS else Phase.CONNECT
    await client.connect()
    progress.connected = True
    progress.sock = None  # owned by the client now
    # From here the session's own deadline (the wait_for around it) is the only timer: no timer per reply.
    smtp.timeout = None
    sockname = client.get_transport_info("sockname")
    name = target.helo_name or await greeting.local_name(sockname[0] if sockname else None)
    try:
        return await converse(client, name)
    except (asyncio.TimeoutError, TimeoutError):
        raise  # a stalled relay gets no more of our time
    except Exception:
        head = _reply_head(progress)
        if head is not None:
            head.frozen = True
        await _polite_quit(client)
        raise


async def _converse(
    client: Any, target: Target, message: Message, password: Secret | None, progress: _Progress, name: str
) -> SessionOutcome:
    """EHLO, STARTTLS, AUTH and the mail transaction on an open connection (RFC 5321 §3.3)."""
    await _open(client, target, password, progress, name)
    progress.phase = Phase.MAIL
    # RFC 3461 §4.3: RET=HDRS, so that a bounce returns the headers alone, never the artefact (a private key, a
    # PKCS#12) to the envelope sender's mailbox, which may be read by others than the recipients; only where the
    # relay offers DSN (§4.1: an ESMTP parameter is an error to one that does not).
    await client.mail(message.envelope_from, ("RET=HDRS",) if client.supports_extension("dsn") else ())
    progress.phase = Phase.RCPT
    accepted: list[str] = []
    refused: list[tuple[str, Reply]] = []
    # A RCPT reply whose lines disagree (`550-`/`250`, `250-`/`451`) keeps the severity rule (code_of_lines): the
    # recipient is refused, unlike the final "." (classify.contradictory_final_reply). A RCPT reply hands nothing
    # over (RFC 5321 §4.1.1.3: it only names a recipient of the transaction; §4.1.1.4: the message is the relay's
    # once the final "." is answered). With no recipient accepted no DATA is sent, so the refusal is the truth
    # whatever the relay meant. With another one accepted, the message goes in this transaction, and a relay that
    # meant the 2yz line delivers it to this recipient too, anyway; recorded refused, a 5yz is never sent again,
    # and a 4yz is sent again to that recipient alone (§3.3, as to any deferred one): at worst a duplicate with the
    # same Message-ID from a relay that broke §4.2.1. Read as accepted, the message would be lost without a word
    # for a recipient the relay did refuse; read as uncertain, the whole delivery would wait on one recipient.
    for rcpt in message.envelope_to:
        try:
            await client.rcpt(rcpt)
            accepted.append(rcpt)
        except Exception as exc:
            answer = classify.refusal(exc)
            if answer is None:
                raise
            refused.append((rcpt, answer))
    if not accepted:
        raise _Abort(classify.refusals_failure(refused), tuple(refused))
    progress.phase = Phase.DATA
    try:
        await _data(client, message.data, progress)
    except _Abort as doubt:  # a contradictory final reply: the refusals stay facts of the session
        raise _Abort(doubt.failure, tuple(refused)) from None
    failure = classify.refusals_failure(refused) if refused else None
    progress.accepted = SessionOutcome(accepted=tuple(accepted), refused=tuple(refused), failure=failure)
    try:
        await client.quit()
    except Exception:  # the message is accepted (RFC 5321 §4.1.1.4); a lost QUIT changes nothing
        pass
    return progress.accepted


async def _open(client: Any, target: Target, password: Secret | None, progress: _Progress, name: str,
                seen: Seen | None = None) -> None:
    """EHLO, STARTTLS and AUTH, as every session does them; `seen` (a probe) records what the relay showed, and
    ends the session with NOOP instead of a mail transaction."""
    progress.phase = Phase.CONNECT
    if seen is not None and target.tls_mode is TlsMode.SMTPS:
        seen.encryption = _encryption(client)
        if seen.until_tls:
            return await _bare_quit(client)
    # RFC 5321 §4.1.1.1: our FQDN, else an address literal; `name` is the one the session decided on.
    if seen is not None:
        seen.helo_name = name  # shown also when the relay refuses it
    await client.ehlo(hostname=name)
    if seen is not None:
        seen.greeted(name, _ehlo(client), encrypted=target.tls_mode is TlsMode.SMTPS)

    if target.tls_mode is TlsMode.STARTTLS:
        progress.phase = Phase.TLS
        if not client.supports_extension("starttls"):
            # RFC 3207 §4 / RFC 8314 §3.2: a client configured for STARTTLS must not continue in clear.
            raise _Abort(Failure(ErrorCode.SMTP_TLS, Phase.TLS,
                                 "relay does not advertise STARTTLS; refusing to continue in plaintext"))
        await client.starttls(server_hostname=target.host)  # forgets what came in clear after its 220
        _ack_promptly(client)
        if seen is not None:
            seen.encryption = _encryption(client)
            if seen.until_tls:
                return await _bare_quit(client)  # the certificate is all this session was for
        await client.ehlo(hostname=name)  # RFC 3207 §4.2: forget pre-TLS extensions, ask again
        if seen is not None:
            seen.greeted(name, _ehlo(client), encrypted=True)
    if seen is not None and seen.until_tls:
        return

    if target.auth_method is not AuthMethod.NONE and (seen is None or seen.authenticate):
        progress.phase = Phase.AUTH
        await _authenticate(client, target, password)
        if seen is not None:
            seen.authenticated = True
    if seen is not None:
        progress.phase = Phase.MAIL  # nothing is sent: a refused NOOP reads as the relay's, after AUTH
        await client.noop()
        seen.noop = True
        with contextlib.suppress(Exception):  # RFC 5321 §4.1.1.10; a lost QUIT changes nothing of what was seen
            await client.quit()


def _ehlo(client: Any) -> Ehlo:
    """The extensions of the last EHLO reply (RFC 5321 §4.1.1.1), keywords lower-cased, as smtpwire parsed them."""
    from certbot_smtp_dist._internal.probe import Ehlo

    extensions = getattr(client, "esmtp_extensions", {}) or {}
    return Ehlo(tuple((str(k).lower(), str(v)) for k, v in extensions.items()),
                tuple(str(m).upper() for m in getattr(client, "server_auth_methods", []) or []))


def _encryption(client: Any) -> Encryption | None:
    """Protocol, cipher and the certificate(s) the relay presented, from the session's TLS object."""
    from certbot_smtp_dist._internal.probe import Encryption

    tls = client.get_transport_info("ssl_object")
    if tls is None:
        return None
    der = tls.getpeercert(binary_form=True)
    # Python 3.13+ gives the chain as the relay sent it; before that, the leaf only.
    unverified = getattr(tls, "get_unverified_chain", None)
    chain: tuple[bytes, ...] = ()
    if unverified is not None:  # pragma: no cover - Python 3.13+
        with contextlib.suppress(Exception):
            chain = tuple(bytes(c) for c in unverified() or () if isinstance(c, (bytes, bytearray)))
    cipher = tls.cipher()
    return Encryption(str(tls.version() or "?"), str(cipher[0]) if cipher else "?", der or None, chain)


async def _data(client: transcript.Transcribed, data: bytes, progress: _Progress) -> None:
    """DATA in its two steps, so that we know when the final "." has left (RFC 5321 §4.1.1.4).

    A reply lost after the dot cannot be told from a DATA command that failed by the reply alone. Without a reply to
    the dot, the relay may have queued the message (RFC 5321 §4.5.3.2, RFC 1047): `progress.dot_sent` says so to the
    classification.
    """
    from certbot_smtp_dist._internal.smtpwire import SMTPDataError

    start = await client.execute_command(b"DATA")
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol = client.protocol
    client.sending_message(len(data))  # the transcript shows its size, never the message
    protocol.write(data_lines(data))  # raises only when nothing could be handed to the connection
    progress.dot_sent = True
    final = await client.final_reply(protocol.read_response)
    progress.dot_sent = False  # the relay answered: whatever it says is an answer, not a doubt...
    head = _reply_head(progress)
    doubt = classify.contradictory_final_reply(head.read if head is not None else (), final.code, final.message)
    if doubt is not None:  # ...unless it says two things, one of them that it took the message
        raise _Abort(doubt)
    if final.code != 250:
        raise SMTPDataError(final.code, final.message)


_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def data_lines(data: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends (RFC 5321 §2.3.8), each leading "." doubled (§4.5.2), and
    the final "." line.

    A rendered message has CRLF line ends already and rarely a leading dot: then the bytes are found unchanged by
    counting (every CR starts a CRLF, every LF ends one) and searching, not rewritten by a regular expression
    match by match (a twentieth of a target's delivery, issue 16's fan-out). Anything else is rewritten as ever."""
    crlf = data.count(b"\r\n")
    body = data if crlf == data.count(b"\r") == data.count(b"\n") else _ANY_LINE_END.sub(b"\r\n", data)
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


# -- wrong port for the TLS mode --------------------------------------------------------------------------------


async def _await_greeting(sock: socket.socket, target: Target, deadline: float) -> None:
    """A relay silent past `portprobe.greeting_wait` may be an implicit-TLS port waiting for our ClientHello: ask
    on a second connection, bounded by the deadline; if it is not, keep waiting here (RFC 5321 §4.5.3.2.1)."""
    loop = asyncio.get_running_loop()
    if await portprobe.readable(sock, min(portprobe.greeting_wait(target.timeout), deadline - loop.time())):
        return
    transcript.stages.debug("target %s: no greeting yet; asking on a second connection whether the port speaks "
                            "TLS first", target.name, extra={"target": target.name, "phase": Phase.CONNECT.value})
    if await portprobe.speaks_tls_first(_dialler(target), target.host, deadline - loop.time() - 0.05):
        raise _Abort(Failure(ErrorCode.SMTP_TLS, Phase.TLS, f"no greeting within "
                             f"{portprobe.greeting_wait(target.timeout):.1f}s: {portprobe.TLS_FIRST}"))


async def _wrong_port_hint(target: Target, progress: _Progress, exc: BaseException, failure: Failure,
                           deadline: float) -> Failure:
    """An implicit-TLS handshake that failed without the relay speaking TLS: if the port greets in clear, say so."""
    if (target.tls_mode is not TlsMode.SMTPS or progress.phase is not Phase.TLS
            or failure.code is not ErrorCode.SMTP_TLS or classify.peer_spoke_tls(exc)):
        return failure
    bound = min(portprobe.greeting_wait(target.timeout), deadline - asyncio.get_running_loop().time() - 0.05)
    transcript.stages.debug("target %s: TLS handshake failed; asking on a second connection whether the port "
                            "greets in clear", target.name, extra={"target": target.name, "phase": Phase.TLS.value})
    if await portprobe.speaks_plaintext_first(_dialler(target), bound):
        return Failure(ErrorCode.SMTP_TLS, Phase.TLS, f"{failure.detail}: {portprobe.PLAINTEXT_FIRST}")
    return failure


def _dialler(target: Target) -> portprobe.Dial:
    return lambda: _open_socket(target.host, target.port, _Progress())


async def _polite_quit(client: Any) -> None:
    """RFC 5321 §4.1.1.10: end a refused session with QUIT while the relay still talks to us (at most 1 s)."""
    if not getattr(client, "is_connected", False):
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.quit(), 1.0)


async def _bare_quit(client: Any) -> None:
    """QUIT and nothing else (RFC 5321 §4.1.1.10) over a channel that is not verified: no reply is awaited longer
    than a second, and its code does not matter."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.execute_command(b"QUIT"), 1.0)


async def _authenticate(client: Any, target: Target, password: Secret | None) -> None:
    """Exactly the configured mechanism (RFC 4954 §4); a wrong password costs one attempt, not one per mechanism."""
    offered = [m.lower() for m in getattr(client, "server_auth_methods", [])]
    mech = target.auth_method.value
    if not client.supports_extension("auth") or mech not in offered:
        raise _Abort(Failure(ErrorCode.SMTP_AUTH, Phase.AUTH,
                             f"relay does not offer AUTH {mech.upper()} (offers: {' '.join(offered).upper() or 'none'})"))
    secret = password.reveal() if password is not None else ""
    if target.auth_method.oauth2:
        await client.auth_token(mech.upper(), target.username or "", lambda bare: _bearer(bare, target, secret))
    elif target.auth_method is AuthMethod.PLAIN:
        await client.auth_plain(target.username or "", secret)
    else:
        await client.auth_login(target.username or "", secret)


def xoauth2_response(username: str, token: str) -> bytes:
    """XOAUTH2's initial client response (Google's and Microsoft's format): base64 of
    "user=" U ^A "auth=Bearer " T ^A ^A."""
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode())


def oauthbearer_response(username: str, host: str, port: int, token: str) -> bytes:
    """OAUTHBEARER's initial client response (RFC 7628 §3.1): a GS2 header naming the user (RFC 5801 §4, with
    "," and "=" escaped as =2C and =3D), then host, port and auth key/value pairs, each ended by ^A."""
    user = username.replace("=", "=3D").replace(",", "=2C")
    return base64.b64encode(f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode())


async def _bearer(client: Any, target: Target, token: str) -> Any:
    """One AUTH with the initial response (RFC 4954 §4). A refused token comes back as a 334 carrying a base64
    JSON error; the client then ends the exchange as the mechanism prescribes, and the relay sends the final
    5xx: an empty line for XOAUTH2 (Google's and Microsoft's documentation), a single ^A for OAUTHBEARER
    (RFC 7628 §3.2.3), base64-encoded as every SMTP AUTH response (RFC 4954 §4)."""
    from certbot_smtp_dist._internal.smtpwire import SMTPAuthenticationError

    user = target.username or ""
    if target.auth_method is AuthMethod.OAUTHBEARER:
        initial, ending = oauthbearer_response(user, target.host, target.port, token), base64.b64encode(b"\x01")
    else:
        initial, ending = xoauth2_response(user, token), b""
    reply = await client.execute_command(f"AUTH {target.auth_method.value.upper()} ".encode() + initial)
    if reply.code == 334:
        reply = await client.execute_command(ending)
    if reply.code != 235:
        raise SMTPAuthenticationError(reply.code, reply.message)
    return reply


async def _resolve(host: str, port: int) -> list[Any]:
    """getaddrinfo in a thread of its own (offloop.call: not a daemon, never waited for by our own process's exit).

    The event loop's executor would be joined when the run ends, so a resolver that never answers would hold the
    process past every deadline. No timeout of its own: the session's deadline cancels the wait. Literal addresses
    need no thread.
    """
    name = host.strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    infos = await offloop.call(lambda: socket.getaddrinfo(name, port, type=socket.SOCK_STREAM), None,
                               f"resolve-{name}")
    if is_loopback_host(name):
        # RFC 6761 §6.3: localhost is loopback. config.py exempts it from TLS (a key or password may travel in
        # plaintext) by its name, without DNS; the name service's answer (no /etc/hosts entry, a search domain's
        # wildcard record) must not send them anywhere else.
        infos = [info for info in infos if ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback]
        if not infos:
            raise OSError(f"{name} resolved to no loopback address (RFC 6761 §6.3); nothing else is connected to")
    return infos


async def _open_socket(host: str, port: int, progress: _Progress) -> socket.socket:
    loop = asyncio.get_running_loop()
    progress.resolving = True
    infos = await _resolve(host, port)
    progress.resolving = False
    last: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last


def _ack_promptly(client: Any) -> None:
    """Acknowledge the relay's next segments at once, once the command about to be written has left.

    After a TLS 1.3 handshake the relay sends its session tickets (RFC 8446 §4.6.1), then answers our next command.
    A relay with Nagle's algorithm on (Postfix) holds that small reply until the tickets are acknowledged, and our
    kernel, having just sent the command, delays that acknowledgement by its delayed-ACK timer (40 ms on Linux):
    one stall per session. TCP_QUICKACK turns delayed ACKs off, but sending data turns them back on, so it is set
    by a callback that runs when the command's task step has written it and yields to await the reply. Linux only;
    elsewhere (or on a socket that refuses it) nothing changes but the stall.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is None:
        return

    def set_quickack() -> None:
        transport = getattr(client, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)

    asyncio.get_running_loop().call_soon(set_quickack)


def _close(progress: _Progress) -> None:
    if progress.client is not None:
        try:
            progress.client.close()
        except Exception:
            pass
    if progress.sock is not None:
        progress.sock.close()


def settle_lost_connections(loop: asyncio.AbstractEventLoop) -> None:
    """Route what the event loop itself reports into our log, for the sessions of this loop: a warning naming the
    exception's class only (its text may quote a relay), never asyncio's own lines on stderr, outside our log
    format (a `--log-format json` reader chokes on them)."""

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        _log.warning("event loop: %s (%s)", context.get("message", "?"),
                     type(exc).__name__ if exc is not None else "no exception")

    loop.set_exception_handler(handler)


def _reply_head(progress: _Progress) -> Any:
    """What the session's client knows of the relay's replies (smtpwire's `reply_head`: `read`, `code()`,
    `frozen`); None before there is a connection."""
    return getattr(progress.client, "reply_head", None)
