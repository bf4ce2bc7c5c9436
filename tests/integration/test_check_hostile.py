"""`check` against a hostile relay: what it prints stays bounded, printable and parseable."""

from __future__ import annotations

from typing import Any

from support.deployenv import DeployEnv
from support.pki import RelayPKI


def fault_target(server: Any, relay_pki: RelayPKI, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "tls_mode": "starttls",
                             "tls_ca_file": str(relay_pki.ca_file), "from_address": "certbot@example.com",
                             "to": ["pki@example.com"], "timeout": 10}
    table.update(overrides)
    return table


def test_a_size_parameter_of_unicode_digits_is_no_number(denv: DeployEnv, fault_server, relay_pki: RelayPKI) -> None:
    # RFC 1870 §4: 1*20DIGIT, ASCII. "²" passes str.isdigit() but not int(); "١٢" is read by int() as 12.
    for size in ("\u00b2", "\u0661\u0662"):
        server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=(f"SIZE {size}", "8BITMIME"))
        denv.write_config({"archive": fault_target(server, relay_pki)})

        run = denv.run("check", "--json")

        assert run.returncode == 0, run.stdout + run.stderr
        assert run.target("archive")["ehlo_after_tls"]["size_limit"] == 0  # no number: no limit we can compare
        human = denv.run("check")
        assert human.returncode == 0 and "SIZE (no limit)" in human.stdout, human.stdout + human.stderr
