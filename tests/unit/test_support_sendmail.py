"""Self-tests of the sendmail harness's delivery agent (tests/support/sendmail.py), which runs as root."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import sendmail


def _deliver(tmp_path: Path, local_part: str, body: bytes) -> tuple[int, Path]:
    messages = tmp_path / "messages"
    messages.mkdir()
    script = tmp_path / "deliver"
    script.write_text(sendmail._deliver_script(messages))
    result = subprocess.run(["sh", str(script), local_part], input=body, capture_output=True, timeout=30)
    return result.returncode, messages


@pytest.mark.parametrize("local_part", ["", "../etc", "a/b", ".hidden", "a b", "x\ny", "*"])
def test_a_local_part_that_could_name_a_path_is_refused(tmp_path: Path, local_part: str) -> None:
    code, messages = _deliver(tmp_path, local_part, b"Subject: x\n\nbody\n")
    assert code == 67  # EX_NOUSER: sendmail refuses the recipient
    assert list(messages.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["deliver", "messages"]


def test_one_file_per_message_named_after_the_local_part(tmp_path: Path) -> None:
    body = b"Subject: x\n\nbody\n"
    code, messages = _deliver(tmp_path, "pki", body)
    assert code == 0
    [written] = list(messages.iterdir())
    assert written.name.startswith("pki.") and written.read_bytes() == body
    assert written.stat().st_mode & 0o077 == 0
