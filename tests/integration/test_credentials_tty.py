"""`credentials set` on a real terminal (a pty) asks twice without echo, and stores only a matching, usable secret.

The real CLI runs in its own session with a pty as its standard streams, as when an operator types at a shell.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.deployenv import DeployEnv

from certbot_smtp_dist._internal.credentials import CredentialStore

pytestmark = pytest.mark.timeout(60)

SECRET = "tty-Secret-8m2!"
FIRST, AGAIN = b"secret for relay", b"again, to confirm relay"
EX_DATAERR = 65


def on_a_terminal(denv: DeployEnv, type_: str, answers: list[str], wait: float = 30) -> tuple[int, str]:
    """Run `credentials set relay` with a pty as stdin/stdout/stderr, typing each answer after its prompt."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "certbot_smtp_dist", "credentials", "set", "relay", "--type",
                             type_], stdin=slave, stdout=slave, stderr=slave, env=denv.env(), start_new_session=True)
    os.close(slave)
    transcript, answered, seen = b"", 0, 0
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave descriptor is closed, the command has ended
                break
            if not chunk:
                break
            transcript += chunk
            prompt = (FIRST, AGAIN)[answered] if answered < 2 else None
            if answered < len(answers) and prompt is not None and prompt in transcript[seen:]:
                os.write(master, answers[answered].encode() + b"\n")
                answered, seen = answered + 1, len(transcript)
        return proc.wait(timeout=max(deadline - time.monotonic(), 1)), transcript.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def stored(denv: DeployEnv) -> list[str]:
    return [c.name for c in CredentialStore(denv.config_dir, environ={}).list()]


def test_asked_twice_without_echo_and_stored(denv: DeployEnv) -> None:
    code, transcript = on_a_terminal(denv, "smtp_password", [SECRET, SECRET])
    assert code == 0, transcript
    assert FIRST.decode() in transcript and AGAIN.decode() in transcript
    assert SECRET not in transcript  # echo was off for both entries
    assert CredentialStore(denv.config_dir, environ={}).get("relay", "smtp_password").reveal() == SECRET


def test_entries_that_differ_store_nothing(denv: DeployEnv) -> None:
    code, transcript = on_a_terminal(denv, "smtp_password", [SECRET, SECRET + "x"])
    assert code == EX_DATAERR, transcript
    assert "the two entries differ" in transcript and "Traceback" not in transcript
    assert stored(denv) == [] and not (denv.config_dir / "credentials").exists()


@pytest.mark.parametrize("passphrase", [" ", "short"])
def test_an_unusable_passphrase_is_refused_before_the_second_prompt(denv: DeployEnv, passphrase: str) -> None:
    code, transcript = on_a_terminal(denv, "smtp_pkcs12_passphrase", [passphrase, passphrase])
    assert code == EX_DATAERR, transcript
    assert "PKCS#12 passphrase" in transcript and AGAIN.decode() not in transcript
    assert stored(denv) == []


def test_stdin_that_is_not_utf8_is_refused(denv: DeployEnv, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", "credentials", "set", "relay", "--type",
                           "smtp_password"], input=b"caf\xe9-latin-1\n", capture_output=True, env=denv.env(),
                          timeout=60)
    assert proc.returncode == EX_DATAERR
    assert b"not valid UTF-8" in proc.stderr and b"Traceback" not in proc.stderr
    assert stored(denv) == []


def test_end_of_input_at_the_prompt_stores_nothing(denv: DeployEnv) -> None:
    code, transcript = on_a_terminal(denv, "smtp_password", ["\x04"])  # Ctrl-D instead of a secret
    assert code == EX_DATAERR, transcript
    assert "no secret entered" in transcript and "Traceback" not in transcript
    assert stored(denv) == []
