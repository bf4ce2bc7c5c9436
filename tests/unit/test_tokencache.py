"""The OAuth 2.0 token cache: sealed, bounded by expiry, and a miss on any doubt."""

from __future__ import annotations

import os
from pathlib import Path

from certbot_smtp_dist._internal.tokencache import MARGIN, TokenCache
from certbot_smtp_dist.model import Secret

KEY = bytes(range(32))
WHO = ("https://login.example.net/token", "client", "scope", "user@example.com")


def test_a_token_is_kept_until_the_margin_before_expiry(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, KEY)
    cache.put(WHO, Secret("tok-abc"), 3600, now=1000.0)
    hit = cache.get(WHO, now=1000.0 + 3600 - MARGIN - 1)
    assert hit is not None and hit.reveal() == "tok-abc"
    assert cache.get(("other", *WHO[1:]), now=1000.0) is None  # another identity
    assert cache.get(WHO, now=1000.0 + 3600 - MARGIN) is None
    assert list((tmp_path / "oauth2").iterdir()) == []  # the expired entry is removed


def test_the_entry_is_sealed_and_named_by_nothing_it_holds(tmp_path: Path) -> None:
    TokenCache(tmp_path, KEY).put(WHO, Secret("tok-abc"), 3600)
    [entry] = (tmp_path / "oauth2").iterdir()
    data = entry.read_bytes()
    assert b"tok-abc" not in data and b"user" not in data and "user" not in entry.name
    assert TokenCache(tmp_path, bytes(32)).get(WHO) is None  # another master key: a miss, never an error
    entry.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert TokenCache(tmp_path, KEY).get(WHO) is None  # altered: a miss


def test_a_planted_link_is_never_followed(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, KEY)
    cache.put(WHO, Secret("tok-abc"), 3600)
    [entry] = (tmp_path / "oauth2").iterdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    entry.unlink()
    os.symlink(victim, entry)
    assert cache.get(WHO) is None
    cache.put(WHO, Secret("tok-new"), 3600)  # refused, logged: the link stays, its target untouched
    assert victim.read_bytes() == b"keep"
