"""The operator's guide in README.rst, run as written: the deploy-hook script, the JSON shape, the minimal config.

(tests/unit/test_readme.py checks the minimal config, the unit file and the cron line without a relay.)
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import ci
from support.deployenv import DeployEnv, relay_target
from support.pki import write_lineage
from support.relay import Relay

README = Path(__file__).resolve().parents[2] / "README.rst"
PASSWORD = "readme-relay-password"


def literal_block(language: str, first_line: str) -> str:
    for chunk in README.read_text("utf-8").split(f".. code-block:: {language}\n\n")[1:]:
        lines = []
        for line in chunk.splitlines():
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        if lines and lines[0].startswith(first_line):
            return "\n".join(lines).strip("\n") + "\n"
    raise AssertionError(f"README.rst has no {language} block starting with {first_line!r}")


def shape(value: Any) -> Any:
    """The keys of every object, recursively; lists by their first element; leaves by JSON type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_the_deploy_hook_script_ships_the_renewed_certificate(denv: DeployEnv, relay_factory: Any,
                                                              tmp_path: Path) -> None:
    """The README's renewal-hooks/deploy script and its minimal config, as certbot would run them."""
    script = literal_block("sh", "#!/bin/sh")
    shellcheck = ci.require_tool("shellcheck", "apt-get install shellcheck")
    checked = subprocess.run([shellcheck, "-s", "sh", "-"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stdout
    relay: Relay = relay_factory(mode="starttls", auth=("certbot@example.com", PASSWORD))
    minimal = literal_block("toml", "# /etc/letsencrypt/smtp-dist/config.toml (minimal)")
    # Only where the relay is changes: this one listens on loopback and trusts the test CA.
    denv.config.write_text(minimal.replace('host = "smtp.example.com"',
                                           f'host = "127.0.0.1"\nport = {relay.port}\n'
                                           f'tls_ca_file = "{relay.pki.ca_file}"'))
    denv.config.chmod(0o600)
    denv.set_credential("relay", "smtp_password", PASSWORD)
    program = tmp_path / "certbot-smtp-dist"  # stands in for /usr/bin/certbot-smtp-dist on this interpreter
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m certbot_smtp_dist "$@"\n')
    program.chmod(0o755)
    hook = tmp_path / "50-smtp-dist"
    hook.write_text(script.replace("/usr/bin/certbot-smtp-dist", str(program)))
    hook.chmod(0o755)
    lineage = write_lineage(tmp_path / "live" / "example.com", names=("example.com",))

    proc = subprocess.run([str(hook)], env=denv.env({"RENEWED_LINEAGE": str(lineage.live_dir)}),
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    [message] = relay.messages
    assert message.rcpt_tos == ("pki@example.com",) and message.tls and message.auth_user == "certbot@example.com"
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    [chain] = [part.get_content() for part in parsed.iter_attachments()]  # pem: the chain and nothing else
    assert chain.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" not in chain


def test_the_json_example_has_the_shape_of_a_real_partial_delivery(denv: DeployEnv, relay_factory: Any,
                                                                   tmp_path: Path) -> None:
    documented = json.loads(literal_block("json", "{"))
    relay: Relay = relay_factory(mode="plaintext", reject={"gone@example.com": "550 5.1.1 No such user"})
    denv.write_config({"pki-archive": relay_target(relay, to=["pki@example.com", "gone@example.com"])})
    lineage = write_lineage(tmp_path / "live" / "example.com", names=("example.com",))

    run = denv.run("deploy", "--json", "--lineage", str(lineage.live_dir))

    real = run.json
    assert shape(real) == shape(documented), run.stdout
    [target] = real["targets"]
    assert (target["status"], target["smtp_code"], target["enhanced_status"]) == ("partial", 550, "5.1.1")
    assert run.returncode == 69  # EX_UNAVAILABLE: a permanent refusal, documented beside the example


def test_an_invalid_config_sends_nothing_and_lists_every_problem(denv: DeployEnv, relay_factory: Any,
                                                                 tmp_path: Path) -> None:
    relay: Relay = relay_factory(mode="plaintext")
    denv.write_config({"ops": relay_target(relay, port=70000), "web": relay_target(relay)})
    lineage = write_lineage(tmp_path / "live" / "example.com", names=("example.com",))

    run = denv.run("deploy", "--json", "--lineage", str(lineage.live_dir))

    assert run.returncode == 78 and run.json["targets"] == [] and relay.connections == 0
    assert {"target": "ops", "key": "port", "problem": "70000 is out of range 1..65535"} in run.json["config_errors"]
