"""Debian packages that must not be installed (they conflict with one that is), unpacked into a private prefix.

``apt-get download`` fetches each .deb once into ``debs/`` of a cache outside the checkout
(``$CERTBOT_SMTP_DIST_TEST_CACHE``, default ``/var/cache/certbot-smtp-dist-tests``), through a scratch directory so
an interrupted download never leaves a truncated .deb there; ``dpkg -x`` unpacks the packages into one prefix under
``unpacked/``. Nothing is installed: dpkg's database, maintainer scripts, users and services are not touched. A
runtime library the unpacked binary needs and the machine lacks (``ldd`` says "not found") is fetched and unpacked
into the same prefix, for ``LD_LIBRARY_PATH``.

Setuid and setgid bits are stripped before the prefix appears: a cached setuid-root copy of a mail server under
``/var/cache`` would be a standing local root risk, the tests run their servers as root anyway, and a setgid binary
ignores ``LD_LIBRARY_PATH`` and loses the parent-death signal a harness sets. The prefix is unpacked in a private
directory and renamed into place, with the version of every package in it, only once complete; one lock on the
cache serialises filling it (the venv and distro stages of ``make test`` may overlap on a workstation).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "CERTBOT_SMTP_DIST_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/certbot-smtp-dist-tests")
_DOWNLOAD_TIMEOUT = 180.0
_COMMAND_TIMEOUT = 60.0
#: Written last into a prefix, so its presence also says the prefix is complete: ``package version`` lines.
_VERSIONS = ".versions"


class Unavailable(RuntimeError):
    """The packages cannot be fetched, unpacked or run here; the message says why (a skip or CI-failure reason)."""


@dataclass(frozen=True, slots=True)
class Unpacked:
    """Packages unpacked under ``prefix``: every package's version, and the ``LD_LIBRARY_PATH`` its binaries need."""

    prefix: Path
    versions: tuple[tuple[str, str], ...]  # (package, Debian version): the requested ones first, then libraries
    library_path: str

    @property
    def version(self) -> str:
        """The first requested package's version, e.g. 4.96-15+deb12u11."""
        return self.versions[0][1]

    def path(self, relative: str | Path) -> Path:
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
    """One process at a time reads and fills the cache."""
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


def _version(deb: Path) -> str:
    result = _run(["dpkg-deb", "--field", str(deb), "Version"])
    if result.returncode != 0:
        raise Unavailable(f"dpkg-deb cannot read {deb}: {result.stderr.strip()}")
    return result.stdout.strip()


def _extract(package: str, deb: Path, prefix: Path) -> tuple[str, str]:
    """``dpkg -x`` into ``prefix``, then strip every setuid/setgid bit (see the module docstring)."""
    result = _run(["dpkg", "-x", str(deb), str(prefix)])
    if result.returncode != 0:
        raise Unavailable(f"dpkg -x {deb.name} failed: {result.stderr.strip()}")
    for path in prefix.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
            path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
    return package, _version(deb)


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
    if not binary.is_file():
        raise Unavailable(f"{binary} is not in the unpacked packages")
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": library_path}
    result = _run(["ldd", str(binary)], env=env)
    if result.returncode != 0 and "not a dynamic executable" not in result.stdout + result.stderr:
        raise Unavailable(f"ldd {binary} failed: {result.stderr.strip()}")
    return sorted({line.split()[0] for line in result.stdout.splitlines() if "=> not found" in line})


def _add_libraries(binary: Path, prefix: Path, debs: Path, libraries: Mapping[str, str]) -> list[tuple[str, str]]:
    """Unpack into ``prefix`` the package of each library ``binary`` lacks; fail naming any still missing."""
    added = []
    for soname in _missing_libraries(binary, _library_path(prefix)):
        package = libraries.get(soname)
        if package is None:
            raise Unavailable(f"{binary.name} needs {soname}, which is not installed (no package known for it)")
        added.append(_extract(package, _deb(package, debs), prefix))
    still = _missing_libraries(binary, _library_path(prefix))
    if still:
        raise Unavailable(f"{binary.name} still lacks {', '.join(still)} after unpacking its libraries; install "
                          f"the packages providing them ({', '.join(libraries.get(s, s) for s in still)})")
    return added


def _fill(work: Path, packages: Mapping[str, Path], debs: Path, binary: str,
          libraries: Mapping[str, str]) -> None:
    """Unpack ``packages`` and the libraries ``binary`` lacks into ``work``; record the versions last."""
    versions = [_extract(package, deb, work) for package, deb in packages.items()]
    versions += _add_libraries(work / binary, work, debs, libraries)
    work.chmod(0o755)  # the servers may drop to an unprivileged user that runs the binary from here
    (work / _VERSIONS).write_text("".join(f"{package} {version}\n" for package, version in versions))


def _read_versions(prefix: Path) -> tuple[tuple[str, str], ...]:
    pairs = [line.split(" ", 1) for line in (prefix / _VERSIONS).read_text().splitlines()]
    return tuple((package, version) for package, version in pairs)


def unpacked(name: str, packages: Sequence[str], *, binary: str | Path,
             libraries: Mapping[str, str] | None = None) -> Unpacked:
    """``packages`` unpacked together (once; later calls reuse the cache) with every library ``binary`` needs.

    ``name`` names the prefix (``unpacked/NAME-DIGEST``, the digest of the .deb files it is made of, so a newer
    cached .deb gets a fresh prefix); ``binary`` is a path inside the packages (``usr/sbin/exim4``) that ``ldd``
    checks; ``libraries`` maps the sonames it may need to the Debian packages providing them (the binary's own
    ``Depends``), fetched only when the machine lacks them. Raises :class:`Unavailable` saying what is missing.
    """
    root = cache_root()
    debs = root / "debs"
    with _locked(root):
        found = {package: _deb(package, debs) for package in packages}
        digest = hashlib.sha256("\n".join(deb.name for deb in found.values()).encode()).hexdigest()[:12]
        prefix = root / "unpacked" / f"{name}-{digest}"
        if not (prefix / _VERSIONS).exists():
            shutil.rmtree(prefix, ignore_errors=True)  # not one published here (the rename is atomic): unused
            prefix.parent.mkdir(mode=0o755, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=prefix.parent))
            try:
                _fill(work, found, debs, str(binary), libraries or {})
                work.rename(prefix)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        versions = _read_versions(prefix)
    library_path = _library_path(prefix)
    missing = _missing_libraries(prefix / binary, library_path)  # a library removed since the prefix was made
    if missing:
        raise Unavailable(f"{binary} in {prefix} lacks {', '.join(missing)}; remove {prefix} to unpack it again")
    return Unpacked(prefix, versions, library_path)
