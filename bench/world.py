"""The benchmark's fixtures on disk: relay PKI, a lineage, and deploy installations with their command lines."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure import BenchError, Sample, run_process
from support.deployenv import DeployEnv
from support.pki import LineagePaths, RelayPKI, relay_certs, write_lineage

REPO = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "clients"
USER, PASSWORD = "robot", "bench-relay-password-0123"
P12_PASSPHRASE = "bench-p12-passphrase-0123"
SENDER, RECIPIENT = "certbot@example.com", "pki@example.com"


BYTECODE_ENV = "BENCH_PYCACHE"  # set by suite.py: where the children keep their compiled bytecode


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every measured child: this worktree first on the path, no ACME client variables, and
    bytecode kept between runs as an installed package has it (pip and Debian's dh_python byte-compile at install;
    without it every run compiled the package from source, ~90 ms), in a cache of the suite's own, not the tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENEWED_", "LEGO_", "CERTBOT_SMTP_DIST"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["BENCH_SMTP_USER"], env["BENCH_SMTP_PASSWORD"] = USER, PASSWORD
    env.update(extra or {})
    if BYTECODE_ENV in os.environ:  # last: `extra` may be a whole environment (DeployEnv.env copies os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.environ[BYTECODE_ENV]
    return env


@dataclass(frozen=True, slots=True)
class World:
    root: Path
    pki: RelayPKI
    lineage: LineagePaths
    python: str

    def target(self, port: int, **overrides: Any) -> dict[str, Any]:
        """A target on a loopback relay: STARTTLS required, the bench CA trusted, AUTH PLAIN."""
        table: dict[str, Any] = {
            "host": "127.0.0.1", "port": port, "tls_mode": "starttls", "tls_ca_file": str(self.pki.ca_file),
            "auth_method": "plain", "username": USER, "password_credential": "relay",
            "from_address": SENDER, "to": [RECIPIENT],
        }
        table.update(overrides)
        return table

    def install(self, name: str, targets: Mapping[str, Mapping[str, Any]],
                defaults: Mapping[str, Any] | None = None) -> Installation:
        denv = DeployEnv(self.root / name)
        denv.set_credential("relay", "smtp_password", PASSWORD)
        denv.set_credential("archive-p12", "smtp_pkcs12_passphrase", P12_PASSPHRASE)
        denv.write_config(targets, defaults)
        return Installation(self, denv, tuple(targets))

    def client(self, script: str, *args: object) -> list[str]:
        return [self.python, str(CLIENTS / script), *(str(a) for a in args)]


def make_world(root: Path, python: str = sys.executable) -> World:
    lineage = write_lineage(root / "live" / "bench.example.com")
    return World(root, relay_certs(root / "pki"), lineage, python)


@dataclass(frozen=True, slots=True)
class Installation:
    """One config file and state dir: `deploy` runs as a cold process, as an ACME client runs the hook."""

    world: World
    denv: DeployEnv
    targets: tuple[str, ...]

    def argv(self, *extra: str) -> list[str]:
        return [self.world.python, "-m", "certbot_smtp_dist", "deploy", "--lineage",
                str(self.world.lineage.live_dir), *extra]

    def env(self) -> dict[str, str]:
        return child_env(self.denv.env())

    def deploy(self, timeout: float = 600) -> Sample:
        return run_process(self.argv("--json"), self.env(), timeout=timeout)

    def render(self) -> Path:
        """The message `deploy` sends to the first target, for the peers to send byte for byte."""
        out = self.denv.root / "rendered"
        sample = run_process(self.argv("--dry-run", "--output", str(out), "--target", self.targets[0]),
                             self.env(), timeout=120)
        message = out / f"{self.targets[0]}.eml"
        if sample.returncode != 0 or not message.is_file():
            raise BenchError(f"dry run failed (exit {sample.returncode}): {sample.stderr.strip()[-400:]}")
        return message


def outcomes(sample: Sample) -> dict[str, dict[str, Any]]:
    """Per-target records of a `deploy --json` run."""
    try:
        doc = json.loads(sample.stdout)
        return {t["target"]: t for t in doc["targets"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"deploy --json printed no report (exit {sample.returncode}): "
                         f"{sample.stderr.strip()[-400:]}") from exc


def expect_delivered(names: Sequence[str], *, exit_status: int | None = 0) -> Callable[[Sample], None]:
    """A check that every named target was delivered, and that the run exited `exit_status` (None: any)."""
    def check(sample: Sample) -> None:
        found = outcomes(sample)
        bad = [n for n in names if found.get(n, {}).get("status") != "delivered"]
        if bad or exit_status not in (None, sample.returncode):
            first = found.get(bad[0], {}) if bad else {}
            raise BenchError(f"{len(bad)} of {len(names)} target(s) not delivered (exit {sample.returncode}); "
                             f"first: {bad[:1]} {first.get('error_code')} {first.get('detail')}")
    return check
