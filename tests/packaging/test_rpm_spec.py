"""The RPM spec parses with rpmspec and installs, from this tree, what the README promises and the Debian
package installs.

The spec is not built here: Fedora's Python and systemd macros and the python3dist() providers do not exist
on Debian (see the spec's header). What Debian's rpm 4.18 can check is checked: the spec parses, its version
and requirements match the code and setup.cfg, every file it installs exists in the tree with the promised
mode and is listed in %files, and no macro other than Fedora's known ones is left unexpanded (a misspelt
%systemd_* would otherwise only show up on Fedora).
"""

from __future__ import annotations

import re

import pytest
from support.distpkg import (
    MANPAGES,
    PRIVATE_DIRS,
    REPO,
    SHIPPED,
    code_version,
    require_tool,
    run,
    runtime_floors,
)

pytestmark = pytest.mark.packaging

SPEC = REPO / "packaging/rpm/certbot-smtp-dist.spec"
BUILDROOT = "/BUILDROOT"
UNITDIR = "/usr/lib/systemd/system"
# Fedora's values for the directory macros Debian's rpm lacks (_unitdir, python3_sitelib) or sets otherwise
# (_sharedstatedir is /usr/com there).
FEDORA_DEFINES = {
    "_unitdir": UNITDIR,
    "_sharedstatedir": "/var/lib",
    "python3_sitelib": "/usr/lib/python3.12/site-packages",
    "buildroot": BUILDROOT,
}
# Macros of pyproject-rpm-macros and systemd-rpm-macros: unknown to Debian's rpm, so they stay as written.
FEDORA_MACROS = {
    "pyproject_buildrequires", "pyproject_wheel", "pyproject_install", "pyproject_save_files",
    "pyproject_check_import", "pyproject_files", "pytest",
    "systemd_post", "systemd_preun", "systemd_postun", "systemd_postun_with_restart",
}
SPEC_KEYWORDS = {
    "description", "prep", "generate_buildrequires", "build", "install", "check", "post", "preun", "postun",
    "files", "changelog", "doc", "dir", "attr",
}


def rpmspec(*args: str) -> str:
    tool = require_tool("rpmspec", "apt-get install rpm")
    defines = [arg for name, value in FEDORA_DEFINES.items() for arg in ("--define", f"{name} {value}")]
    return run([tool, *defines, *args, SPEC]).stdout


@pytest.fixture(scope="module")
def expanded() -> str:
    """The spec as rpmspec -P expands it, comments and changelog dropped."""
    text = rpmspec("-P").split("\n%changelog", 1)[0]
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def section(expanded: str, name: str) -> str:
    match = re.search(rf"^%{name}\b.*?$(.*?)(?=^%(?:prep|generate_buildrequires|build|install|check|post|preun"
                      rf"|postun|files|changelog)\b|\Z)", expanded, re.MULTILINE | re.DOTALL)
    assert match, f"no %{name} section"
    return match.group(1)


def test_version_and_requirements() -> None:
    assert rpmspec("-q", "--qf", "%{VERSION}\n").strip() == code_version()
    requires = set(rpmspec("-q", "--requires").splitlines())
    floors = {f"python3-{name} >= {floor}" for name, floor in runtime_floors().items()}
    assert floors <= requires
    assert rpmspec("-q", "--qf", "[%{RECOMMENDNEVRS}\n]").split() == ["certbot", ">=", "2.1"]
    assert "python3-certbot-smtp-dist = " in rpmspec("-q", "--provides")


def test_installs_the_promised_files_from_the_tree(expanded: str) -> None:
    installed = {
        dst.removeprefix(BUILDROOT): (int(mode, 8), src)
        for mode, src, dst in re.findall(r"^install -Dpm (\d+) (\S+) (\S+)$", section(expanded, "install"),
                                         re.MULTILINE)
    }
    promised = {dst.format(unitdir=UNITDIR): (mode, src) for src, dst, mode in SHIPPED}
    promised |= {dst: (0o644, src) for src, dst in MANPAGES}
    assert installed == promised
    assert all((REPO / src).is_file() for _mode, src in installed.values())
    dirs = re.findall(r"^install -dm (\d+) (\S+)$", section(expanded, "install"), re.MULTILINE)
    assert {path.removeprefix(BUILDROOT): mode for mode, path in dirs} == {path: "0700" for path in PRIVATE_DIRS}


def test_files_section_owns_what_is_installed(expanded: str) -> None:
    files = section(expanded, "files").splitlines()
    for _src, dst, _mode in SHIPPED:
        assert dst.format(unitdir=UNITDIR) in files
    for path in PRIVATE_DIRS:
        assert f"%dir %attr(0700,root,root) {path}" in files
    assert "/usr/bin/certbot-smtp-dist" in files
    for _src, dst in MANPAGES:  # brp-compress gzips them: the glob owns whichever suffix it gives
        assert f"{dst}*" in files


def test_timer_is_handled_by_the_systemd_scriptlets(expanded: str) -> None:
    units = "certbot-smtp-dist-retry.service certbot-smtp-dist-retry.timer"
    assert f"%systemd_post {units}" in section(expanded, "post")
    assert f"%systemd_preun {units}" in section(expanded, "preun")
    assert "%systemd_postun_with_restart certbot-smtp-dist-retry.timer" in section(expanded, "postun")


def test_only_fedora_macros_stay_unexpanded(expanded: str) -> None:
    left = set(re.findall(r"%\{?\??!?([A-Za-z_][A-Za-z0-9_]*)", expanded))
    assert left - FEDORA_MACROS - SPEC_KEYWORDS == set()
