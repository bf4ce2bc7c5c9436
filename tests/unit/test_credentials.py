"""The credential store: envelope encryption, bound names/types, private files, systemd master key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from certbot_smtp_dist._internal.credentials import SYSTEMD_CREDENTIAL, CredentialStore
from certbot_smtp_dist.errors import CredentialError

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
