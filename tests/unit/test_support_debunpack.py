"""Self-tests of tests/support/debunpack.py on .deb files built here (no download: the cache already holds them)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support import ci, debunpack


def _build(tmp_path: Path, package: str, version: str, files: dict[str, int]) -> Path:
    """A .deb of ``package`` holding a copy of /bin/true at each path in ``files``, with that mode."""
    tree = tmp_path / "build" / f"{package}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: Test <test@example.com>\nDescription: test\n")
    for relative, mode in files.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("/bin/true", tree / relative)
        (tree / relative).chmod(mode)
    deb = tmp_path / "cache/debs" / f"{package}_{version}_all.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True, timeout=60)
    return deb


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for tool in ("dpkg", "dpkg-deb", "ldd"):
        ci.require_tool(tool, "apt-get install dpkg libc-bin")
    monkeypatch.setenv(debunpack.CACHE_ENV, str(tmp_path / "cache"))
    _build(tmp_path, "mta", "1.0-1", {"usr/sbin/mta": 0o6755, "usr/lib/mta/helper": 0o4750})
    _build(tmp_path, "mta-cf", "1.0-2", {"usr/share/mta/cf": 0o2755})
    return tmp_path / "cache"


def test_several_packages_one_prefix_versions_recorded_setid_bits_stripped(cache: Path) -> None:
    unpacked = debunpack.unpacked("mta", ["mta", "mta-cf"], binary="usr/sbin/mta")
    assert unpacked.versions == (("mta", "1.0-1"), ("mta-cf", "1.0-2")) and unpacked.version == "1.0-1"
    assert unpacked.prefix.parent == cache / "unpacked" and unpacked.prefix.name.startswith("mta-")
    modes = {p: stat.S_IMODE(unpacked.path(p).stat().st_mode)
             for p in ("usr/sbin/mta", "usr/lib/mta/helper", "usr/share/mta/cf")}
    assert modes == {"usr/sbin/mta": 0o755, "usr/lib/mta/helper": 0o750, "usr/share/mta/cf": 0o755}
    assert sorted(p.name for p in unpacked.prefix.parent.iterdir()) == [unpacked.prefix.name]  # no scratch left


def test_a_published_prefix_is_reused_and_a_newer_deb_gets_a_fresh_one(tmp_path: Path, cache: Path) -> None:
    first = debunpack.unpacked("mta", ["mta"], binary="usr/sbin/mta")
    (first.prefix / "mark").touch()
    assert debunpack.unpacked("mta", ["mta"], binary="usr/sbin/mta").prefix == first.prefix
    assert (first.prefix / "mark").exists()
    _build(tmp_path, "mta", "1.1-1", {"usr/sbin/mta": 0o755})
    newer = debunpack.unpacked("mta", ["mta"], binary="usr/sbin/mta")
    assert newer.version == "1.1-1" and newer.prefix != first.prefix and first.prefix.is_dir()


def test_a_binary_not_in_the_packages_is_unavailable_and_nothing_is_published(cache: Path) -> None:
    with pytest.raises(debunpack.Unavailable, match="usr/sbin/absent is not in the unpacked packages"):
        debunpack.unpacked("mta", ["mta"], binary="usr/sbin/absent")
    assert list((cache / "unpacked").iterdir()) == []
