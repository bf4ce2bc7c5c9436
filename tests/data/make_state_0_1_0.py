"""How tests/data/state-0.1.0 was made: certbot-smtp-dist 0.1.0 itself (commit a04960a), run against loopback.

    git -C <repo> worktree add /tmp/v010 a04960a
    PYTHONPATH=/tmp/v010:tests python tests/data/make_state_0_1_0.py /tmp/v010-data
    cp -r /tmp/v010-data/. tests/data/state-0.1.0/

One target (`up`) is delivered by a real aiosmtpd relay (history), one (`down`) points at a closed port and stays
pending in the spool, after a deploy and a retry. Only test keys; the paths in it start with /tmp/v010-data, which
the upgrade test rewrites to its own directory (0.1.0 entries carry no MAC, so moving them is plain editing).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from support.pki import write_lineage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(out: Path) -> None:
    import certbot_smtp_dist

    assert certbot_smtp_dist.__version__ == "0.1.0", certbot_smtp_dist.__file__
    lineage = write_lineage(out / "live" / "test.example.com",
                            not_before=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                            not_after=dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc))
    up, down = free_port(), free_port()
    (out / "etc").mkdir(mode=0o700)
    config = out / "etc" / "config.toml"
    config.write_text("".join(
        f'[targets.{name}]\nhost = "127.0.0.1"\nport = {port}\ntls_mode = "plaintext"\ntimeout = 2\n'
        f'from_address = "certbot@example.com"\nto = ["pki@example.com"]\n\n' for name, port in (("up", up),
                                                                                                ("down", down))))
    relay = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{up}"], cwd=out,
                             stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", up), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {**os.environ, "CERTBOT_SMTP_DIST_CONFIG": str(config),
               "CERTBOT_SMTP_DIST_STATE_DIR": str(out / "state")}
        for args in (["deploy", "--lineage", str(lineage.live_dir)], ["retry"]):
            run = subprocess.run([sys.executable, "-m", "certbot_smtp_dist", *args], env=env, timeout=120,
                                 cwd=out)  # not the checkout: `-m` puts the working directory first on sys.path
            print(args[0], "exit", run.returncode)
    finally:
        relay.terminate()
        relay.wait(timeout=10)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
