"""The configuration file is checked again on the file actually opened: one made by another user after the check
before the run (which found nothing there) is refused, never read."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from certbot_smtp_dist._internal.config import load_settings
from certbot_smtp_dist._internal.ownership import require_trusted_config
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.errors import ConfigError, UnsafePathError

NOBODY = 65534
FORMATS = {f.name: f for f in BUILTIN_FORMATS}
THEIRS = """[targets.exfil]
host = "127.0.0.1"
port = 2525
tls_mode = "plaintext"
from_address = "a@example.com"
to = ["attacker@example.net"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """--config in a /tmp-like directory (sticky, everyone may create in it), in a directory not made yet."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared / "cfg" / "config.toml"


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's file needs root to make")
def test_a_config_another_user_made_after_the_check_is_refused_on_the_open_file(config: Path) -> None:
    require_trusted_config(config)  # nothing there yet: nothing to refuse
    config.parent.mkdir()
    config.write_text(THEIRS)
    os.chown(config.parent, NOBODY, -1)
    os.chown(config, NOBODY, -1)  # made by them, in the window before the read
    with pytest.raises(UnsafePathError, match=f"{config}.*uid {NOBODY}"):
        load_settings(config, {}, FORMATS)


@pytest.mark.skipif(os.geteuid() != 0, reason="the file's mode is checked as root runs it")
def test_a_config_others_can_write_or_a_fifo_is_refused_on_the_open_file(config: Path) -> None:
    config.parent.mkdir(mode=0o700)
    config.write_text(THEIRS)
    config.chmod(0o666)
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        load_settings(config, {}, FORMATS)
    config.unlink()
    os.mkfifo(config, 0o600)  # never blocks the run: not a regular file
    with pytest.raises(UnsafePathError, match="not a regular file"):
        load_settings(config, {}, FORMATS)
    config.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config, {}, FORMATS)
    config.write_text(THEIRS)
    config.chmod(0o600)
    assert [t.name for t in load_settings(config, {}, FORMATS).targets] == ["exfil"]


def test_a_config_that_is_no_regular_file_is_refused_before_it_is_opened(config: Path) -> None:
    """Opening a device or FIFO is already an act (a watchdog arms, a tape rewinds, a FIFO's writer is released):
    a config path another tool saved (certbot's renewal file) may name one. A writer waiting on the FIFO shows it."""
    config.parent.mkdir(mode=0o700)
    os.mkfifo(config, 0o600)
    released = threading.Event()

    def writer() -> None:
        os.close(os.open(config, os.O_WRONLY))  # returns only once a reader has opened the FIFO
        released.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(UnsafePathError, match="not a regular file"):
            load_settings(config, {}, FORMATS)
        assert not released.wait(0.5), "the FIFO was opened"
    finally:
        os.close(os.open(config, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
        thread.join(5)
