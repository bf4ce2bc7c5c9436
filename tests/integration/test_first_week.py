"""The operator's first week (issue 20, parts 1, 2 and `history`): state commands that fail in one clean line and
never report OK for a state that is not there; typos that do not page anyone; hints with the options given;
`retry` failing while a human is needed; `dismiss` by prefix; `history` that says what was shipped to whom."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.deployenv import DeployEnv, Run, relay_target
from support.pki import LineagePaths, write_lineage

import certbot_smtp_dist

NOBODY = 65534
EX_USAGE, EX_NOINPUT, EX_UNAVAILABLE, EX_NOPERM = 64, 66, 69, 77
STATUS_UNKNOWN = 3

# The child imports every module of the package while still root, then drops to `nobody` for good (all three uids
# and gids, no supplementary groups) before it parses argv: every file the command then touches is opened as
# nobody, exactly as when nobody runs it, without requiring the checkout or the venv to be readable by nobody.
_AS_NOBODY = """
import importlib, os, pkgutil, sys
import certbot_smtp_dist
for mod in pkgutil.walk_packages(certbot_smtp_dist.__path__, "certbot_smtp_dist."):
    if mod.name.endswith("__main__"):
        continue  # it would run the command
    try:
        importlib.import_module(mod.name)
    except ImportError:
        pass
from certbot_smtp_dist._internal import cli
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
assert os.geteuid() == uid and os.getegid() == uid
os.chdir("/")
sys.exit(cli.main(sys.argv[2:]))
"""


def run_as_nobody(*args: str, env: dict[str, str]) -> Run:
    package_parent = str(Path(certbot_smtp_dist.__file__).resolve().parent.parent)
    child_env = {**env, "PYTHONPATH": package_parent}
    proc = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(NOBODY), *args], capture_output=True, text=True,
                          env=child_env, timeout=120)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def closed() -> Iterator[DeployEnv]:
    """An installation as root leaves it: config 0600, credentials and state 0700, all root's, under a directory
    everyone may traverse (the test's own tmp_path is closed to others)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the command as another user")
    base = Path(tempfile.mkdtemp(prefix="csd-firstweek-"))
    try:
        base.chmod(0o755)
        denv = DeployEnv(base)
        denv.config_dir.chmod(0o755)
        denv.write_config({"t": {"host": "127.0.0.1", "port": 9, "tls_mode": "plaintext",
                                 "from_address": "c@example.com", "to": ["x@example.com"]}})
        denv.set_credential("relay", "smtp_password", "pw-firstweek-secret")
        # A renewal whose files are gone: a journal and one blocked entry, written by root (0700, 0600).
        assert denv.run("deploy", extra_env={"RENEWED_LINEAGE": str(base / "gone")}).returncode == 65
        assert len(list((denv.state_dir / "spool").glob("*.json"))) == 1
        yield denv
    finally:
        shutil.rmtree(base, ignore_errors=True)


STATE_COMMANDS = [("status",), ("history",), ("journal", "verify"), ("retry",), ("dismiss", "abc123"),
                  ("credentials", "list")]


@pytest.mark.parametrize("config_dir_closed", [False, True], ids=["state closed", "config dir closed too"])
@pytest.mark.parametrize("command", STATE_COMMANDS, ids=" ".join)
def test_state_commands_as_an_unprivileged_user_fail_in_one_clean_line(
        closed: DeployEnv, command: tuple[str, ...], config_dir_closed: bool) -> None:
    if config_dir_closed:
        closed.config_dir.chmod(0o700)
    run = run_as_nobody(*command, env=closed.env())
    said = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(said) == 1, said
    assert "Traceback" not in run.stderr and "Error:" not in said[0].split(": error: ")[0]
    if command[0] == "status":
        assert run.returncode == STATUS_UNKNOWN and said[0].startswith("UNKNOWN: ")
        assert run.stderr == ""  # a Nagios check: its one line on stdout
    else:
        assert run.returncode == EX_NOPERM, said
    if command[0] == "credentials":
        where = closed.config if config_dir_closed else closed.config_dir / "credentials"
        assert str(where) in said[0] and "run as root, or pass --config FILE" in said[0]
    else:
        assert str(closed.state_dir) in said[0] and "run as root, or pass --state-dir DIR" in said[0]
    assert "cannot " in said[0]  # the operation


@pytest.mark.parametrize("command", [("status",), ("journal", "verify"), ("retry",), ("dismiss", "abc123")],
                         ids=" ".join)
def test_a_readable_state_with_a_closed_master_key(closed: DeployEnv, command: tuple[str, ...]) -> None:
    """The state open to read, but its keys are root's: still one line, naming the master key, not "damaged"."""
    for path in (closed.state_dir, *closed.state_dir.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    run = run_as_nobody(*command, env=closed.env())
    said = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(said) == 1, said
    assert f"cannot read the master key {closed.config_dir / 'master.key'}" in said[0]
    assert "run as root, or pass --config FILE" in said[0] and "damaged" not in said[0]
    assert run.returncode == (STATUS_UNKNOWN if command[0] == "status" else EX_NOPERM)


def test_status_without_a_state_directory_is_unknown(denv: DeployEnv) -> None:
    denv.write_config({})
    run = denv.run("status")
    assert run.returncode == STATUS_UNKNOWN
    assert run.stdout.startswith("UNKNOWN: ") and f"no state directory at {denv.state_dir}" in run.stdout
    assert not denv.state_dir.exists()  # looking created nothing
    allowed = denv.run("status", "--allow-empty")
    assert allowed.returncode == 0 and allowed.stdout.startswith("OK: ")
    assert denv.run("status", "--json").json["status"] == "UNKNOWN"


def test_status_json_that_cannot_look_is_one_unknown_document(denv: DeployEnv, tmp_path: Path) -> None:
    denv.write_config({})
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    denv.state_dir.symlink_to(tmp_path / "elsewhere")  # not trusted: status cannot know
    run = denv.run("status", "--json")
    assert run.returncode == STATUS_UNKNOWN and run.stderr == ""
    assert run.json["status"] == "UNKNOWN" and str(denv.state_dir) in run.json["problem"]


def test_a_state_path_that_is_a_file_is_never_empty(denv: DeployEnv) -> None:
    denv.write_config({})
    denv.state_dir.write_text("")
    denv.state_dir.chmod(0o600)
    status = denv.run("status", "--allow-empty")
    assert status.returncode == STATUS_UNKNOWN and "Not a directory" in status.stdout
    history = denv.run("history")
    assert history.returncode == 74 and str(denv.state_dir) in history.stderr and "Traceback" not in history.stderr


def test_status_with_a_state_directory_but_no_journal_is_unknown(denv: DeployEnv) -> None:
    denv.write_config({})
    denv.state_dir.mkdir(mode=0o700)
    run = denv.run("status")
    assert run.returncode == STATUS_UNKNOWN and f"no journal in {denv.state_dir}" in run.stdout


def test_journal_verify_and_history_without_a_state_directory(denv: DeployEnv) -> None:
    denv.write_config({})
    verify = denv.run("journal", "verify")
    assert verify.returncode == 1 and "journal OK" not in verify.stdout
    assert str(denv.state_dir) in verify.stdout
    history = denv.run("history")
    assert history.returncode == EX_NOINPUT and str(denv.state_dir) in history.stderr


# -- part 2: typos do not page anyone -----------------------------------------------------------------------------

def spool_files(denv: DeployEnv) -> list[dict[str, object]]:
    spool = denv.state_dir / "spool"
    return [json.loads(p.read_text()) for p in sorted(spool.glob("*.json"))] if spool.is_dir() else []


def test_a_typed_lineage_typo_leaves_no_entry(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    typo = lineage.live_dir.parent / "exmaple.com"
    run = denv.run("deploy", "--lineage", str(typo))
    assert run.returncode == 65 and str(typo) in run.stderr
    assert spool_files(denv) == []
    assert denv.run("status").returncode == 0  # nobody is paged for a typo on a terminal


@pytest.mark.parametrize("renewal", ["certbot", "hook shim"])
def test_the_same_failure_in_a_renewal_leaves_a_blocked_entry(denv: DeployEnv, lineage: LineagePaths,
                                                              relay_factory, renewal: str) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    typo = lineage.live_dir.parent / "exmaple.com"
    if renewal == "certbot":
        run = denv.run("deploy", extra_env={"RENEWED_LINEAGE": str(typo)})
    else:  # what hooks/dehydrated-hook and the other shims set
        run = denv.run("deploy", "--lineage", str(typo), extra_env={"CERTBOT_SMTP_DIST_HOOK": "dehydrated"})
    assert run.returncode == 65
    [entry] = spool_files(denv)
    assert entry["kind"] == "blocked" and entry["state"] == "failed"
    assert f"certbot-smtp-dist dismiss {entry['id']}" in run.stderr
    assert denv.run("status").returncode == 2


def test_the_hook_shims_mark_their_runs_as_renewals() -> None:
    hooks = Path(__file__).resolve().parents[2] / "hooks"
    for shim in ("dehydrated-hook", "lego-hook", "uacme-ship", "acme.sh/smtp_dist.sh"):
        text = (hooks / shim).read_text()
        assert re.search(r"^\s*CERTBOT_SMTP_DIST_HOOK=\S+\n\s*export CERTBOT_SMTP_DIST_HOOK$", text, re.M), shim


def _blocked_by_a_config_typo(denv: DeployEnv, lineage: LineagePaths) -> dict[str, object]:
    denv.config.write_text("[targets.a]\nport = 'not a number'\n")
    denv.config.chmod(0o600)
    assert denv.run("deploy", extra_env={"RENEWED_LINEAGE": str(lineage.live_dir)}).returncode == 78
    [blocked] = spool_files(denv)
    assert "configuration unusable" in denv.run("status").stdout
    return blocked


def test_a_fixed_config_typo_is_closed_by_the_next_retry(denv: DeployEnv, lineage: LineagePaths,
                                                         relay_factory) -> None:
    relay = relay_factory("plaintext")
    _blocked_by_a_config_typo(denv, lineage)
    denv.write_config({"a": relay_target(relay)})  # fixed
    run = denv.run("retry")  # the timer's plain retry, no --include-failed
    assert run.returncode == 0, run.stderr
    assert spool_files(denv) == [] and len(relay.messages) == 1
    status = denv.run("status")
    assert status.returncode == 0 and "configuration unusable" not in status.stdout


def test_a_fixed_config_typo_stops_alerting_at_the_next_clean_load(denv: DeployEnv, lineage: LineagePaths,
                                                                   relay_factory, tmp_path: Path) -> None:
    relay = relay_factory("plaintext")
    _blocked_by_a_config_typo(denv, lineage)
    denv.write_config({"a": relay_target(relay)})
    other = write_lineage(tmp_path / "live" / "other.example.com")
    assert denv.run("deploy", "--lineage", str(other.live_dir)).returncode == 0  # loads the config cleanly
    status = denv.run("status")
    assert "configuration unusable" not in status.stdout and "FAILED" not in status.stdout
    assert status.returncode == 1  # pending: the next `retry` runs the blocked deploy, nobody is paged
    assert denv.run("retry").returncode == 0 and spool_files(denv) == []


def test_hints_carry_the_config_and_state_dir_given(tmp_path: Path, lineage: LineagePaths, relay_factory) -> None:
    denv = DeployEnv(tmp_path / "my setup")
    relay = relay_factory("plaintext", reject={"gone@example.com": "550 5.1.1 No such user"})
    denv.write_config({"a": relay_target(relay, to=["gone@example.com"])})
    given = ["--config", str(denv.config), "--state-dir", str(denv.state_dir)]
    deploy = denv.run(*given, "deploy", "--lineage", str(lineage.live_dir))
    assert deploy.returncode == 69
    [entry] = spool_files(denv)
    prefix = shlex.join(["certbot-smtp-dist", *given])
    assert "'" in prefix  # the space in the path is quoted
    assert f"`{prefix} dismiss {entry['id']}`" in deploy.stderr  # the error itself says what to run next
    assert f"`{prefix} retry --include-failed`" in deploy.stderr
    status = denv.run(*given, "status")
    assert status.returncode == 2
    assert f"next: or {prefix} dismiss {entry['id']}" in status.stdout
    assert f"{prefix} retry --include-failed" in status.stdout
    retry = denv.run(*given, "retry")
    assert f"{prefix} dismiss {entry['id']}" in retry.stderr and f"{prefix} retry --include-failed" in retry.stderr


def test_retry_reports_a_failed_entry_and_fails_while_it_exists(denv: DeployEnv, lineage: LineagePaths,
                                                                relay_factory) -> None:
    relay = relay_factory("plaintext", reject={"gone@example.com": "550 5.1.1 No such user"})
    denv.write_config({"a": relay_target(relay, to=["gone@example.com"])})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 69
    [entry] = spool_files(denv)
    run = denv.run("retry", "--json")
    assert run.returncode == EX_UNAVAILABLE
    assert f"FAILED: {entry['id']} target=a" in run.stderr and "SMTP_PERMANENT" in run.stderr
    assert [e["id"] for e in run.json["needs_attention"]] == [entry["id"]]
    assert denv.run("dismiss", str(entry["id"])[:6]).returncode == 0  # a unique prefix
    assert denv.run("retry").returncode == 0


def test_dismiss_by_prefix_refuses_an_ambiguous_one(denv: DeployEnv, tmp_path: Path) -> None:
    denv.config.write_text("[targets.a]\nport = 'not a number'\n")
    denv.config.chmod(0o600)
    for n in range(17):  # 17 ids in 16 first hex digits: two share one
        live = tmp_path / "live" / f"host{n}.example.com"
        assert denv.run("deploy", extra_env={"RENEWED_LINEAGE": str(live)}).returncode == 78
    ids = sorted(str(e["id"]) for e in spool_files(denv))
    assert len(ids) == 17
    first = next(i[0] for i in ids if sum(j.startswith(i[0]) for j in ids) > 1)
    candidates = [i for i in ids if i.startswith(first)]
    run = denv.run("dismiss", first)
    assert run.returncode == EX_USAGE
    assert all(c in run.stderr for c in candidates) and len(spool_files(denv)) == 17
    assert denv.run("dismiss", candidates[0]).returncode == 0 and len(spool_files(denv)) == 16
    missing = denv.run("dismiss", "ffffffffffffffffffffffffff")
    assert missing.returncode == 1 and "no spool entry" in missing.stderr


# -- part 7: history ------------------------------------------------------------------------------------------------

def test_history_says_what_was_shipped_to_whom(denv: DeployEnv, lineage: LineagePaths, relay_factory) -> None:
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay, to=["pki@example.com", "ops@example.com"]),
                       "b": relay_target(relay, to=["b@example.com"])})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
    mail = relay.messages[0].decode() if isinstance(relay.messages[0], bytes) else str(relay.messages[0])
    serial = re.search(r"Serial:\s+([0-9A-F:]+)", mail)
    assert serial is not None
    run = denv.run("history")
    assert run.returncode == 0
    [line_a] = [ln for ln in run.stdout.splitlines() if "target=a" in ln]
    assert "delivered" in line_a and "certificate=test.example.com" in line_a
    assert f"serial={serial.group(1)}" in line_a
    assert "to=pki@example.com,ops@example.com" in line_a
    assert [ln for ln in denv.run("history", "--target", "b").stdout.splitlines()] == \
        [ln for ln in run.stdout.splitlines() if "target=b" in ln]
    assert denv.run("history", "--since", "7d").stdout == run.stdout
    assert denv.run("history", "--since", "2999-01-01").stdout == ""
    rows = denv.run("history", "--json", "--target", "a").json["history"]
    assert [r["recipients"] for r in rows] == [["pki@example.com", "ops@example.com"]]
    assert rows[0]["serial"] == serial.group(1)
    bad = denv.run("history", "--since", "last tuesday")
    assert bad.returncode == EX_USAGE and "--since" in bad.stderr


def test_history_all_names_the_certificate_and_cause_without_placeholders(denv: DeployEnv,
                                                                          lineage: LineagePaths) -> None:
    denv.config.write_text("[targets.a]\nport = 'not a number'\n")
    denv.config.chmod(0o600)
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 78
    run = denv.run("history", "--all")
    [line] = [ln for ln in run.stdout.splitlines() if "config_error" in ln]
    assert "certificate=test.example.com" in line and "cause: configuration" in line and "port" in line
    assert not re.search(r"(^| )-( |$)|=-( |$)", line), line


def test_the_certbot_plugin_is_a_renewal(denv: DeployEnv, lineage: LineagePaths) -> None:
    from certbot_smtp_dist._internal import certbot_adapter
    from certbot_smtp_dist._internal import lineage as lin

    denv.config.write_text("[targets.a]\nport = 'not a number'\n")
    denv.config.chmod(0o600)
    options = certbot_adapter.Options(config=denv.config, state_dir=denv.state_dir)
    certbot_adapter.ship(options, lin.from_lineage_dir(lineage.live_dir))
    [entry] = spool_files(denv)
    assert entry["kind"] == "blocked"


@pytest.mark.parametrize("deployed", [False, True])
def test_read_only_state_commands_never_create_a_master_key(denv: DeployEnv, lineage: LineagePaths,
                                                            relay_factory, deployed: bool) -> None:
    """`status`, `metrics`, `dismiss`, `journal verify` and `history` only read: without a master key they say the
    state is not initialised (or its key is gone) and stop, 78 (`status`: UNKNOWN 3). A new key made here would
    also make every entry and journal line of an existing state fail to verify."""
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)})
    master = denv.config_dir / "master.key"
    if deployed:
        assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 0
        master.unlink()  # lost, or the wrong --config
    else:
        (denv.state_dir / "spool").mkdir(parents=True)  # a state directory, nothing recorded yet
        (denv.state_dir / "journal.jsonl").touch(mode=0o600)  # as an interrupted first run leaves it
    for args, code in ((("status",), STATUS_UNKNOWN), (("metrics",), 78), (("dismiss", "0123abcd"), 78),
                       (("journal", "verify"), 78)):
        run = denv.run(*args)
        said = run.stdout + run.stderr
        assert run.returncode == code, (args, said)
        assert ("not initialised" in said) != deployed and str(master) in said, (args, said)
        assert not master.exists(), args
    assert denv.run("history").returncode == 0 and not master.exists()
