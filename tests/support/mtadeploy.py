"""`deploy` against a real MTA on loopback: one target run, and the outcome checks every MTA's tests share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from .deployenv import DeployEnv, Run
from .pki import LineagePaths

__all__ = ["Deployed", "assert_auth_refused", "assert_delivered", "assert_rcpt_refused", "assert_tls_refused",
           "attachments", "deploy", "starttls_target"]

TARGET = "archive"
#: sysexits.h EX_UNAVAILABLE: what deploy exits with when a target was not (fully) delivered.
EX_UNAVAILABLE = 69


@dataclass(frozen=True, slots=True)
class Deployed:
    """One `deploy --json` run and its record for the one target."""

    run: Run
    target: dict[str, Any]

    @property
    def output(self) -> str:
        """Everything the run printed, to look for secrets in."""
        return self.run.stdout + self.run.stderr


def starttls_target(host: str, port: int, ca_file: Path, **settings: Any) -> dict[str, Any]:
    """A target table for a relay on loopback that requires STARTTLS (RFC 3207) and is trusted through
    ``ca_file``; ``settings`` add or replace keys, and a ``None`` value removes one."""
    table: dict[str, Any] = {
        "host": host,
        "port": port,
        "tls_mode": "starttls",
        "tls_ca_file": str(ca_file),
        "timeout": 15,
        "from_address": "certbot@example.com",
        **settings,
    }
    return {key: value for key, value in table.items() if value is not None}


def deploy(denv: DeployEnv, lineage: LineagePaths, table: Mapping[str, Any], *, password: str | None = None,
           args: Sequence[str] = ()) -> Deployed:
    """Configure ``table`` as the only target (and ``password`` as its "relay" credential), run deploy --json."""
    if password is not None:
        denv.set_credential("relay", "smtp_password", password)
    denv.write_config({TARGET: table})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json", *args)
    return Deployed(run, run.target(TARGET))


def assert_delivered(deployed: Deployed) -> None:
    assert deployed.run.returncode == 0, deployed.run.stderr
    assert deployed.target["status"] == "delivered", deployed.target


def _assert_failed(deployed: Deployed, error_code: str, phase: str) -> None:
    t = deployed.target
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("failed", error_code, phase, False), t


def assert_tls_refused(deployed: Deployed, detail: str) -> None:
    """The TLS handshake failed (``detail`` says why), once, and nothing was retried or delivered."""
    _assert_failed(deployed, "SMTP_TLS", "tls")
    assert detail in deployed.target["detail"], deployed.target
    assert deployed.target["attempts"] == 1
    assert deployed.run.returncode == EX_UNAVAILABLE


def assert_auth_refused(deployed: Deployed) -> None:
    """RFC 4954 §6: 535 5.7.8 Authentication credentials invalid, a permanent failure."""
    _assert_failed(deployed, "SMTP_AUTH", "auth")
    assert deployed.target["smtp_code"] == 535
    assert deployed.run.returncode == EX_UNAVAILABLE


def assert_rcpt_refused(deployed: Deployed, unknown: str, message: str) -> None:
    """Only ``unknown`` was refused, at RCPT with 550 5.1.1 (RFC 3463 §3.2: bad destination mailbox address)."""
    t = deployed.target
    assert (t["status"], t["error_code"], t["phase"], t["retryable"]) == ("partial", "SMTP_PERMANENT", "rcpt", False), t
    assert list(t["refused_recipients"]) == [unknown]
    refused = t["refused_recipients"][unknown]
    assert (refused["smtp_code"], refused["enhanced_status"]) == (550, "5.1.1")
    assert message in refused["message"]
    assert deployed.run.returncode == EX_UNAVAILABLE


def attachments(msg: EmailMessage) -> list[tuple[str, bytes]]:
    """Each attachment's content type and decoded bytes, in order."""
    out = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((part.get_content_type(), payload))
    return out
