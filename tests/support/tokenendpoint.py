"""An OAuth 2.0 token endpoint over HTTPS on loopback, in a background thread (RFC 6749 §4.4, §5).

It checks the form of every request, counts them, answers a fresh token or a scripted error, and can be stopped
and restarted on the same port (an endpoint that is down, then back).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .pki import RelayPKI


@dataclass
class Answer:
    """What the endpoint says next: a status and a JSON body (an error per RFC 6749 §5.2 when not 200)."""

    status: int = 200
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientCredentials:
    """The grant the endpoint accepts (RFC 6749 §4.4.2)."""

    client_id: str
    client_secret: str
    scope: str


@dataclass(frozen=True)
class ServiceAccountGrant:
    """The JWT-bearer grant the endpoint accepts (RFC 7523 §2.1): signed by this key, with these claims."""

    public_key: rsa.RSAPublicKey
    client_email: str
    subject: str
    scope: str


def service_account_key(client_email: str, token_uri: str) -> tuple[str, rsa.RSAPublicKey]:
    """A Google-style service account JSON key with a fresh RSA key, and its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    doc = {"type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
           "client_email": client_email, "client_id": "1234", "token_uri": token_uri}
    return json.dumps(doc, indent=2), key.public_key()


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_problems(assertion: str, expect: ServiceAccountGrant, audience: str) -> list[str]:
    """What is wrong with an RS256 assertion (RFC 7515 signature, RFC 7523 §3 claims); [] when nothing."""
    try:
        head, body, sig = assertion.split(".")
        header, claims = json.loads(_b64url(head)), json.loads(_b64url(body))
        expect.public_key.verify(_b64url(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, InvalidSignature) as exc:
        return [f"assertion does not verify: {type(exc).__name__}"]
    problems = [] if header == {"alg": "RS256", "typ": "JWT"} else [f"header {header}"]
    wanted = {"iss": expect.client_email, "sub": expect.subject, "scope": expect.scope, "aud": audience}
    problems += [f"claim {k}" for k, v in wanted.items() if claims.get(k) != v]
    now = time.time()
    if not (now - 300 <= claims.get("iat", 0) <= now + 5 and 0 < claims.get("exp", 0) - claims["iat"] <= 3600):
        problems.append("iat/exp: lifetime must be at most an hour, issued now")
    return problems


class TokenEndpoint:
    """``with TokenEndpoint(pki, expect) as ep:``; ``ep.url`` is the token URL, ``ep.tokens`` those it issued."""

    def __init__(self, pki: RelayPKI, expect: ClientCredentials | ServiceAccountGrant, expires_in: int = 3600,
                 port: int = 0) -> None:
        self.pki = pki
        self.expect = expect
        self.expires_in = expires_in
        self.port = port
        self.answer: Answer | None = None  # None: grant a token when the form is right, else 400 invalid_client
        self.tokens: list[str] = []
        self.assertions: list[str] = []  # every JWT received, for leak checks
        self.problems: list[str] = []  # what a request got wrong, for the test to assert on
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.stall = 0.0  # seconds each request is held before it is answered (a stalled endpoint)
        # Bytes written instead of any HTTP answer (a hostile or broken endpoint); `echo` in them is replaced by
        # what the request sent as its secret (client_secret, or the assertion), as an endpoint quoting it would.
        self.raw: bytes | None = None
        self._released = threading.Event()  # set by stop(): a stalled request is let go

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/tenant/oauth2/v2.0/token"

    def start(self) -> TokenEndpoint:
        self._released.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        server.socket = self.pki.server_context().wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="token-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> TokenEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, form: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            got = {key: values[0] if len(values) == 1 else values for key, values in form.items()}
            if isinstance(self.expect, ServiceAccountGrant):
                jwt = got.get("assertion")
                wanted = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt}
                if isinstance(jwt, str):
                    self.assertions.append(jwt)
                    self.problems += jwt_problems(jwt, self.expect, self.url)
                if not isinstance(jwt, str) or self.problems:
                    wanted["grant_type"] = "(a valid assertion)"
            else:
                wanted = {"grant_type": "client_credentials", "client_id": self.expect.client_id,
                          "client_secret": self.expect.client_secret, "scope": self.expect.scope}
            if got != wanted:
                self.problems.append(f"form fields {sorted(got)} do not match the grant")
            if self.answer is not None:
                return self.answer.status, dict(self.answer.body)
            if got != wanted:
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: bad secret"}
            token = f"tok-{self.requests}-{'x' * 24}.a1B2c3D4e5"
            self.tokens.append(token)
            return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}


def _handler(endpoint: TokenEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 65536)).decode("utf-8", "replace")
            if endpoint.stall:
                endpoint._released.wait(endpoint.stall)
            if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                endpoint.problems.append(f"content type {self.headers.get('Content-Type')!r}")
            form = urllib.parse.parse_qs(body, keep_blank_values=True)
            status, doc = endpoint.respond(form)
            if endpoint.raw is not None:
                sent = (form.get("client_secret") or form.get("assertion") or [""])[0]
                self.wfile.write(endpoint.raw.replace(b"echo", sent.encode()))
                self.close_connection = True
                return
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")  # RFC 6749 §5.1
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler
