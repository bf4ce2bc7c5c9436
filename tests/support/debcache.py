"""Debian packages unpacked (never installed) into a cache outside the checkout, for test peers that conflict.

Some MTAs the suite runs conflict with the installed Postfix as Debian packages (they all provide
``mail-transport-agent``), so they are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into
``CACHE_ROOT/<name>/root``, once per machine: later runs (and the second, distro-Python pass of ``make test``) reuse
the tree. Nothing is configured, no maintainer script runs, and the dpkg database is not touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where unpacked trees live; ``$CERTBOT_SMTP_DIST_TEST_CACHE`` moves it (for a machine without /var/cache).
CACHE_ROOT = Path(os.environ.get("CERTBOT_SMTP_DIST_TEST_CACHE", "/var/cache/certbot-smtp-dist-tests"))
_APT_TIMEOUT = 300.0


class DebCacheError(RuntimeError):
    """The packages could not be downloaded or unpacked; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A tree that ``dpkg -x`` filled, and the Debian version of the package it is named after."""

    root: Path
    version: str


def tools_missing() -> list[str]:
    """The commands :func:`unpacked` needs that are not on this machine."""
    return [name for name in ("apt-get", "dpkg", "dpkg-deb") if shutil.which(name) is None]


def unpacked(
    name: str,
    packages: Sequence[str],
    *,
    ready: Callable[[Path], bool],
    finish: Callable[[Path], None] = lambda root: None,
) -> Unpacked:
    """The tree for ``name`` (``packages[0]``'s version recorded beside it), downloaded and unpacked on first use.

    ``ready(root)`` says whether an existing tree is usable; ``finish(root)`` adjusts a fresh one before it is
    published (an atomic rename, under a lock, so concurrent first uses never see half a tree).
    """
    base = CACHE_ROOT / name
    root, version_file = base / "root", base / "version"
    if ready(root) and version_file.is_file():
        return Unpacked(root, version_file.read_text().strip())
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready(root) and version_file.is_file():
            return Unpacked(root, version_file.read_text().strip())
        shutil.rmtree(root, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=base))
        try:
            version = _download_and_unpack(packages, staging)
            finish(staging / "root")
            if not ready(staging / "root"):
                raise DebCacheError(f"{', '.join(packages)} unpacked into {staging / 'root'} but are not usable")
            os.rename(staging / "root", root)
            version_file.write_text(version + "\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Unpacked(root, version)


def _download_and_unpack(packages: Sequence[str], staging: Path) -> str:
    debs = staging / "debs"
    debs.mkdir()
    # apt's _apt sandbox user cannot write into a root-only directory; apt then warns and downloads as root.
    debs.chmod(0o755)
    _run(["apt-get", "download", *packages], cwd=debs, what="apt-get download")
    files = sorted(debs.glob("*.deb"))
    if len(files) != len(packages):
        raise DebCacheError(f"apt-get download {' '.join(packages)} left {[f.name for f in files]} in {debs}")
    for deb in files:
        _run(["dpkg", "-x", str(deb), str(staging / "root")], cwd=staging, what=f"dpkg -x {deb.name}")
    first = next(f for f in files if f.name.startswith(f"{packages[0]}_"))
    return _run(["dpkg-deb", "-f", str(first), "Version"], cwd=staging, what="dpkg-deb -f").strip()


def _run(argv: list[str], *, cwd: Path, what: str) -> str:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=_APT_TIMEOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DebCacheError(f"{what} failed: {exc}") from exc
    if result.returncode != 0:
        raise DebCacheError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout
