"""Trust before use: foreign-owned or loosely-moded config, credentials and state are refused (77, nothing
dialled); a symbolic link planted anywhere in the state is refused by name and its target left untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths

EX_NOPERM = 77
NOBODY = 65534


def refused_status(args: list[str]) -> int:
    """77 (EX_NOPERM); `status` is a monitoring check, for which a state it cannot trust is UNKNOWN (3)."""
    return 3 if args[0] == "status" else EX_NOPERM


def _deployed_once(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> object:  # type: ignore[no-untyped-def]
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    first = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert first.returncode == 0, first.stderr
    relay.clear()
    return relay


@pytest.mark.parametrize("how", ["mode 0777", "mode 0770", "owned by nobody"])
@pytest.mark.parametrize("which", ["state", "credentials", "config", "config dir", "state parent"])
def test_untrusted_paths_are_refused_before_anything_is_read(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, which: str, how: str
) -> None:
    relay = _deployed_once(denv, lineage, relay_factory)
    path = {"state": denv.state_dir, "credentials": denv.config_dir / "credentials", "config": denv.config,
            "config dir": denv.config_dir, "state parent": denv.root}[which]
    path.mkdir(exist_ok=True) if which == "credentials" else None
    if how == "owned by nobody":
        os.chown(path, NOBODY, -1)
    else:
        os.chmod(path, int(how.split()[1], 8))
    for args in (["deploy", "--lineage", str(lineage.live_dir)], ["retry"], ["status"], ["journal", "verify"]):
        if which in ("credentials", "config", "config dir") and args[0] in ("status", "journal"):
            continue  # these read the state only... unless they need its key (checked where they do)
        run = denv.run(*args)
        assert run.returncode == refused_status(args), (args, run.stderr)
        said = run.stderr + run.stdout  # `status` says it on stdout, as its UNKNOWN line
        assert str(path) in said and ("chmod" in said or "chown" in said)
    assert relay.messages == []  # type: ignore[attr-defined]


def test_world_readable_config_is_only_a_warning(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    os.chmod(denv.config, 0o644)
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == 0
    assert "readable by everyone" in run.stderr and str(denv.config) in run.stderr
    assert len(relay.messages) == 1


def test_sticky_world_writable_parent_is_accepted(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    os.chmod(denv.root, 0o1777)  # like /tmp: others cannot rename what is ours
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    assert len(relay.messages) == 1


STATE_PATHS = ["journal.jsonl", "journal.head", "journal.lock", "retry.lock", "spool", "spool/locks",
               "spool/locks/x.lock", "spool/x.json", "spool/.x.json.tmp"]


@pytest.mark.parametrize("name", STATE_PATHS)
def test_symlink_at_a_state_path_is_refused_and_its_target_untouched(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path, name: str
) -> None:
    relay = _deployed_once(denv, lineage, relay_factory)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o600)
    link = denv.state_dir / name
    if link.is_dir():
        os.rename(link, tmp_path / "moved")
    elif link.exists():
        link.unlink()
    link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    link.symlink_to(victim)
    for args in (["deploy", "--lineage", str(lineage.live_dir)], ["retry"], ["status"], ["dismiss", "x"],
                 ["history"], ["journal", "verify"]):
        run = denv.run(*args)
        assert run.returncode == refused_status(args), (args, run.stderr)
        said = run.stderr + run.stdout
        assert str(link) in said and "symbolic link" in said
    assert victim.read_bytes() == b"precious\n"
    assert relay.messages == []  # type: ignore[attr-defined]


def test_state_dir_itself_a_symlink_is_refused(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                               tmp_path: Path) -> None:
    relay = _deployed_once(denv, lineage, relay_factory)
    real = tmp_path / "real-state"
    os.rename(denv.state_dir, real)
    denv.state_dir.symlink_to(real)
    run = denv.run("deploy", "--lineage", str(lineage.live_dir))
    assert run.returncode == EX_NOPERM and str(denv.state_dir) in run.stderr
    assert relay.messages == []  # type: ignore[attr-defined]


def test_nofollow_guards_each_open_even_after_the_upfront_check(tmp_path: Path) -> None:
    """Defence in depth: a link appearing after the check is still never followed (O_NOFOLLOW, lstat)."""
    from certbot_smtp_dist._internal import files
    from certbot_smtp_dist._internal.state import Lock
    from certbot_smtp_dist.errors import UnsafePathError

    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for name, action in (
        ("a.lock", lambda p: Lock(p).acquire()),
        ("b.json", files.read_nofollow),
        ("c.json", lambda p: files.write_private(p, b"y")),
        ("d", files.ensure_private_dir),
        ("e", files.fsync_dir),
    ):
        link = state / name
        link.symlink_to(victim)
        with pytest.raises(UnsafePathError, match=str(link)):
            action(link)
        assert link.is_symlink() and victim.read_bytes() == b"x"


@pytest.mark.parametrize("which", ["config", "credentials"])
@pytest.mark.parametrize("how", ["mode 0777", "owned by nobody"])
def test_symlinked_config_or_credentials_target_in_a_directory_others_can_write_is_refused(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path, which: str, how: str
) -> None:
    """The link target is root's and 0600, but the directory holding it is another user's to write: they can swap
    the target. The whole chain of the resolved target is checked, StrictModes-style: 77, naming that directory."""
    relay = _deployed_once(denv, lineage, relay_factory)
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir(mode=0o700)
    link = denv.config if which == "config" else denv.config_dir / "credentials"
    link.rename(elsewhere / link.name)
    link.symlink_to(elsewhere / link.name)
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0  # a trusted chain: followed
    relay.clear()  # type: ignore[attr-defined]
    os.chown(elsewhere, NOBODY, -1) if how == "owned by nobody" else os.chmod(elsewhere, 0o777)
    for args in (["deploy", "--lineage", str(lineage.live_dir)], ["retry"]):
        run = denv.run(*args)
        assert run.returncode == EX_NOPERM, (args, run.stderr)
        assert str(elsewhere) in run.stderr and ("chmod" in run.stderr or "chown" in run.stderr), run.stderr
    assert relay.messages == []  # type: ignore[attr-defined]


def _deep_link(tmp_path: Path, real: Path) -> tuple[Path, Path]:
    """A link whose target passes through a second link held in another directory: tmp/a/link2 -> tmp/b/link3 ->
    `real`. Returns (the first link, the directory holding the second), which nothing else on the path names."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(mode=0o700)
    b.mkdir(mode=0o755)
    (b / "link3").symlink_to(real)
    (a / "link2").symlink_to(b / "link3")
    return a / "link2", b


@pytest.mark.parametrize("which", ["config through a link in a link's target", "config with .. after a linked "
                                   "directory", "state parent through a link in a link's target"])
def test_a_link_held_in_a_directory_others_own_is_refused_at_any_depth(
    denv: DeployEnv, lineage: LineagePaths, relay_factory, tmp_path: Path, which: str
) -> None:
    """Every directory that holds a link met while resolving the path, as the kernel resolves it, is checked: one
    named only inside another link's target, and one reached by ".." from where a linked directory led (not from
    where its name sits). Its owner can re-point the link at a config or state of their own: 77, naming it."""
    relay = _deployed_once(denv, lineage, relay_factory)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    if which.startswith("config through"):
        denv.config.rename(real / "config.toml")
        first, foreign = _deep_link(tmp_path, real)
        denv.config.symlink_to(first / "config.toml")
    elif which.startswith("config with"):
        (real / "sub").mkdir(mode=0o700)
        foreign = real / "evil"
        foreign.mkdir(mode=0o700)
        denv.config.rename(foreign / "config.toml")
        (real / "sub" / "config.toml").symlink_to("../evil/config.toml")
        (tmp_path / "via").symlink_to(real / "sub")
        denv.config.symlink_to(tmp_path / "via" / "config.toml")  # lexically tmp/evil/config.toml, which is not it
    else:
        denv.state_dir.rename(real / "state")
        first, foreign = _deep_link(tmp_path, real)
        denv.state_dir = first / "state"
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0  # a trusted chain: followed
    relay.clear()  # type: ignore[attr-defined]
    os.chown(foreign, NOBODY, -1)
    for args in (["deploy", "--lineage", str(lineage.live_dir)], ["retry"]):
        run = denv.run(*args)
        assert run.returncode == EX_NOPERM, (args, run.stderr)
        assert f"{foreign}:" in run.stderr and "chown" in run.stderr, run.stderr
    assert relay.messages == []  # type: ignore[attr-defined]
