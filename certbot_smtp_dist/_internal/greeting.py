"""The name we greet a relay with in EHLO (RFC 5321 §4.1.1.1): the FQDN, else an address literal of our end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import re
import socket
import threading

from certbot_smtp_dist._internal import abandon

# RFC 5321 §4.1.2: Domain = sub-domain *("." sub-domain), each Let-dig [Ldh-str]; RFC 1035 §2.3.4 lengths.
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Names that say "this host" to nobody but this host: never an identity to present to a relay.
_LOCAL_ONLY = ("localhost", "localdomain", "local", "localhost.localdomain")
LOOKUP_WAIT = 1.0  # seconds the FQDN lookup (resolver) may take, once per process

_found: list[str | None] = []  # the FQDN lookup's answer, once per process ([None]: none)
_pending: list[concurrent.futures.Future[str | None]] = []  # the lookup under way, shared by concurrent sessions
_lock = threading.Lock()


def is_fqdn(name: str) -> bool:
    """A domain of at least two labels (RFC 5321 §2.3.5) that names this host to others too."""
    labels = name.rstrip(".").split(".")
    if len(labels) < 2 or len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return False
    lowered = name.rstrip(".").lower()
    return lowered not in _LOCAL_ONLY and not lowered.endswith((".localdomain", ".localhost"))


@functools.lru_cache(maxsize=16)  # a session's own end: the same few addresses, session after session
def address_literal(ip: str) -> str:
    """RFC 5321 §4.1.3: `[192.0.2.1]`, `[IPv6:2001:db8::1]` (an IPv4-mapped IPv6 address as IPv4)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return f"[{addr}]" if addr.version == 4 else f"[IPv6:{addr.compressed}]"


def helo_name_problem(value: str) -> str | None:
    """Why `value` cannot be a target's `helo_name`, or None: a fully qualified domain or an address literal."""
    if value.startswith("[") and value.endswith("]"):
        inner = value[1:-1]
        text = inner[5:] if inner[:5].lower() == "ipv6:" else inner
        try:
            if "%" in text:  # RFC 5321 §4.1.3 IPv6-addr holds no zone; ip_address takes one of any characters
                raise ValueError(text)
            addr = ipaddress.ip_address(text)
        except ValueError:
            return f"{value[:80]!r} is not an address literal ([192.0.2.1] or [IPv6:2001:db8::1])"
        if (addr.version == 6) != (inner[:5].lower() == "ipv6:"):
            return f"{value[:80]!r}: an IPv6 literal is written [IPv6:...], an IPv4 one [a.b.c.d] (RFC 5321 §4.1.3)"
        return None
    if not is_fqdn(value):
        return (f"{value[:80]!r} is not a fully qualified domain name (e.g. mail.example.com) or an address "
                "literal ([192.0.2.1]); RFC 5321 §4.1.1.1")
    return None


async def local_name(local_ip: str | None) -> str:
    """Our FQDN when the host has one, else the address literal of our end of the connection (`local_ip`)."""
    fqdn = await _fqdn()
    if fqdn is not None:
        return fqdn
    if local_ip:
        with contextlib.suppress(ValueError):
            return address_literal(local_ip)
    return "[127.0.0.1]"  # pragma: no cover - a connected TCP socket always has a local address


async def _fqdn() -> str | None:
    """The host name if it is fully qualified, else the canonical name the resolver gives it; looked up once per
    process in a thread of its own (`lookup`), which every session greeting meanwhile waits for (a resolver that
    never answers costs `LOOKUP_WAIT`, once)."""
    with _lock:
        if _found:
            return _found[0]
    name = socket.gethostname()
    if is_fqdn(name):
        return _remember(name.rstrip("."))
    try:
        canon = await asyncio.wait_for(asyncio.wrap_future(_lookup(name)), LOOKUP_WAIT)
    except (asyncio.TimeoutError, TimeoutError):
        canon = None
    return _remember(canon.rstrip(".") if canon and is_fqdn(canon) else None)


def _lookup(name: str) -> concurrent.futures.Future[str | None]:
    """The one canonical-name lookup of the process, started by the first session to greet."""
    with _lock:
        if _pending:
            return _pending[0]
        answer: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        answer.set_running_or_notify_cancel()  # a waiter that gives up must not cancel it for the others
        _pending.append(answer)

    def work() -> None:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME)
            canon: str | None = next((i[3] for i in infos if i[3]), None)
        except (OSError, UnicodeError):
            canon = None
        answer.set_result(canon)

    abandon.start(work, "fqdn")
    return answer


def _remember(value: str | None) -> str | None:
    with _lock:
        if not _found:
            _found.append(value)
        return _found[0]
