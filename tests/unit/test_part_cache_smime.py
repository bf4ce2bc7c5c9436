"""A run's targets share its attachments' MIME parts (render.PartCache): a target signed by the S/MIME message hook
(which re-parses and re-encodes the message before signing) must leave the parts a plain target gets untouched."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from support.pki import write_lineage, write_smime

from certbot_smtp_dist._internal import lineage, pipeline, plugins, render
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS

FORMATS = {f.name: f for f in BUILTIN_FORMATS}
NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def unbounded(data: bytes) -> bytes:
    for boundary in set(re.findall(rb'boundary="([^"]+)"', data)):
        data = data.replace(boundary, b"BOUNDARY")
    return data


def test_a_signed_target_leaves_the_shared_parts_as_a_plain_target_renders_them(tmp_path: Path) -> None:
    pki = write_smime(tmp_path / "smime")
    lin = write_lineage(tmp_path / "live" / "test.example.com")
    base = {"host": "smtp.example.com", "from_address": "certbot@example.com", "to": ["pki@example.com"]}
    signed = {**base, "payload": "pem_and_key", "smime_sign_cert": str(pki.signer_cert),
              "smime_sign_key": str(pki.signer_key)}
    targets = parse_settings({"targets": {"signed": signed, "plain": {**base, "payload": "pem_and_key"},
                                          "pem": {**base, "payload": "pem"}}}, Path("/etc/x/c.toml"), {}, FORMATS).targets
    artefact = lineage.load(lineage.from_lineage_dir(lin.live_dir))
    hook = plugins.message_hook(plugins.make_manager(load_entry_points=False))
    parts = render.PartCache()
    shared = {}
    for t in targets:  # the signed target first: its hook runs before the plain ones render
        job = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, "<1@example.com>", message_hook=hook, parts=parts)
        assert job.message is not None, job.failure
        shared[t.name] = job.message
    assert shared["signed"].signed and not shared["plain"].signed
    assert sorted(a.filename for a in parts.attachments) == ["test.example.com.fullchain.pem", "test.example.com.key.pem"]
    for t in targets[1:]:
        alone = pipeline.prepare_job(t, artefact, FORMATS, {}, NOW, "<1@example.com>", message_hook=hook).message
        assert alone is not None
        assert unbounded(shared[t.name].data) == unbounded(alone.data)
