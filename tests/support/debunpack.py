"""Debian packages that must not be installed (they conflict with one that is), unpacked into a private prefix.

``apt-get download`` fetches a package's .deb once into a cache outside the checkout
(``$CERTBOT_SMTP_DIST_TEST_CACHE``, default ``/var/cache/certbot-smtp-dist-tests``); ``dpkg -x`` unpacks it into a
prefix beside it. Nothing is installed: dpkg's database, maintainer scripts, users and services are not touched. A
runtime library the unpacked binary needs and the machine lacks (``ldd`` says "not found") is fetched and unpacked
into the same prefix, for ``LD_LIBRARY_PATH``. Setuid and setgid bits are stripped before the prefix appears: a
cached setuid-root copy of a mail server under ``/var/cache`` would be a standing local root risk, and the tests run
their servers as root anyway.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "CERTBOT_SMTP_DIST_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/certbot-smtp-dist-tests")
_DOWNLOAD_TIMEOUT = 180.0
_COMMAND_TIMEOUT = 60.0
_COMPLETE = ".complete"


class Unavailable(RuntimeError):
    """The package cannot be fetched, unpacked or run here; the message says why (a skip or CI-failure reason)."""


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A package unpacked under ``prefix``: its version, and the ``LD_LIBRARY_PATH`` its binaries need."""

    package: str
    version: str
    deb: Path
    prefix: Path
    library_path: str

    def path(self, relative: str) -> Path:
        return self.prefix / relative


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = _COMMAND_TIMEOUT,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL, env=None if env is None else dict(env))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{argv[0]} failed: {exc}") from exc


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process at a time fills a cache directory (the venv and distro stages may overlap on a workstation)."""
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        handle = (directory / ".lock").open("a")
    except OSError as exc:
        raise Unavailable(f"cannot use the package cache {directory}: {exc} (set ${CACHE_ENV})") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _deb(package: str, debs: Path) -> Path:
    """The cached .deb of ``package`` (the newest one if several), downloaded first if there is none."""
    cached = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime_ns)
    if cached:
        return cached[-1]
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{package} is not cached in {debs} and apt-get is not available to download it")
    debs.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Into a scratch directory first, so an interrupted download never leaves a truncated .deb in the cache.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as scratch:
        # The directory is root's; without this apt warns that its _apt sandbox user cannot write there.
        result = _run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", package], cwd=Path(scratch),
                      timeout=_DOWNLOAD_TIMEOUT)
        fetched = sorted(Path(scratch).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not fetched:
            tail = " ".join((result.stderr or result.stdout).split()[-40:])
            raise Unavailable(f"apt-get download {package} failed (exit {result.returncode}): {tail}")
        return fetched[-1].rename(debs / fetched[-1].name)


def _field(deb: Path, name: str) -> str:
    result = _run(["dpkg-deb", "--field", str(deb), name])
    if result.returncode != 0:
        raise Unavailable(f"dpkg-deb cannot read {deb}: {result.stderr.strip()}")
    return result.stdout.strip()


def _extract(deb: Path, prefix: Path) -> None:
    """``dpkg -x`` into ``prefix``, then strip every setuid/setgid bit (see the module docstring)."""
    result = _run(["dpkg", "-x", str(deb), str(prefix)])
    if result.returncode != 0:
        raise Unavailable(f"dpkg -x {deb.name} failed: {result.stderr.strip()}")
    for path in prefix.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))


def _library_path(prefix: Path) -> str:
    """The directories of the prefix's shared libraries (``lib/...``, ``usr/lib/...``), for ``LD_LIBRARY_PATH``."""
    dirs = set()
    for found in prefix.rglob("*.so*"):
        parts = found.relative_to(prefix).parts
        if parts[0] in ("lib", "lib64") or parts[:2] in (("usr", "lib"), ("usr", "lib64")):
            dirs.add(found.parent)
    return ":".join(str(d) for d in sorted(dirs))


def _missing_libraries(binary: Path, library_path: str) -> list[str]:
    """Sonames ``ldd`` cannot resolve for ``binary`` with ``library_path`` (ldd runs the loader, not the binary)."""
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": library_path}
    result = _run(["ldd", str(binary)], env=env)
    if result.returncode != 0 and "not a dynamic executable" not in result.stdout + result.stderr:
        raise Unavailable(f"ldd {binary} failed: {result.stderr.strip()}")
    return sorted({line.split()[0] for line in result.stdout.splitlines() if "=> not found" in line})


def _add_libraries(binary: Path, prefix: Path, debs: Path, libraries: Mapping[str, str]) -> None:
    """Unpack into ``prefix`` the package of each library ``binary`` lacks; fail naming any still missing."""
    for soname in _missing_libraries(binary, _library_path(prefix)):
        package = libraries.get(soname)
        if package is None:
            raise Unavailable(f"{binary.name} needs {soname}, which is not installed (no package known for it)")
        _extract(_deb(package, debs), prefix)
    still = _missing_libraries(binary, _library_path(prefix))
    if still:
        raise Unavailable(f"{binary.name} still lacks {', '.join(still)} after unpacking its libraries; install "
                          f"the packages providing them ({', '.join(libraries.get(s, s) for s in still)})")


def unpacked(package: str, *, binary: str, libraries: Mapping[str, str]) -> Unpacked:
    """``package`` unpacked (once; later calls reuse the cache) with every library ``binary`` needs.

    ``binary`` is a path inside the package (``usr/sbin/exim4``); ``libraries`` maps the sonames it may need to
    the Debian packages providing them (the package's own ``Depends``).
    """
    cache = cache_root() / package
    debs = cache / "debs"
    with _locked(cache):
        deb = _deb(package, debs)
        prefix = cache / deb.name.removesuffix(".deb")
        if not (prefix / _COMPLETE).exists():
            shutil.rmtree(prefix, ignore_errors=True)
            # Unpacked in a private directory and moved into place only once stripped and complete.
            work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
            try:
                _extract(deb, work)
                _add_libraries(work / binary, work, debs, libraries)
                (work / _COMPLETE).touch()
                work.chmod(0o755)  # the servers drop to an unprivileged user that runs the binary from here
                work.rename(prefix)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        version = _field(deb, "Version")
    library_path = _library_path(prefix)
    missing = _missing_libraries(prefix / binary, library_path)  # a library removed since the prefix was made
    if missing:
        raise Unavailable(f"{binary} in {prefix} lacks {', '.join(missing)}; remove {prefix} to unpack it again")
    return Unpacked(package, version, deb, prefix, library_path)
