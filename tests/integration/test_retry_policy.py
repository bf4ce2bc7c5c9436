"""One retry policy from [defaults]: `retry_attempts` bounds the SMTP sessions of a run, `retry_max_age` the days
`retry` keeps a spooled delivery before closing it as expired (journalled)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from support.deployenv import DeployEnv, relay_target
from support.pki import LineagePaths

from certbot_smtp_dist._internal import drain


def down(port: int) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "tls_mode": "plaintext", "timeout": 20,
            "from_address": "c@example.com", "to": ["x@example.com"]}


def test_retry_attempts_bounds_the_sessions_of_a_run(denv: DeployEnv, lineage: LineagePaths,
                                                     unused_port: int) -> None:
    for attempts in (1, 2):
        denv.write_config({"a": down(unused_port)}, defaults={"retry_attempts": attempts})
        run = denv.run("deploy", "--lineage", str(lineage.live_dir), "--json")
        assert run.returncode == 75 and run.target("a")["attempts"] == attempts


def test_retry_max_age_expires_a_spooled_delivery(denv: DeployEnv, lineage: LineagePaths, relay_factory,
                                                  unused_port: int) -> None:
    denv.write_config({"a": down(unused_port)}, defaults={"retry_attempts": 1})
    assert denv.run("deploy", "--lineage", str(lineage.live_dir)).returncode == 75
    relay = relay_factory("plaintext")
    denv.write_config({"a": relay_target(relay)}, defaults={"retry_max_age": 1})
    later = datetime.now(timezone.utc) + timedelta(days=1, hours=1)
    outcome = drain.run(denv.state_dir, denv.config, now=later)
    assert [why for _, why in outcome.closed] == ["expired"]
    assert relay.messages == []
    last = json.loads((denv.state_dir / "journal.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "expired" and "retry_max_age" in last["detail"]
