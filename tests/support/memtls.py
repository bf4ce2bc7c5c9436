"""A TLS handshake in memory (ssl.MemoryBIO, OpenSSL on both ends, no socket): what a client context makes of a
server's certificate, as the real verification decides it, with no port and no event loop."""

from __future__ import annotations

import ssl

MAX_FLIGHTS = 10  # a TLS 1.3 handshake takes two flights each way


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> ssl.SSLError | None:
    """The client's refusal (ssl.SSLCertVerificationError for a certificate it does not trust), None when the
    handshake completed."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(MAX_FLIGHTS):
        try:
            tls_client.do_handshake()
            return None
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        s_in.write(c_out.read())
        try:
            tls_server.do_handshake()
        except ssl.SSLError:
            pass  # wants more, or refused by the client's alert: the client's side says which
        c_in.write(s_out.read())
    raise AssertionError("the in-memory handshake did not finish")
