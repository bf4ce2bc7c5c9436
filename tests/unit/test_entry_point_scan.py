"""plugins._may_declare: the cheap test that lets a cold deploy skip pluggy's scan of every distribution's entry
points; it may answer True without cause, never False where importlib.metadata would find the group."""

from __future__ import annotations

import importlib.metadata
import sys
import zipfile
from pathlib import Path

import pytest

from certbot_smtp_dist import hookspecs
from certbot_smtp_dist._internal import plugins

GROUP = hookspecs.ENTRY_POINT_GROUP
_ORIGINAL_PATH = tuple(sys.path)  # the standard library and the stack, for the test that imports


def _dist(site: Path, name: str, entry_points: str | None, suffix: str = ".dist-info") -> None:
    info = site / f"{name}-1.0{suffix}"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def _found_by_importlib(group: str) -> list[str]:
    return [ep.name for d in importlib.metadata.distributions() for ep in d.entry_points if ep.group == group]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory as the whole search path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [str(site)])
    return site


def test_no_distribution_declares_the_group(site: Path) -> None:
    _dist(site, "other", "[console_scripts]\nother = other:main\n# [certbot_smtp_dist] in a comment\n")
    _dist(site, "bare", None)
    (site / "legacy-1.0.egg-info").write_text("Metadata-Version: 1.0\nName: legacy\n")  # an egg-info file
    _dist(site, "mentions", "[certbot.plugins]\nx = certbot_smtp_dist.certbot_plugin:Installer\n")
    assert _found_by_importlib(GROUP) == []
    assert plugins._may_declare(GROUP) is False


@pytest.mark.parametrize("text", ["[certbot_smtp_dist]\nx = x\n", "\n  [ certbot_smtp_dist ]\nx = x\n",
                                  "[console_scripts]\na = a:b\n[certbot_smtp_dist]\nx = x\n"])
@pytest.mark.parametrize("suffix", [".dist-info", ".egg-info"])
def test_a_declaring_distribution_is_always_seen(site: Path, text: str, suffix: str) -> None:
    _dist(site, "other", "[console_scripts]\nother = other:main\n")
    _dist(site, "ext", text, suffix)
    assert plugins._may_declare(GROUP) is True


def test_an_egg_on_the_path_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    egg = tmp_path / "ext-1.0-py3.11.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: ext\nVersion: 1.0\n")
    (egg / "EGG-INFO" / "entry_points.txt").write_text("[certbot_smtp_dist]\next = ext\n")
    monkeypatch.setattr(sys, "path", [str(egg)])
    assert _found_by_importlib(GROUP) == ["ext"]
    assert plugins._may_declare(GROUP) is True


def test_a_zip_archive_on_the_path_defers_to_pluggy(site: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ext-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: ext\nVersion: 1.0\n")
        zf.writestr("ext-1.0.dist-info/entry_points.txt", "[certbot_smtp_dist]\next = ext\n")
    monkeypatch.setattr(sys, "path", [str(site), str(archive)])
    assert plugins._may_declare(GROUP) is True


def test_the_working_directory_stands_for_an_empty_entry(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist(site, "ext", "[certbot_smtp_dist]\next = ext\n")
    monkeypatch.chdir(site)
    monkeypatch.setattr(sys, "path", [""])
    assert plugins._may_declare(GROUP) is True


def test_another_distribution_finder_defers_to_pluggy(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:
        def find_spec(self, *args: object) -> None:
            return None

        def find_distributions(self, *args: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    assert plugins._may_declare(GROUP) is True


def test_an_extension_found_is_loaded_as_pluggy_loads_it(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(site), *_ORIGINAL_PATH])
    (site / "smtp_dist_scan_probe.py").write_text("")
    _dist(site, "smtp_dist_scan_probe", "[certbot_smtp_dist]\nscanprobe = smtp_dist_scan_probe\n")
    try:
        pm = plugins.make_manager()
        assert pm.get_plugin("scanprobe") is sys.modules["smtp_dist_scan_probe"]
    finally:
        sys.modules.pop("smtp_dist_scan_probe", None)


# importlib.metadata splits entry_points.txt with str.splitlines() and strips each line with str.strip(): a carriage
# return alone, a form feed, a vertical tab, U+0085 or U+2028 ends a line, Unicode spaces pad a header, and the
# section name is the line stripped of every bracket at both ends.
ODD_HEADERS = {
    "cr-only": "[console_scripts]\ra = a:b\r[certbot_smtp_dist]\rx = x\r",
    "form-feed": "\f[certbot_smtp_dist]\nx = x\n",
    "vertical-tab": "a = b\v[certbot_smtp_dist]\nx = x\n",
    "nel": "\x85[certbot_smtp_dist]\nx = x\n",
    "line-separator": "\u2028[certbot_smtp_dist]\nx = x\n",
    "no-break-space": "\u00a0[certbot_smtp_dist]\nx = x\n",
    "double-brackets": "[[certbot_smtp_dist]]\nx = x\n",
}


@pytest.mark.parametrize("text", ODD_HEADERS.values(), ids=ODD_HEADERS.keys())
def test_a_header_importlib_reads_is_seen_however_it_is_spelled(site: Path, text: str) -> None:
    info = site / "ext-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ext\nVersion: 1.0\n")
    (info / "entry_points.txt").write_bytes(text.encode())
    assert _found_by_importlib(GROUP) == ["x"]
    assert plugins._may_declare(GROUP) is True


def test_an_extension_with_old_mac_line_endings_is_loaded(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(site), *_ORIGINAL_PATH])
    (site / "smtp_dist_scan_cr.py").write_text("")
    _dist(site, "smtp_dist_scan_cr", None)
    (site / "smtp_dist_scan_cr-1.0.dist-info" / "entry_points.txt").write_bytes(
        b"[console_scripts]\rcr = smtp_dist_scan_cr:main\r[certbot_smtp_dist]\rscancr = smtp_dist_scan_cr\r")
    try:
        pm = plugins.make_manager()
        assert pm.get_plugin("scancr") is sys.modules["smtp_dist_scan_cr"]
    finally:
        sys.modules.pop("smtp_dist_scan_cr", None)


def test_a_path_object_on_the_search_path_is_no_crash(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another certbot plugin in the same process may put a pathlib.Path on sys.path; importlib.metadata lists the
    distributions under it, and the test crashed on it (AttributeError) before any deploy could start."""
    _dist(site, "ext", "[certbot_smtp_dist]\next = ext\n")
    monkeypatch.setattr(sys, "path", [site])
    assert _found_by_importlib(GROUP) == ["ext"]
    assert plugins._may_declare(GROUP) is True
