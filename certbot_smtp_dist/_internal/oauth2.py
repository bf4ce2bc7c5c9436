"""The OAuth 2.0 access token for one target, fetched inside its deadline; the only importer of urllib.request.

Its one `_translate` is this module's translation boundary for urllib, http.client and ssl exceptions (classify.py
stays the boundary for aiosmtplib's): every way the token request can fail ends here as a Failure.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from certbot_smtp_dist._internal import scrub
from certbot_smtp_dist._internal.tlspolicy import verified_context
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Failure, OAuth2Grant, Phase, Secret

ASSERTION_LIFETIME = 3600  # seconds; Google refuses an assertion that lives longer than an hour
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
    """Verified TLS 1.2+ against the system store plus `oauth2_ca_file` (RFC 6749 §3.2: the endpoint is HTTPS)."""
    return verified_context(grant.ca_file)


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What a service account's JSON key holds that the JWT-bearer grant needs (RFC 7523 §2.1)."""

    client_email: str
    private_key: Secret
    token_uri: str


def service_account(key: Secret) -> ServiceAccount:
    """The key's fields; ValueError saying which is missing, never quoting the key."""
    doc = _json(key.reveal().encode("utf-8"))
    if doc is None:
        raise ValueError("the service account key is not a JSON object")
    missing = [f for f in ("client_email", "private_key", "token_uri") if not isinstance(doc.get(f), str) or not doc[f]]
    if missing:
        raise ValueError(f"the service account key has no {', '.join(missing)}")
    return ServiceAccount(str(doc["client_email"]), Secret(str(doc["private_key"])), str(doc["token_uri"]))


def key_problem(text: str) -> str | None:
    """Why `text` cannot be stored as a service account key (`credentials set`), or None. Never quotes the key."""
    try:
        account = service_account(Secret(text))
        _rsa_key(account.private_key)
    except ValueError as exc:
        return str(exc)
    if urllib.parse.urlsplit(account.token_uri).scheme != "https":
        return "the service account key's token_uri is not an https:// URL"
    return None


def identity(grant: OAuth2Grant, secret: Secret, username: str) -> tuple[str, str, str, str]:
    """What a token is good for: (token URL, client, scope, user); the client of a service account is its
    client_email."""
    client = grant.client_id or ""
    if grant.service_account_credential is not None:
        try:
            client = service_account(secret).client_email
        except ValueError:
            client = ""
    return (token_url(grant, secret), client, grant.scope, username)


def token_url(grant: OAuth2Grant, secret: Secret) -> str:
    """The configured token URL, or the service account key's token_uri."""
    if grant.token_url:
        return grant.token_url
    try:
        return service_account(secret).token_uri
    except ValueError:
        return "(the service account key's token_uri)"


def form(grant: OAuth2Grant, secret: Secret, username: str, now: float) -> tuple[bytes, tuple[Secret, ...]]:
    """The request body and every secret in it. Client credentials: RFC 6749 §4.4.2 with the client
    authenticated in the body (§2.3.1); service account: RFC 7523 §2.1 with a signed assertion."""
    if grant.service_account_credential is None:
        return urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": grant.client_id or "",
            "client_secret": secret.reveal(), "scope": grant.scope,
        }).encode("ascii"), (secret,)
    account = service_account(secret)
    jwt = assertion(account, token_url(grant, secret), grant.scope, username, now)
    return urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt.reveal(),
    }).encode("ascii"), (secret, account.private_key, jwt)


def assertion(account: ServiceAccount, audience: str, scope: str, subject: str, now: float) -> Secret:
    """An RS256 JWT (RFC 7519, RFC 7515) with the claims of RFC 7523 §3: `iss` the service account, `sub` the
    mailbox it acts for (domain-wide delegation), `aud` the token endpoint, and an hour of life at most."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    issued = int(now)
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": account.client_email, "sub": subject, "scope": scope, "aud": audience,
              "iat": issued, "exp": issued + ASSERTION_LIFETIME}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = _rsa_key(account.private_key).sign(signing_input.encode("ascii"), padding.PKCS1v15(),
                                                   hashes.SHA256())
    return Secret(f"{signing_input}.{_b64url(signature)}")


def _rsa_key(pem: Secret) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem.reveal().encode("utf-8"), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("the service account key's private_key is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account key's private_key is not an RSA key (RS256 needs one)")
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")  # RFC 7515 §2: no padding


def request_token(grant: OAuth2Grant, secret: Secret, username: str, timeout: float) -> Token:
    """POST the grant to the token endpoint and parse the answer; blocking. Raises TokenFailure only."""
    url = token_url(grant, secret)
    secrets: tuple[Secret, ...] = (secret,)
    try:
        body, secrets = form(grant, secret, username, time.time())
        return _post(grant, url, body, timeout, secrets)
    except TokenFailure:
        raise
    except Exception as exc:
        raise TokenFailure(_translate(exc, url, secrets)) from exc


async def fetch(grant: OAuth2Grant, secret: Secret, username: str, budget: float) -> Token:
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
            token = request_token(grant, secret, username, max(budget, 0.1))
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, never lost
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, token, None)

    threading.Thread(target=work, name="oauth2-token", daemon=True).start()
    try:
        return await asyncio.wait_for(answer, timeout=budget)
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise TokenFailure(_unreachable(token_url(grant, secret), f"no answer within {budget:.1f}s")) from exc


def _post(grant: OAuth2Grant, url: str, body: bytes, timeout: float, secrets: tuple[Secret, ...]) -> Token:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
    })
    # An opener of our own: no proxy from the environment sees the secret, no redirect resends it (RFC 6749 §3.2).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         urllib.request.HTTPSHandler(context=tls_context(grant)))
    with opener.open(request, timeout=timeout) as response:
        raw = response.read(MAX_RESPONSE + 1)
    return _parse(url, raw, secrets)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx surfaces as an HTTPError: a token endpoint does not redirect a POST


def _parse(url: str, raw: bytes, secrets: tuple[Secret, ...]) -> Token:
    """RFC 6749 §5.1: a JSON object with `access_token`, `token_type` Bearer and optionally `expires_in`."""
    doc = _json(raw)
    token = doc.get("access_token") if doc is not None else None
    if len(raw) > MAX_RESPONSE or not isinstance(token, str) or not token or not token.isprintable():
        raise TokenFailure(_unreachable(url, "the answer is not a token response (RFC 6749 §5.1)"))
    if str(doc.get("token_type", "")).lower() != "bearer":  # type: ignore[union-attr]
        raise TokenFailure(_unreachable(url, "the token is not a Bearer token (RFC 6750)"))
    expires = doc.get("expires_in")  # type: ignore[union-attr]
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)  # Microsoft's v1 endpoint sends a string
    return Token(Secret(token), expires if isinstance(expires, int) and expires > 0 else None)


def _json(raw: bytes) -> dict[str, object] | None:
    try:
        doc = json.loads(raw[:MAX_RESPONSE].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting from a hostile endpoint: not JSON to us
        return None
    return doc if isinstance(doc, dict) else None


def _translate(exc: BaseException, url: str, secrets: tuple[Secret, ...]) -> Failure:
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
            detail = f"token endpoint {_where(url)} refused the grant: HTTP {exc.code}" + (
                f": {scrub.one_line(said)}" if said else "")
            return scrub.scrub_failure(Failure(ErrorCode.SMTP_AUTH, Phase.AUTH, detail), secrets)
        return _unreachable(url, f"HTTP {exc.code}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            why = getattr(reason, "verify_message", None) or reason
            return _unreachable(url, f"certificate not trusted: {why}")
        return _unreachable(url, f"{type(reason).__name__}: {reason}"[:200])
    if isinstance(exc, (ssl.SSLError, socket.timeout, TimeoutError, OSError, http.client.HTTPException)):
        return _unreachable(url, f"{type(exc).__name__}: {exc}"[:200])
    if isinstance(exc, ValueError):  # our own words about a stored key, or urllib's about the URL
        return scrub.scrub_failure(_unreachable(url, scrub.one_line(str(exc))), secrets)  # scrubbed, then cut
    return _unreachable(url, type(exc).__name__)


def _unreachable(url: str, why: str) -> Failure:
    # The relay is never contacted without a token (Phase.CONNECT); SMTP_CONNECT is transient and spooled.
    return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, f"no OAuth 2.0 token from {_where(url)}: {why}")


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"  # never a query string, which may carry anything
