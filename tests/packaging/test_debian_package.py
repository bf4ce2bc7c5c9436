"""The Debian package, built from this tree by packaging/build-deb, holds what the README promises and runs on
Debian 12's own Python stack and certbot.

The .deb is built once per module (about 10 s, the unit tests run inside the build included) and unpacked
into a scratch root; nothing is installed on the machine. Debian's /usr/bin/python3 and /usr/bin/certbot then
run the unpacked code through PYTHONPATH, from a directory outside the tree, so neither the checkout nor the
test venv can stand in for the package.
"""

from __future__ import annotations

import configparser
import gzip
import re
import stat
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from support.ci import unavailable
from support.distpkg import (
    MANPAGES,
    PRIVATE_DIRS,
    REPO,
    SHIPPED,
    SYSTEM_PATH,
    code_version,
    require_tool,
    run,
    runtime_floors,
)

pytestmark = pytest.mark.packaging

PACKAGE = "python3-certbot-smtp-dist"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
DEBIAN_PYTHON = Path("/usr/bin/python3")
DEBIAN_CERTBOT = Path("/usr/bin/certbot")
BUILD_TIMEOUT = 300
TIMER = "certbot-smtp-dist-retry.timer"
TIMER_WANTS = f"etc/systemd/system/timers.target.wants/{TIMER}"  # what `systemctl enable` creates
HELPER_STATE = f"var/lib/systemd/deb-systemd-helper-enabled/{TIMER}.dsh-also"

UNITDIR = "/lib/systemd/system"  # where Debian 12 (debhelper 13.11, before the /usr move) ships units
SHIPPED_HERE = [(src, dst.format(unitdir=UNITDIR), mode) for src, dst, mode in SHIPPED]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """packaging/build-deb's .deb, built once for the module (unit tests run inside the build)."""
    require_tool("dpkg-buildpackage", "apt-get install dpkg-dev")
    require_tool("dpkg-deb", "apt-get install dpkg")
    checkbuilddeps = require_tool("dpkg-checkbuilddeps", "apt-get install dpkg-dev")
    unmet = run_unchecked([checkbuilddeps, REPO / "packaging/debian/control"])
    if unmet.returncode != 0:
        unavailable(f"Debian build dependencies missing, see `bash .ci/run`: {unmet.stderr.strip()}")
    out = tmp_path_factory.mktemp("deb")
    run([REPO / "packaging/build-deb", out], timeout=BUILD_TIMEOUT)
    debs = sorted(out.glob("*.deb"))
    name = rf"{PACKAGE}_{re.escape(code_version())}-[0-9.]+_all\.deb"
    assert len(debs) == 1 and re.fullmatch(name, debs[0].name), debs
    return debs[0]


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files, unpacked with dpkg-deb -x (modes kept)."""
    root = tmp_path_factory.mktemp("root")
    run(["dpkg-deb", "-x", deb, root])
    return root


@pytest.fixture(scope="module")
def listing(deb: Path) -> dict[str, str]:
    """dpkg-deb -c as {absolute path: mode string}; every entry must be owned by root:root."""
    entries: dict[str, str] = {}
    for line in run(["dpkg-deb", "-c", deb]).stdout.splitlines():
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        name = name.split(" -> ")[0]
        assert owner == "root/root", line
        entries["/" + name.removeprefix("./").rstrip("/")] = mode
    return entries


@pytest.fixture
def debian_env(root: Path, tmp_path: Path) -> dict[str, str]:
    """A minimal environment in which Debian's python3 finds the unpacked package and nothing of the tree."""
    return {
        "PATH": f"{root / 'usr/bin'}:{SYSTEM_PATH}",
        "PYTHONPATH": str(root / DIST_PACKAGES),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "CERTBOT_SMTP_DIST_STATE_DIR": str(tmp_path / "state"),
    }


def run_unchecked(argv: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


def control_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", deb, name]).stdout.strip()


def simple_relations(field: str) -> dict[str, str]:
    """'a (>= 1), b | c, d:any' -> {'a': '>= 1', 'd': ''}: the relations without alternatives."""
    relations: dict[str, str] = {}
    for item in field.split(","):
        if "|" in item:
            continue
        match = re.fullmatch(r"\s*([a-z0-9.+-]+)(?::any)?\s*(?:\(([^)]*)\))?\s*", item)
        assert match, f"relation not understood: {item!r}"
        relations[match.group(1)] = " ".join((match.group(2) or "").split())
    return relations


def require_debian_python(modules: tuple[str, ...]) -> None:
    if not DEBIAN_PYTHON.exists():
        unavailable(f"{DEBIAN_PYTHON} not found")
    missing = run_unchecked([DEBIAN_PYTHON, "-c", f"import {', '.join(modules)}"])
    if missing.returncode != 0:
        unavailable(f"Debian's python3 packages for {', '.join(modules)} are missing (see .ci/run): "
                    f"{missing.stderr.strip().splitlines()[-1]}")


def test_control_fields(deb: Path) -> None:
    assert control_field(deb, "Package") == PACKAGE
    assert control_field(deb, "Architecture") == "all"
    assert control_field(deb, "Version").rsplit("-", 1)[0] == code_version()
    depends = simple_relations(control_field(deb, "Depends"))
    floors = {f"python3-{name}": f">= {floor}" for name, floor in runtime_floors().items()}
    assert floors.keys() == {"python3-cryptography", "python3-pluggy"}
    assert {name: depends.get(name) for name in floors} == floors
    assert "python3" in depends  # python3:any, from dh_python3
    assert simple_relations(control_field(deb, "Recommends")) == {"certbot": ">= 2.1"}


def test_promised_files_and_modes(listing: Mapping[str, str]) -> None:
    promised = {dst: stat.filemode(stat.S_IFREG | mode) for _src, dst, mode in SHIPPED_HERE}
    promised |= {path: "drwx------" for path in PRIVATE_DIRS}
    promised |= {"/usr/bin/certbot-smtp-dist": "-rwxr-xr-x"}
    promised |= {f"/{DIST_PACKAGES}/certbot_smtp_dist/{name}": "-rw-r--r--"
                 for name in ("__init__.py", "certbot_plugin.py", "py.typed")}
    assert {path: listing.get(path) for path in promised} == promised


def test_python_tree_is_the_package_and_nothing_else(listing: Mapping[str, str]) -> None:
    prefix = f"/{DIST_PACKAGES}/"
    top = {path[len(prefix):].split("/")[0] for path in listing if path.startswith(prefix)}
    assert top == {"certbot_smtp_dist", f"certbot_smtp_dist-{code_version()}.dist-info"}
    shipped = {path[len(prefix):] for path in listing if path.startswith(prefix) and path.endswith(".py")}
    in_tree = {str(p.relative_to(REPO)) for p in (REPO / "certbot_smtp_dist").rglob("*.py")}
    assert shipped == in_tree
    strays = ("__pycache__", "/tests/", ".hypothesis", ".pytest_cache", "pyproject.toml")
    assert not [path for path in listing if any(stray in path for stray in strays)]


def test_hooks_and_units_are_the_trees(root: Path) -> None:
    differing = [dst for src, dst, _mode in SHIPPED_HERE
                 if (root / dst.lstrip("/")).read_bytes() != (REPO / src).read_bytes()]
    assert differing == []


def test_man_pages_are_the_committed_ones(root: Path, listing: Mapping[str, str]) -> None:
    """dh_installman ships packaging/man's pages, gzipped by dh_compress, for every command on PATH."""
    assert {dst: listing.get(f"{dst}.gz") for _src, dst in MANPAGES} == {dst: "-rw-r--r--" for _src, dst in MANPAGES}
    differing = [dst for src, dst in MANPAGES
                 if gzip.decompress((root / f"{dst.lstrip('/')}.gz").read_bytes()) != (REPO / src).read_bytes()]
    assert differing == []


def test_every_command_on_path_has_a_man_page(listing: Mapping[str, str]) -> None:
    """What lintian's no-manual-page checks: each program in /usr/bin has a page in section 1 (or 8)."""
    commands = {path.rsplit("/", 1)[1] for path in listing if path.startswith("/usr/bin/")}
    pages = {path.rsplit("/", 1)[1].split(".")[0] for path in listing
             if re.fullmatch(r"/usr/share/man/man[18]/[^/]+\.[18]\.gz", path)}
    assert commands - pages == set()


def test_lintian_finds_no_man_page_problem(deb: Path) -> None:
    """lintian itself: no program without a page (no-manual-page), no page groff or man complain about."""
    lintian = require_tool("lintian", "apt-get install lintian")
    done = run_unchecked([lintian, "--pedantic", "--info", deb])
    tags = re.findall(r"^[EWIPX]: \S+: (\S+)", done.stdout, re.MULTILINE)
    assert tags or done.returncode == 0, done.stderr  # lintian ran: tags, or a clean exit
    assert [tag for tag in tags if "manual-page" in tag or "manpage" in tag] == []


def test_entry_points(root: Path) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read(root / DIST_PACKAGES / f"certbot_smtp_dist-{code_version()}.dist-info/entry_points.txt")
    assert dict(entry_points["certbot.plugins"]) == {"smtp-dist": "certbot_smtp_dist.certbot_plugin:Installer"}
    assert dict(entry_points["console_scripts"]) == {"certbot-smtp-dist": "certbot_smtp_dist._internal.cli:main"}
    assert (root / "usr/bin/certbot-smtp-dist").read_text("utf-8").startswith("#!/usr/bin/python3\n")


@pytest.fixture
def maintscript(deb: Path, tmp_path: Path) -> Callable[..., Path]:
    """``maintscript("postinst", "configure")`` runs a maintainer script of the package as dpkg would.

    It runs on a scratch root holding the unpacked package, with Debian's real deb-systemd-helper confined to
    that root (DPKG_ROOT), inert stand-ins for systemctl and deb-systemd-invoke, and nothing else on PATH.
    Returns the root.
    """
    helper = require_tool("deb-systemd-helper", "apt-get install init-system-helpers")
    root, control, bin_dir = tmp_path / "root", tmp_path / "control", tmp_path / "bin"
    run(["dpkg-deb", "-x", deb, root])
    run(["dpkg-deb", "-e", deb, control])
    bin_dir.mkdir()
    (bin_dir / "deb-systemd-helper").symlink_to(helper)
    for inert in ("systemctl", "deb-systemd-invoke"):
        (bin_dir / inert).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / inert).chmod(0o755)

    def invoke(script: str, *args: str) -> Path:
        env = {"PATH": str(bin_dir), "DPKG_ROOT": str(root), "DPKG_MAINTSCRIPT_PACKAGE": PACKAGE,
               "DPKG_MAINTSCRIPT_NAME": script}
        run(["/bin/sh", "-e", control / script, *args], env=env)
        return root

    return invoke


def test_install_does_not_enable_the_timer(maintscript: Callable[..., Path]) -> None:
    root = maintscript("postinst", "configure")
    assert (root / HELPER_STATE).exists()  # the helper did run, and remembers the unit for purge
    assert not (root / TIMER_WANTS).is_symlink()


def test_purge_forgets_a_timer_the_administrator_enabled(maintscript: Callable[..., Path]) -> None:
    root = maintscript("postinst", "configure")
    (root / TIMER_WANTS).parent.mkdir(parents=True, exist_ok=True)
    (root / TIMER_WANTS).symlink_to(f"/lib/systemd/system/{TIMER}")  # systemctl enable
    maintscript("postinst", "configure", "0.1.0-1")  # an upgrade keeps it
    assert (root / TIMER_WANTS).is_symlink()
    maintscript("postrm", "purge")
    assert not (root / TIMER_WANTS).is_symlink()


def test_runs_on_debian_python(root: Path, debian_env: dict[str, str], tmp_path: Path) -> None:
    require_debian_python(("cryptography", "pluggy"))
    where = run([DEBIAN_PYTHON, "-c", "import certbot_smtp_dist; print(certbot_smtp_dist.__file__)"],
                env=debian_env, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(root)
    version = run([DEBIAN_PYTHON, "-m", "certbot_smtp_dist", "--version"], env=debian_env, cwd=tmp_path)
    first, *libraries = version.stdout.splitlines()
    assert first == f"certbot-smtp-dist {code_version()}"
    # --version names the stack it runs on: Debian's own interpreter and libraries, not a venv's.
    assert libraries[0].startswith("Python ") and f"({DEBIAN_PYTHON})" in libraries[0]
    assert any(line.startswith("cryptography 38.") for line in libraries), libraries
    script = run([root / "usr/bin/certbot-smtp-dist", "--version"], env=debian_env, cwd=tmp_path)
    assert script.stdout.splitlines()[0] == f"certbot-smtp-dist {code_version()}"


def test_debian_certbot_loads_and_prepares_the_plugin(root: Path, debian_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    require_debian_python(("cryptography", "pluggy", "certbot"))
    if not DEBIAN_CERTBOT.exists():
        unavailable(f"{DEBIAN_CERTBOT} not found (apt-get install certbot)")
    config = tmp_path / "smtp-dist" / "config.toml"
    config.parent.mkdir(mode=0o700)
    config.write_text('[targets.ops]\nhost = "127.0.0.1"\ntls_mode = "plaintext"\nauth_method = "none"\n'
                      'from_address = "certbot@example.com"\nto = ["ops@example.com"]\n')
    config.chmod(stat.S_IRUSR | stat.S_IWUSR)
    dirs = (f"--{name}-dir={tmp_path / name}" for name in ("config", "work", "logs"))
    certbot: list[str | Path] = [DEBIAN_CERTBOT, "plugins", "--installers", *dirs]

    without = run(certbot, env={k: v for k, v in debian_env.items() if k != "PYTHONPATH"}, cwd=tmp_path)
    if "smtp-dist" in without.stdout:  # then the listing below would prove nothing about this package
        unavailable("Debian's certbot finds smtp-dist without the unpacked package: installed system-wide?")

    listed = run(certbot, env=debian_env, cwd=tmp_path).stdout
    assert "* smtp-dist" in listed
    assert "Entry point: smtp-dist = certbot_smtp_dist.certbot_plugin:Installer" in listed
    assert re.search(r"Interfaces: .*\bInstaller\b", listed)

    # --init --prepare runs the plugin's own start-up under certbot 2.1, reading the configuration.
    prepared = run([*certbot, "--init", "--prepare", f"--smtp-dist-config={config}"], env=debian_env,
                   cwd=tmp_path).stdout
    assert "Prep: True" in prepared, prepared


def test_build_deb_refuses_a_version_mismatch(tmp_path: Path) -> None:
    """The changelog's upstream version must be the code's: build-deb checks before building anything."""
    require_tool("dpkg-parsechangelog", "apt-get install dpkg-dev")
    tree = tmp_path / "tree"
    for rel in ("packaging/build-deb", "packaging/debian/changelog", "certbot_smtp_dist/__init__.py"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes((REPO / rel).read_bytes())
    (tree / "packaging/build-deb").chmod(0o755)
    init = tree / "certbot_smtp_dist/__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "9.9.9"', init.read_text()))
    proc = run_unchecked([tree / "packaging/build-deb", tmp_path / "out"])
    assert proc.returncode == 65, proc.stderr
    assert "9.9.9" in proc.stderr and not list((tmp_path / "out").glob("*.deb"))

