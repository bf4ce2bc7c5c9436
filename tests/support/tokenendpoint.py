"""An OAuth 2.0 token endpoint over HTTPS on loopback, in a background thread (RFC 6749 §4.4, §5).

It checks the form of every request, counts them, answers a fresh token or a scripted error, and can be stopped
and restarted on the same port (an endpoint that is down, then back).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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


class TokenEndpoint:
    """``with TokenEndpoint(pki, expect) as ep:``; ``ep.url`` is the token URL, ``ep.tokens`` those it issued."""

    def __init__(self, pki: RelayPKI, expect: ClientCredentials, expires_in: int = 3600, port: int = 0) -> None:
        self.pki = pki
        self.expect = expect
        self.expires_in = expires_in
        self.port = port
        self.answer: Answer | None = None  # None: grant a token when the form is right, else 400 invalid_client
        self.tokens: list[str] = []
        self.problems: list[str] = []  # what a request got wrong, for the test to assert on
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/tenant/oauth2/v2.0/token"

    def start(self) -> TokenEndpoint:
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
            wanted = {"grant_type": "client_credentials", "client_id": self.expect.client_id,
                      "client_secret": self.expect.client_secret, "scope": self.expect.scope}
            got = {key: values[0] if len(values) == 1 else values for key, values in form.items()}
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
            if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                endpoint.problems.append(f"content type {self.headers.get('Content-Type')!r}")
            status, doc = endpoint.respond(urllib.parse.parse_qs(body, keep_blank_values=True))
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
