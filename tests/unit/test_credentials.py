"""The credential store: envelope encryption, bound names/types, private files, systemd master key."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from certbot_smtp_dist._internal.credentials import (
    MAX_CREDENTIAL_BYTES,
    MAX_SECRET_BYTES,
    SYSTEMD_CREDENTIAL,
    CredentialStore,
)
from certbot_smtp_dist.errors import CredentialError, UnsafePathError

SECRET = "hunter2-very-secret"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_round_trip_and_private_files(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "etc", environ={})
    store.set("relay", "smtp_password", SECRET)
    assert store.get("relay", "smtp_password").reveal() == SECRET
    cred = tmp_path / "etc" / "credentials" / "relay.cred"
    assert mode(cred) == 0o600 and mode(cred.parent) == 0o700
    assert mode(tmp_path / "etc" / "master.key") == 0o600
    assert SECRET.encode() not in cred.read_bytes()
    assert [(c.name, c.type) for c in store.list()] == [("relay", "smtp_password")]


def test_fresh_data_key_per_secret(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, environ={})
    store.set("a", "smtp_password", SECRET)
    store.set("b", "smtp_password", SECRET)
    a = json.loads((tmp_path / "credentials" / "a.cred").read_text())
    b = json.loads((tmp_path / "credentials" / "b.cred").read_text())
    assert a["wrapped_key"] != b["wrapped_key"] and a["ciphertext"] != b["ciphertext"]


def test_name_and_type_are_bound(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, environ={})
    store.set("a", "smtp_password", SECRET)
    src = tmp_path / "credentials" / "a.cred"
    # Renamed file: the stored name no longer matches the associated data.
    (tmp_path / "credentials" / "b.cred").write_bytes(src.read_bytes())
    with pytest.raises(CredentialError, match="cannot be decrypted"):
        store.get("b", "smtp_password")
    # Retyped file.
    doc = json.loads(src.read_text())
    doc["type"] = "smtp_pkcs12_passphrase"
    src.write_text(json.dumps(doc))
    with pytest.raises(CredentialError, match="cannot be decrypted"):
        store.get("a", "smtp_pkcs12_passphrase")
    with pytest.raises(CredentialError, match="has type"):
        store.get("a", "smtp_password")


def test_wrong_master_key_and_missing(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, environ={})
    store.set("a", "smtp_password", SECRET)
    (tmp_path / "master.key").unlink()
    with pytest.raises(CredentialError, match="missing") as err:
        store.get("a", "smtp_password")
    assert SECRET not in str(err.value)
    with pytest.raises(CredentialError, match="not stored"):
        store.get("zzz", "smtp_password")


def test_systemd_credential_master_key(tmp_path: Path) -> None:
    creds_dir = tmp_path / "run-creds"
    creds_dir.mkdir()
    import base64
    import os

    (creds_dir / SYSTEMD_CREDENTIAL).write_bytes(base64.b64encode(os.urandom(32)))
    store = CredentialStore(tmp_path / "etc", environ={"CREDENTIALS_DIRECTORY": str(creds_dir)})
    store.set("a", "smtp_password", SECRET)
    assert not (tmp_path / "etc" / "master.key").exists()
    assert store.get("a", "smtp_password").reveal() == SECRET
    # Without the systemd credential the file-based key (absent) cannot open it.
    with pytest.raises(CredentialError):
        CredentialStore(tmp_path / "etc", environ={}).get("a", "smtp_password")


def test_bad_names_and_types(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, environ={})
    for name in ("../x", "", "a b", "x" * 65):
        with pytest.raises(CredentialError):
            store.set(name, "smtp_password", SECRET)
    for type_ in ("api token", "API_TOKEN", "x" * 65, "", "../t"):
        with pytest.raises(CredentialError):
            store.set("a", type_, SECRET)
    with pytest.raises(CredentialError):
        store.set("a", "smtp_password", "")


def test_a_payload_formats_own_type_is_stored_and_bound_to_its_secret(tmp_path: Path) -> None:
    """Issue 18: an extension format declares its credential type; the store needs no change to keep it."""
    store = CredentialStore(tmp_path, environ={})
    store.set("tok", "vault_token", SECRET)
    assert store.types() == {"tok": "vault_token"} and store.get("tok", "vault_token").reveal() == SECRET
    with pytest.raises(CredentialError):
        store.get("tok", "smtp_password")


def test_cli_reads_secret_from_stdin_never_argv(tmp_path: Path) -> None:
    from support.deployenv import DeployEnv

    env = DeployEnv(tmp_path)
    run = env.run("credentials", "set", "relay", "--type", "smtp_password", stdin=SECRET + "\n")
    assert run.returncode == 0 and SECRET not in run.stdout + run.stderr
    listing = env.run("credentials", "list")
    assert listing.stdout.strip() == "relay\tsmtp_password"
    assert CredentialStore(env.config_dir, environ={}).get("relay", "smtp_password").reveal() == SECRET
    assert env.run("credentials", "delete", "relay").returncode == 0
    assert env.run("credentials", "delete", "relay").returncode == 1
    assert env.run("credentials", "list").stdout == ""


def test_loose_permissions_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CredentialStore(tmp_path, environ={})
    store.set("a", "smtp_password", SECRET)
    (tmp_path / "master.key").chmod(0o644)
    (tmp_path / "credentials" / "a.cred").chmod(0o640)
    with caplog.at_level("WARNING"):
        assert store.get("a", "smtp_password").reveal() == SECRET
    text = caplog.text
    assert "master key" in text and "0644" in text and "credential file" in text and "0640" in text
    assert SECRET not in text


REFUSED = {
    "nul": ("smtp_password", "hunter2\0-with-a-nul", "NUL"),
    "tab": ("smtp_password", "hunter2\t-with-a-tab", "control character"),
    "escape": ("smtp_password", "hunter2\x1b[31m-red", "control character"),
    "cr-inside": ("smtp_password", "hunter2\r-inside", "control character"),
    "line-separator": ("smtp_password", "hunter2\u2028-ls", "control character"),
    "c1-control": ("smtp_password", "hunter2\x85-nel", "control character"),
    "empty": ("smtp_password", "", "empty"),
    "p12-short": ("smtp_pkcs12_passphrase", "7-chars", "at least 8"),
    "p12-one-space": ("smtp_pkcs12_passphrase", " ", "blank"),
    "p12-long-blank": ("smtp_pkcs12_passphrase", " " * 12, "blank"),
}


@pytest.mark.parametrize(("type_", "secret", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_unusable_secrets_are_refused_and_nothing_is_stored(tmp_path: Path, type_: str, secret: str,
                                                            why: str) -> None:
    store = CredentialStore(tmp_path, environ={})
    with pytest.raises(CredentialError, match=why) as err:
        store.set("a", type_, secret)
    assert "not stored" in str(err.value)
    assert not (tmp_path / "credentials").exists() and not (tmp_path / "master.key").exists()


def test_a_short_password_is_allowed_but_a_passphrase_is_not(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, environ={})
    store.set("pw", "smtp_password", "x")  # the relay decides what it accepts (its replies are then withheld)
    store.set("p12", "smtp_pkcs12_passphrase", "8 chars!")
    assert store.get("p12", "smtp_pkcs12_passphrase").reveal() == "8 chars!"


@pytest.mark.parametrize(("type_", "stdin", "why"), [
    *((t, s + "\n", w) for t, s, w in REFUSED.values()),
    ("smtp_password", SECRET + "\n\n", "control character"),  # one trailing newline is removed, not two
])
def test_cli_refuses_unusable_secrets_with_exit_65(tmp_path: Path, type_: str, stdin: str, why: str) -> None:
    from support.deployenv import DeployEnv

    env = DeployEnv(tmp_path)
    run = env.run("credentials", "set", "relay", "--type", type_, stdin=stdin)
    assert run.returncode == 65, run.stderr
    assert why in run.stderr and "credential relay not stored" in run.stderr and "Traceback" not in run.stderr
    assert stdin.strip() == "" or stdin.strip() not in run.stderr
    assert env.run("credentials", "list").stdout == ""
    assert not (env.config_dir / "credentials").exists()


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_cli_strips_one_trailing_newline(tmp_path: Path, ending: str) -> None:
    from support.deployenv import DeployEnv

    env = DeployEnv(tmp_path)
    assert env.run("credentials", "set", "relay", "--type", "smtp_password", stdin=SECRET + ending).returncode == 0
    assert CredentialStore(env.config_dir, environ={}).get("relay", "smtp_password").reveal() == SECRET


def test_a_link_in_the_store_is_refused_never_followed(tmp_path: Path) -> None:
    """credentials/ is ours alone (ownership.py): a link there was planted. Followed, it would have `list` (every
    config load) and `get` read whatever file it names; refused, naming it, with nothing read through it."""
    store = CredentialStore(tmp_path / "etc", environ={})
    store.set("relay", "smtp_password", SECRET)
    elsewhere = tmp_path / "elsewhere.json"  # any file root can read, shaped as a credential
    elsewhere.write_text(json.dumps({"name": "planted", "type": "smtp_password", "wrapped_key": "", "ciphertext": ""}))
    link = tmp_path / "etc" / "credentials" / "planted.cred"
    link.symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="symbolic link") as listed:
        store.list()
    with pytest.raises(UnsafePathError, match="symbolic link") as got:
        store.get("planted", "smtp_password")
    for refused in (listed.value, got.value):
        assert refused.unsafe.startswith(f"{link}: ") and f"rm {link}" in refused.fix
    assert store.get("relay", "smtp_password").reveal() == SECRET  # another credential is still read

    from support.deployenv import DeployEnv

    run = DeployEnv(tmp_path).run("credentials", "list")
    assert run.returncode == 77 and run.stdout == "", run
    assert run.stderr.startswith(f"certbot-smtp-dist: error: refusing to trust {link}: ") and "Traceback" not in run.stderr


@pytest.mark.parametrize("kind", ["fifo", "oversized"])
def test_a_fifo_or_an_oversized_file_in_the_store_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    """Read bounded and without blocking: a FIFO would stall every config load (`list`) and `get` for ever, and
    a file of any size was read whole (a credential padded with JSON whitespace even decrypted)."""
    store = CredentialStore(tmp_path, environ={})
    store.set("odd", "smtp_password", SECRET)
    path = tmp_path / "credentials" / "odd.cred"
    if kind == "fifo":
        path.unlink()
        os.mkfifo(path, 0o600)
        why = "is a FIFO (named pipe), not a regular file"
    else:
        path.write_bytes(path.read_bytes() + b" " * MAX_CREDENTIAL_BYTES)
        why = f"more than the {MAX_CREDENTIAL_BYTES} bytes allowed"
    with pytest.raises(CredentialError, match=re.escape(why)) as listed:
        store.list()
    with pytest.raises(CredentialError, match=re.escape(why)) as got:
        store.get("odd", "smtp_password")
    for refused in (listed.value, got.value):
        assert f"credential file {path} cannot be read" in str(refused)


def test_a_secret_too_large_for_the_store_to_read_back_is_not_stored(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path, environ={})
    store.set("big", "smtp_password", "x" * MAX_SECRET_BYTES)  # the largest fits its file's bound
    assert store.get("big", "smtp_password").reveal() == "x" * MAX_SECRET_BYTES
    with pytest.raises(CredentialError, match=f"longer than {MAX_SECRET_BYTES} bytes"):
        store.set("bigger", "smtp_password", "x" * (MAX_SECRET_BYTES + 1))
    assert [c.name for c in store.list()] == ["big"]


def test_a_fifo_in_the_store_stops_a_deploy_as_unusable_credentials_not_a_hang(tmp_path: Path) -> None:
    """Every config load lists the store: a FIFO there stalled every deploy and `credentials list`. Now the
    deploy stops as for unusable credentials (78, the file named; blocked for `retry` once it is fixed), and so
    does `credentials list`."""
    from support.deployenv import DeployEnv
    from support.pki import write_lineage

    env = DeployEnv(tmp_path / "host")
    env.write_config({"relay": {"host": "127.0.0.1", "port": 2525, "tls_mode": "plaintext",
                                "from_address": "certbot@example.com", "to": ["pki@example.com"]}})
    env.set_credential("relay", "smtp_password", SECRET)
    fifo = env.config_dir / "credentials" / "odd.cred"
    os.mkfifo(fifo, 0o600)
    lineage = write_lineage(tmp_path / "live" / "test.example.com")
    renewal = env.run("deploy", extra_env={"RENEWED_LINEAGE": str(lineage.live_dir)})  # as certbot's hook runs it
    for run in (renewal, env.run("credentials", "list")):
        assert run.returncode == 78, run
        assert f"credential file {fifo} cannot be read: it is a FIFO (named pipe)" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    status = env.run("status")
    assert status.returncode == 2 and "deploy blocked" in status.stdout, status


NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="another user's file needs root to make")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "oversized"])
def test_a_fifo_or_an_oversized_master_key_is_a_clear_error_not_a_hang(tmp_path: Path, kind: str) -> None:
    """The master key was read with read_bytes: a FIFO there stalled every `get` (every deploy) for ever, and a
    file of any size was read whole. Now as a credential file is read: without blocking, bounded."""
    store = CredentialStore(tmp_path, environ={})
    store.set("relay", "smtp_password", SECRET)
    key = tmp_path / "master.key"
    if kind == "fifo":
        key.unlink()
        os.mkfifo(key, 0o600)
        why = "is a FIFO (named pipe), not a regular file"
    else:
        key.write_bytes(key.read_bytes() + b"\n" * (1 << 20))  # still valid base64 once stripped
        why = "bytes, more than the 1024 bytes allowed"
    with pytest.raises(CredentialError, match=re.escape(why)) as err:
        store.get("relay", "smtp_password")
    assert f"master key {key} cannot be read" in str(err.value)


@pytest.fixture
def key_elsewhere(tmp_path: Path) -> Path:
    """A master key kept on a root-owned mount, as an operator may: the store's own key moved there."""
    store = CredentialStore(tmp_path / "etc", environ={})
    store.set("relay", "smtp_password", SECRET)
    mount = tmp_path / "mnt" / "keys"
    mount.mkdir(parents=True, mode=0o755)
    (tmp_path / "etc" / "master.key").rename(mount / "master.key")
    return mount / "master.key"


@as_root
def test_a_master_key_behind_links_only_root_can_re_point_is_read(tmp_path: Path, sticky: Path,
                                                                  key_elsewhere: Path) -> None:
    (sticky / "keys").symlink_to(key_elsewhere.parent)  # root's link in a sticky directory: only root re-points it
    (tmp_path / "etc" / "master.key").symlink_to(sticky / "keys" / "master.key")
    assert CredentialStore(tmp_path / "etc", environ={}).get("relay", "smtp_password").reveal() == SECRET


@as_root
@pytest.mark.parametrize("hazard", ["their link on the way", "their key file", "a key others can write",
                                    "a directory others can write"])
def test_a_master_key_another_user_could_change_is_refused(tmp_path: Path, sticky: Path, key_elsewhere: Path,
                                                           hazard: str) -> None:
    """The master key opens every secret and keys the state's MACs: another user who could re-point a link to
    it, or write it, would choose the key root decrypts and authenticates with. Refused (exit 77), not read."""
    key = tmp_path / "etc" / "master.key"
    named = key_elsewhere
    if hazard == "their link on the way":
        named = sticky / "keys"
        named.symlink_to(key_elsewhere.parent)
        os.chown(named, NOBODY, -1, follow_symlinks=False)
        key.symlink_to(named / "master.key")
    else:
        key.symlink_to(key_elsewhere)
        named = key  # the file as named: what it is, is checked through the link
        if hazard == "their key file":
            os.chown(key_elsewhere, NOBODY, -1)
        elif hazard == "a key others can write":
            key_elsewhere.chmod(0o620)
        else:
            key_elsewhere.parent.chmod(0o775)
            named = key_elsewhere.parent
    with pytest.raises(UnsafePathError) as refused:
        CredentialStore(tmp_path / "etc", environ={}).get("relay", "smtp_password")
    assert refused.value.unsafe.startswith(f"{named}: "), refused.value

    from support.deployenv import DeployEnv

    run = DeployEnv(tmp_path).run("credentials", "set", "other", "--type", "smtp_password", stdin=SECRET)
    assert run.returncode == 77, run
    assert run.stderr.startswith(f"certbot-smtp-dist: error: refusing to trust {named}: "), run.stderr
    assert [c.name for c in CredentialStore(tmp_path / "etc", environ={}).list()] == ["relay"]


@as_root
def test_a_master_key_another_user_could_re_point_stops_a_deploy_that_uses_no_credential(
        tmp_path: Path, sticky: Path, unused_port: int) -> None:
    """The master key also keys the state's MACs: a deploy whose targets need no secret still reads it, and
    one another user could re-point stops it before anything is dialled (77, as an untrusted state directory
    does), instead of a run logged as "cannot use the state" that delivers without journal or spool."""
    from support.deployenv import DeployEnv
    from support.pki import write_lineage

    env = DeployEnv(tmp_path / "host")
    env.write_config({"relay": {"host": "127.0.0.1", "port": unused_port, "tls_mode": "plaintext", "timeout": 2,
                                "from_address": "certbot@example.com", "to": ["pki@example.com"]}})
    env.set_credential("unused", "smtp_password", SECRET)  # the master key is made
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    (env.config_dir / "master.key").rename(keys / "master.key")
    link = sticky / "keys"
    link.symlink_to(keys)
    os.chown(link, NOBODY, -1, follow_symlinks=False)
    (env.config_dir / "master.key").symlink_to(link / "master.key")
    lineage = write_lineage(tmp_path / "live" / "test.example.com")
    run = env.run("deploy", extra_env={"RENEWED_LINEAGE": str(lineage.live_dir)})
    assert run.returncode == 77, run
    assert f"error: refusing to trust {link}: " in run.stderr and "SMTP_CONNECT" not in run.stderr, run.stderr


def test_a_secret_from_an_endless_standard_input_is_refused_without_reading_to_its_end(tmp_path: Path) -> None:
    """Attack: `credentials set` read all of standard input before checking its length, so a stream that does
    not end (`< /dev/zero`, a pipe from a program that never closes it) grew root's memory until the command was
    killed. More than a secret can hold is refused as too long once that much is read (65), nothing stored."""
    import contextlib
    import subprocess
    import sys

    from support.deployenv import DeployEnv

    env = DeployEnv(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "credentials", "set", "relay", "--type",
                             "smtp_password"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env.env())
    assert proc.stdin is not None
    try:
        with contextlib.suppress(BrokenPipeError):  # it may have read enough, refused and ended already
            proc.stdin.write(b"x" * (MAX_SECRET_BYTES + 4096))  # within a pipe's buffer; the pipe stays open
            proc.stdin.flush()
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("credentials set waited for the end of an endless standard input")
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert code == 65, err
    assert f"longer than {MAX_SECRET_BYTES} bytes" in err and "credential relay not stored" in err
    assert not (env.config_dir / "credentials").exists()


def test_credentials_delete_never_waits_on_a_fifo_where_the_config_should_be(tmp_path: Path) -> None:
    """Attack: `credentials delete` deleted, then read the config as written to name the keys still using the
    credential, with a plain read: a FIFO at the config path (ours, closed to others: the ownership rule passes)
    held it until a writer came. The config is read as every other reader reads it (non-blocking, regular only)."""
    import subprocess
    import sys

    from support.deployenv import DeployEnv

    env = DeployEnv(tmp_path)
    CredentialStore(env.config_dir, environ={}).set("relay", "smtp_password", SECRET)
    env.config.unlink(missing_ok=True)
    os.mkfifo(env.config, 0o600)
    try:
        proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "credentials", "delete", "relay"],
                              capture_output=True, text=True, env=env.env(), timeout=30)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        pytest.fail("credentials delete waited on the FIFO at the config path")
    assert proc.returncode == 0, proc.stderr
    assert "deleted credential relay" in proc.stderr
    assert not (env.config_dir / "credentials" / "relay.cred").exists()
