"""OAuth 2.0 access tokens kept between runs, sealed under a key derived from the master key, until near expiry.

One file per (token URL, client, scope, user) under `<state>/oauth2/`, named by an HMAC of that identity (the name
says nothing) and sealed with AES-256-GCM with the name as associated data, so a file renamed or altered does not
open. A token is kept until 5 minutes before the `expires_in` the endpoint gave (RFC 6749 §5.1); one the relay
refused is dropped. Any trouble reading the cache is a miss: the endpoint is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import stat
import time
from pathlib import Path

from certbot_smtp_dist._internal import files
from certbot_smtp_dist.model import Secret

log = logging.getLogger("certbot_smtp_dist")

MARGIN = 300  # seconds before expiry a token stops being used: a long session must not outlive it
DIRECTORY = "oauth2"
_SUFFIX = ".token"
_FORMAT = 1
_MAX_ENTRY = 64 * 1024  # a sealed token is a few kilobytes

Identity = tuple[str, str, str, str]  # token URL, client, scope, user


class TokenCache:
    """The sealed tokens of one state directory; `lock(identity)` keeps one fetch per identity within a run.
    get/put/drop do blocking file I/O: the transport runs them off the event loop (offloop.call)."""

    def __init__(self, state_dir: Path, key: bytes) -> None:
        self.directory = state_dir / DIRECTORY
        self._key = key
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"TokenCache({self.directory})"

    def lock(self, identity: Identity) -> asyncio.Lock:
        return self._locks.setdefault(self._name(identity), asyncio.Lock())

    def get(self, identity: Identity, now: float | None = None) -> Secret | None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        name = self._name(identity)
        try:
            sealed = _read_entry(self.directory / name)
            doc = json.loads(AESGCM(self._key).decrypt(sealed[:12], sealed[12:], self._aad(name)))
        except FileNotFoundError:
            return None
        except (OSError, InvalidTag, ValueError) as exc:  # OSError includes a planted link
            log.warning("OAuth 2.0 token cache entry %s unusable (%s); asking the endpoint", name, type(exc).__name__)
            return None
        from certbot_smtp_dist._internal.oauth2 import is_b64token

        token, not_after = doc.get("token"), doc.get("not_after")
        if not isinstance(token, str) or not isinstance(not_after, (int, float)):
            return None
        if not is_b64token(token):  # kept by an older version, which took any printable token: asked again
            self.drop(identity)
            return None
        if (time.time() if now is None else now) >= not_after:
            self.drop(identity)
            return None
        return Secret(token)

    def put(self, identity: Identity, token: Secret, expires_in: int | None, now: float | None = None) -> None:
        """Keep `token` until MARGIN seconds before it expires; a token without a known lifetime, or too short a
        one, is not kept."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if expires_in is None or expires_in <= MARGIN:
            return
        name = self._name(identity)
        not_after = (time.time() if now is None else now) + expires_in - MARGIN
        plain = json.dumps({"token": token.reveal(), "not_after": not_after}).encode()
        nonce = os.urandom(12)
        try:
            files.ensure_private_dir(self.directory)
            files.write_private(self.directory / name, nonce + AESGCM(self._key).encrypt(nonce, plain,
                                                                                         self._aad(name)))
        except OSError as exc:  # a cache that cannot be written costs a request, no more
            log.warning("OAuth 2.0 token not cached in %s: %s", self.directory, exc)

    def drop(self, identity: Identity) -> None:
        path = self.directory / self._name(identity)
        try:
            files.refuse_link(path)
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("OAuth 2.0 token cache entry %s not removed: %s", path, exc)

    def _name(self, identity: Identity) -> str:
        mac = hmac.new(self._key, "\x00".join(("name", *identity)).encode(), hashlib.sha256).hexdigest()
        return mac[:40] + _SUFFIX

    @staticmethod
    def _aad(name: str) -> bytes:
        return f"certbot-smtp-dist/oauth2-token/v{_FORMAT}\x00{name}".encode()


def _read_entry(path: Path) -> bytes:
    """A cache entry, cheaply and boundedly: a regular file only (a FIFO or device planted there never blocks the
    read), never through a link, at most _MAX_ENTRY bytes."""
    fd = files.open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = os.read(fd, _MAX_ENTRY + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_ENTRY:
        raise ValueError(f"{path} is larger than a token")
    return data
