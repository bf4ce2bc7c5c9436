"""A throwaway installation of certbot-smtp-dist for one test: config dir, credentials, state dir, runner."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def to_toml(targets: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any] | None = None) -> str:
    out: list[str] = []
    if defaults:
        out.append("[defaults]")
        out += [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
    for name, table in targets.items():
        out.append(f"\n[targets.{json.dumps(name)}]")
        out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)  # type: ignore[no-any-return]

    def target(self, name: str) -> dict[str, Any]:
        return next(t for t in self.json["targets"] if t["target"] == name)


class DeployEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.config = self.config_dir / "config.toml"
        self.state_dir = root / "state"

    def write_config(self, targets: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any] | None = None) -> Path:
        self.config.write_text(to_toml(targets, defaults))
        self.config.chmod(0o600)  # as documented; a world-readable config is warned about on every run
        return self.config

    def set_credential(self, name: str, type_: str, secret: str) -> None:
        from certbot_smtp_dist._internal.credentials import CredentialStore

        CredentialStore(self.config_dir, environ={}).set(name, type_, secret)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RENEWED_", "LEGO_", "CERTBOT_SMTP_DIST"))}
        env["CERTBOT_SMTP_DIST_CONFIG"] = str(self.config)
        env["CERTBOT_SMTP_DIST_STATE_DIR"] = str(self.state_dir)
        env.update(extra or {})
        return env

    def run(self, *args: str, extra_env: Mapping[str, str] | None = None, stdin: str | None = None) -> Run:
        """In-process: fast, and exercises the same `main` the console script calls."""
        from certbot_smtp_dist._internal import cli

        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        logger = logging.getLogger("certbot_smtp_dist")
        saved_logging = (logger.handlers[:], logger.propagate, logger.level)
        transcript = logging.getLogger("certbot_smtp_dist.transcript")
        saved_transcript_level = transcript.level
        os.environ.clear()
        os.environ.update(self.env(extra_env))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                old_stdin = sys.stdin
                sys.stdin = io.StringIO(stdin or "")
                try:
                    code = cli.main(list(args))
                except SystemExit as exc:
                    code = int(exc.code or 0)
                finally:
                    sys.stdin = old_stdin
        finally:
            os.environ.clear()
            os.environ.update(saved)
            # main() configures logging for a whole process; give the next in-process run (and caplog) it back.
            logger.handlers[:], logger.propagate, logger.level = saved_logging
            transcript.setLevel(saved_transcript_level)  # -vv turns it on for the process
        return Run(code, out.getvalue(), err.getvalue())

    def run_process(self, *args: str, extra_env: Mapping[str, str] | None = None, stdin: str | None = None,
                    timeout: float = 120) -> Run:
        """A real cold process, as an ACME client runs the hook."""
        cmd: Sequence[str] = [sys.executable, "-m", "certbot_smtp_dist", *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=self.env(extra_env),
                              timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr)


def starttls_fault_target(server: Any, ca_file: Path, **overrides: Any) -> dict[str, Any]:
    """A STARTTLS target table for a `support.faultsmtp` server whose certificate `ca_file` trusts."""
    table: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "tls_mode": "starttls",
                             "tls_ca_file": str(ca_file), "from_address": "certbot@example.com",
                             "to": ["pki@example.com"], "timeout": 10}
    table.update(overrides)
    return table


def relay_target(relay: Any, **overrides: Any) -> dict[str, Any]:
    """A target table for a `support.relay.Relay`, trusting the test CA."""
    mode = {"starttls_not_offered": "starttls"}.get(relay.mode, relay.mode)
    table: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": relay.port,
        "tls_mode": mode,
        "from_address": "certbot@example.com",
        "to": ["pki@example.com"],
    }
    if relay.pki is not None and mode != "plaintext":
        table["tls_ca_file"] = str(relay.pki.ca_file)
    if relay.auth is not None:
        table.update(auth_method="plain", username=relay.auth[0], password_credential="relay")
    table.update(overrides)
    return table
