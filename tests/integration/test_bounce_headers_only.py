"""A bounce must not carry the artefact back: RET=HDRS where the relay offers DSN (RFC 3461 §4.3).

A message that bounces after the relay took it comes back to the envelope sender, whole by default: the private
key or the PKCS#12 in it would land in the `from_address` mailbox, which others than the recipients may read. A
relay that offers DSN (Postfix and sendmail do by default) is asked for the headers alone; one that does not offer
it gets no parameter it would refuse (RFC 3461 §4.1, RFC 5321 §4.1.1.2).
"""

from __future__ import annotations

from typing import Any

import pytest
from support.deployenv import DeployEnv
from support.pki import LineagePaths, RelayPKI

pytestmark = pytest.mark.timeout(60)

BASE = ("8BITMIME", "SIZE 10485760")


@pytest.mark.parametrize("offered", [BASE + ("DSN",), BASE + ("dsn",), BASE])
def test_mail_from_asks_for_headers_only_where_dsn_is_offered(denv: DeployEnv, lineage: LineagePaths, fault_server: Any,
                                                              relay_pki: RelayPKI, offered: tuple[str, ...]) -> None:
    server = fault_server(tls_context=relay_pki.server_context(), ehlo_extensions=offered)
    denv.write_config({"relay": {"host": "127.0.0.1", "port": server.port, "tls_mode": "starttls",
                                 "tls_ca_file": str(relay_pki.ca_file), "from_address": "certbot@example.com",
                                 "to": ["pki@example.com"], "payload": "pem_and_key"}})
    run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
    assert run.returncode == 0, run.stderr
    assert run.target("relay")["status"] == "delivered"
    assert server.wait_idle()
    mail = [line for direction, line in server.transcript if direction == "C" and line.upper().startswith("MAIL")]
    wanted = " RET=HDRS" if any(e.upper() == "DSN" for e in offered) else ""
    assert mail == [f"MAIL FROM:<certbot@example.com>{wanted}"], server.transcript
