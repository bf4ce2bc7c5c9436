"""The OAuth 2.0 access token for one target, fetched inside its deadline; the only importer of urllib.request.

Its one `_translate` is this module's translation boundary for urllib, http.client and ssl exceptions (classify.py
stays the boundary for aiosmtplib's): every way the token request can fail ends here as a Failure.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from certbot_smtp_dist._internal import scrub
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Failure, OAuth2Grant, Phase, Secret

MAX_RESPONSE = 64 * 1024  # a token response is a few kilobytes; a hostile endpoint gets no more of our memory
# Endpoint statuses that say the grant itself is refused (RFC 6749 §5.2); anything else may pass.
_REFUSED = frozenset({400, 401, 403})


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and how long the endpoint says it lasts (RFC 6749 §5.1)."""

    value: Secret
    expires_in: int | None


class TokenFailure(Exception):
    """No token: the facts, already scrubbed of every secret of the request."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def tls_context(grant: OAuth2Grant) -> ssl.SSLContext:
    """Verified TLS 1.2+ against the system store plus `oauth2_ca_file` (RFC 6749 §3.2, RFC 7525 §3.1.1)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if grant.ca_file is not None:
        ctx.load_verify_locations(cafile=str(grant.ca_file))
    return ctx


def form(grant: OAuth2Grant, client_secret: Secret) -> bytes:
    """The client-credentials request body (RFC 6749 §4.4.2, client authentication in the body per §2.3.1)."""
    return urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": grant.client_id,
        "client_secret": client_secret.reveal(), "scope": grant.scope,
    }).encode("ascii")


def request_token(grant: OAuth2Grant, client_secret: Secret, timeout: float) -> Token:
    """POST the grant to the token endpoint and parse the answer; blocking. Raises TokenFailure only."""
    secrets = (client_secret,)
    try:
        return _post(grant, form(grant, client_secret), timeout, secrets)
    except TokenFailure:
        raise
    except Exception as exc:
        raise TokenFailure(_translate(exc, grant, secrets)) from exc


async def fetch(grant: OAuth2Grant, client_secret: Secret, budget: float) -> Token:
    """`request_token` in a daemon thread nobody joins, bounded by `budget` (as transport's resolver): a stalled
    endpoint cannot hold the run past the target's deadline."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Token] = loop.create_future()

    def settle(token: Token | None, error: BaseException | None) -> None:
        if answer.done():
            return  # abandoned at the deadline
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(token)  # type: ignore[arg-type]

    def work() -> None:
        try:
            token = request_token(grant, client_secret, max(budget, 0.1))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, never lost
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, token, None)

    threading.Thread(target=work, name="oauth2-token", daemon=True).start()
    try:
        return await asyncio.wait_for(answer, timeout=budget)
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise TokenFailure(_unreachable(grant, f"no answer within {budget:.1f}s")) from exc


def _post(grant: OAuth2Grant, body: bytes, timeout: float, secrets: tuple[Secret, ...]) -> Token:
    request = urllib.request.Request(grant.token_url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
    })
    # An opener of our own: no proxy from the environment sees the secret, no redirect resends it (RFC 6749 §3.2).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         urllib.request.HTTPSHandler(context=tls_context(grant)))
    with opener.open(request, timeout=timeout) as response:
        raw = response.read(MAX_RESPONSE + 1)
    return _parse(grant, raw, secrets)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx surfaces as an HTTPError: a token endpoint does not redirect a POST


def _parse(grant: OAuth2Grant, raw: bytes, secrets: tuple[Secret, ...]) -> Token:
    """RFC 6749 §5.1: a JSON object with `access_token`, `token_type` Bearer and optionally `expires_in`."""
    doc = _json(raw)
    token = doc.get("access_token") if doc is not None else None
    if len(raw) > MAX_RESPONSE or not isinstance(token, str) or not token or not token.isprintable():
        raise TokenFailure(_unreachable(grant, "the answer is not a token response (RFC 6749 §5.1)"))
    if str(doc.get("token_type", "")).lower() != "bearer":  # type: ignore[union-attr]
        raise TokenFailure(_unreachable(grant, "the token is not a Bearer token (RFC 6750)"))
    expires = doc.get("expires_in")  # type: ignore[union-attr]
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)  # Microsoft's v1 endpoint sends a string
    return Token(Secret(token), expires if isinstance(expires, int) and expires > 0 else None)


def _json(raw: bytes) -> dict[str, object] | None:
    try:
        doc = json.loads(raw[:MAX_RESPONSE].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _translate(exc: BaseException, grant: OAuth2Grant, secrets: tuple[Secret, ...]) -> Failure:
    """The one place a urllib, http.client or ssl exception of the token request becomes facts.

    A refused grant (RFC 6749 §5.2: 400/401) is permanent: asking again with the same secret cannot succeed, so
    SMTP_AUTH. Everything else (unreachable, TLS, timeout, 5xx, garbage) may pass: SMTP_CONNECT, spooled.
    """
    if isinstance(exc, urllib.error.HTTPError):
        body = b""
        try:
            body = exc.read(MAX_RESPONSE)
        except (OSError, http.client.HTTPException):
            pass
        if exc.code in _REFUSED:
            doc = _json(body) or {}
            said = " ".join(str(doc.get(k, "")) for k in ("error", "error_description")).strip()
            detail = f"token endpoint {_where(grant)} refused the grant: HTTP {exc.code}" + (
                f": {scrub.one_line(said)[:300]}" if said else "")
            return scrub.scrub_failure(Failure(ErrorCode.SMTP_AUTH, Phase.AUTH, detail), secrets)
        return _unreachable(grant, f"HTTP {exc.code}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            why = getattr(reason, "verify_message", None) or reason
            return _unreachable(grant, f"certificate not trusted: {why}")
        return _unreachable(grant, f"{type(reason).__name__}: {reason}"[:200])
    if isinstance(exc, (ssl.SSLError, socket.timeout, TimeoutError, OSError, http.client.HTTPException)):
        return _unreachable(grant, f"{type(exc).__name__}: {exc}"[:200])
    return _unreachable(grant, type(exc).__name__)


def _unreachable(grant: OAuth2Grant, why: str) -> Failure:
    # The relay is never contacted without a token (Phase.CONNECT); SMTP_CONNECT is transient and spooled.
    return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, f"no OAuth 2.0 token from {_where(grant)}: {why}")


def _where(grant: OAuth2Grant) -> str:
    parts = urllib.parse.urlsplit(grant.token_url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"  # never a query string, which may carry anything
