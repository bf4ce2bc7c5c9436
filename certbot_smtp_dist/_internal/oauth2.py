"""The OAuth 2.0 access token for one target, fetched inside its deadline; the only importer of urllib.request.

Its one `_translate` is this module's translation boundary for urllib, http.client and ssl exceptions (classify.py
stays the boundary for the SMTP session's): every way the token request can fail ends here as a Failure.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certbot_smtp_dist._internal import offloop, scrub
from certbot_smtp_dist._internal.tlspolicy import verified_context
from certbot_smtp_dist.errors import ErrorCode
from certbot_smtp_dist.model import Failure, OAuth2Grant, Phase, Secret

ASSERTION_LIFETIME = 3600  # seconds; Google refuses an assertion that lives longer than an hour
# Seconds a token is kept at most, whatever the endpoint says: Microsoft's tokens last at most a day (its token
# lifetime policies' bound), Google's an hour.
MAX_LIFETIME = 24 * 3600
# Characters of an access token, at most: real ones are a few kilobytes (a JWT with many claims stays under the
# 16 KiB HTTP servers take in a header, where a bearer token travels: RFC 6750 §2.1). Every relay text of its
# session is scrubbed of it (scrub.py), at a cost in proportion to its length, on the event loop.
MAX_TOKEN = 16 * 1024
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=". The token goes into
# the SASL response as sent (XOAUTH2 and OAUTHBEARER end their fields with ^A, RFC 7628 §3.1): nothing else may.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
MAX_RESPONSE = 64 * 1024  # a token response is a few kilobytes; a hostile endpoint gets no more of our memory
_MAX_SAID = 200  # characters of a foreign library's words kept in a failure
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
    """Verified TLS 1.2+ against the system store plus `oauth2_ca_file` (RFC 6749 §3.2: the endpoint is HTTPS);
    one per trust configuration per run (loading the system store costs more than the request)."""
    return _context_for(grant.ca_file)


@functools.lru_cache(maxsize=16)
def _context_for(ca_file: Path | None) -> ssl.SSLContext:
    return verified_context(ca_file)


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


@dataclass(frozen=True, slots=True)
class Client:
    """A grant with its stored secret, parsed once per session: where to ask, as whom, and for a service account
    its signing key, loaded once."""

    grant: OAuth2Grant
    secret: Secret
    token_url: str
    client: str
    account: ServiceAccount | None = None
    signer: Any = None  # the service account's RSA private key

    def __repr__(self) -> str:
        return f"Client({_where(self.token_url)}, {self.client!r})"


def client(grant: OAuth2Grant, secret: Secret) -> Client:
    """The grant ready to use. A stored service account key that does not parse is a credential problem, not an
    outage: TokenFailure with SMTP_AUTH (permanent; asking again with the same key cannot succeed)."""
    if grant.service_account_credential is None:
        return Client(grant, secret, grant.token_url or "", grant.client_id or "")
    try:
        account = service_account(secret)
        signer = _rsa_key(account.private_key)
        if grant.token_url is None:  # a key stored before `credentials set` checked it (key_problem), or altered
            _require_https(account.token_uri)
    except ValueError as exc:  # our own words, never the key's
        detail = (f"stored credential {grant.service_account_credential!r} is not a usable service account key: "
                  f"{exc}; store a good one with `certbot-smtp-dist credentials set "
                  f"{grant.service_account_credential}`")
        raise TokenFailure(scrub.scrub_failure(Failure(ErrorCode.SMTP_AUTH, Phase.AUTH, detail), (secret,))) from exc
    return Client(grant, secret, grant.token_url or account.token_uri, account.client_email, account, signer)


def key_problem(text: str) -> str | None:
    """Why `text` cannot be stored as a service account key (`credentials set`), or None. Never quotes the key."""
    try:
        account = service_account(Secret(text))
        _rsa_key(account.private_key)
        _require_https(account.token_uri)
    except ValueError as exc:
        return str(exc)
    return None


def _require_https(token_uri: str) -> None:
    """RFC 6749 §3.2: the token endpoint MUST be reached over TLS (the signed assertion is a credential for an
    hour); urllib would as readily POST it over http:// or read a file:// as the answer."""
    parts = urllib.parse.urlsplit(token_uri)
    # One printable line without spaces, as config.token_url_problem holds the config's: every failure names it.
    if parts.scheme != "https" or not parts.hostname or not token_uri.isprintable() or " " in token_uri:
        raise ValueError("the service account key's token_uri is not an https:// URL")


def identity(c: Client, username: str) -> tuple[str, str, str, str]:
    """What a token is good for: (token URL, client, scope, user); the client of a service account is its
    client_email."""
    return (c.token_url, c.client, c.grant.scope, username)


def form(c: Client, username: str, now: float) -> tuple[bytes, tuple[Secret, ...]]:
    """The request body and every secret in it. Client credentials: RFC 6749 §4.4.2 with the client
    authenticated in the body (§2.3.1); service account: RFC 7523 §2.1 with a signed assertion."""
    if c.account is None:
        return urllib.parse.urlencode({
            "grant_type": "client_credentials", "client_id": c.client,
            "client_secret": c.secret.reveal(), "scope": c.grant.scope,
        }).encode("ascii"), (c.secret,)
    jwt = assertion(c.account, c.token_url, c.grant.scope, username, now, c.signer)
    return urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt.reveal(),
    }).encode("ascii"), (c.secret, c.account.private_key, jwt)


def assertion(account: ServiceAccount, audience: str, scope: str, subject: str, now: float,
              signer: Any = None) -> Secret:
    """An RS256 JWT (RFC 7519, RFC 7515) with the claims of RFC 7523 §3: `iss` the service account, `sub` the
    mailbox it acts for (domain-wide delegation), `aud` the token endpoint, and an hour of life at most."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    issued = int(now)
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": account.client_email, "sub": subject, "scope": scope, "aud": audience,
              "iat": issued, "exp": issued + ASSERTION_LIFETIME}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    key = signer if signer is not None else _rsa_key(account.private_key)
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
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


def request_token(c: Client, username: str, timeout: float) -> Token:
    """POST the grant to the token endpoint and parse the answer; blocking. Raises TokenFailure only."""
    secrets: tuple[Secret, ...] = (c.secret,)
    try:
        body, secrets = form(c, username, time.time())
        return _post(c, body, timeout, secrets)
    except TokenFailure:
        raise
    except Exception as exc:
        raise TokenFailure(_translate(exc, c.token_url, secrets)) from exc


async def fetch(c: Client, username: str, budget: float) -> Token:
    """`request_token` off the event loop, bounded by `budget` (the target's remaining time): a stalled endpoint
    cannot hold the run past the target's deadline."""
    try:
        return await offloop.call(lambda: request_token(c, username, max(budget, 0.1)), budget, "oauth2-token")
    except TimeoutError as exc:
        raise TokenFailure(unreachable(c.token_url, f"no answer within {budget:.1f}s")) from exc


def _post(c: Client, body: bytes, timeout: float, secrets: tuple[Secret, ...]) -> Token:
    url = c.token_url
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
    })
    # An opener of our own: no proxy from the environment sees the secret, no redirect resends it (RFC 6749 §3.2).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         urllib.request.HTTPSHandler(context=tls_context(c.grant)))
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
    if len(raw) > MAX_RESPONSE or not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise TokenFailure(unreachable(url, "the answer is not a token response (RFC 6749 §5.1)"))
    if str(doc.get("token_type", "")).lower() != "bearer":  # type: ignore[union-attr]
        raise TokenFailure(unreachable(url, "the token is not a Bearer token (RFC 6750)"))
    if not is_b64token(token):  # the endpoint issued it for this grant: asking again is no cure, SMTP_AUTH
        raise TokenFailure(Failure(ErrorCode.SMTP_AUTH, Phase.AUTH, (
            f"token endpoint {_where(url)} issued an access token outside RFC 6750 §2.1's syntax (b64token: ASCII "
            "letters, digits and -._~+/, then = padding); not sent to the relay")))
    return Token(Secret(token), _lifetime(doc.get("expires_in")))  # type: ignore[union-attr]


def is_b64token(token: str) -> bool:
    """Whether `token` may be sent as a Bearer token (RFC 6750 §2.1)."""
    return _B64TOKEN.fullmatch(token) is not None


def _lifetime(value: object) -> int | None:
    """RFC 6749 §5.1 `expires_in`: a positive number of seconds (Microsoft's v1 endpoint sends it as a string of
    digits), at most MAX_LIFETIME; None when there is none. The endpoint's number is not ours to do arithmetic on
    unbounded: 10**400 is valid JSON, and no float holds it."""
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not "²", a digit int() refuses
        digits = value.lstrip("0") or "0"
        value = int(digits) if len(digits) <= 12 else MAX_LIFETIME
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return min(value, MAX_LIFETIME)


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
        return unreachable(url, f"HTTP {exc.code}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            why = getattr(reason, "verify_message", None) or reason
            return unreachable(url, f"certificate not trusted: {_said(str(why), secrets)}")
        return unreachable(url, f"{type(reason).__name__}: {_said(str(reason), secrets)}")
    if isinstance(exc, (ssl.SSLError, socket.timeout, TimeoutError, OSError, http.client.HTTPException)):
        return unreachable(url, f"{type(exc).__name__}: {_said(str(exc), secrets)}")
    if isinstance(exc, ValueError):  # urllib's words about the URL (a stored key is checked by `client`)
        return unreachable(url, _said(str(exc), secrets))
    return unreachable(url, type(exc).__name__)


def _said(text: str, secrets: tuple[Secret, ...]) -> str:
    """Words of a foreign library in a failure, which may quote the endpoint (http.client's BadStatusLine is the
    status line as sent: terminal controls, or a secret of the request echoed): one printable line, every secret
    of the request masked, and only then cut (a cut first can halve a secret past recognition). The exception's
    class stays outside: while a secret is too short to mask (scrub.py withholds the text), it still says what
    went wrong."""
    clean = scrub.scrubber_of(secrets).text(scrub.one_line(text))
    return clean if len(clean) <= _MAX_SAID else clean[:_MAX_SAID - 3] + "..."


def unreachable(url: str, why: str) -> Failure:
    # The relay is never contacted without a token (Phase.CONNECT); SMTP_CONNECT is transient and spooled.
    return Failure(ErrorCode.SMTP_CONNECT, Phase.CONNECT, f"no OAuth 2.0 token from {_where(url)}: {why}")


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    # Never a query string or userinfo, which may carry anything (a service account key's token_uri is not the
    # config's, checked by config.token_url_problem).
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
