"""bench/suite.py (issue 16) runs end to end: `--quick --only 1` prints a well-formed row; no timing is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "bench" / "suite.py"


def _suite(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_quick_scenario_1_prints_a_judged_row_and_writes_results(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"

    proc = _suite("--quick", "--only", "1", "--results", str(results))

    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    assert rows, proc.stdout
    cells = _cells(rows[0])
    assert len(cells) == 7
    assert cells[1] == "cold deploy, 1 target, pem / minimal smtplib script"
    for measured in cells[2:4]:  # subject and peer: wall / CPU / peak RSS
        assert re.fullmatch(r"\d+ ms / \d+ ms / \d+ MiB", measured), measured
    assert re.fullmatch(r"\d+\.\d\d×", cells[4]), cells[4]
    assert cells[5] == "<= 2×"
    assert cells[6] in {"OK", "OVER"}
    assert all(len(_cells(row)) == 7 for row in rows)  # the optional peers: measured or SKIP with a note
    written = results.read_text()
    assert "## Machine" in written and "- CPU: " in written and rows[0] in written


def test_unknown_scenario_is_a_usage_error(tmp_path: Path) -> None:
    proc = _suite("--only", "9", "--results", str(tmp_path / "r.md"), timeout=60)

    assert proc.returncode == 2
    assert "unknown scenario(s) 9" in proc.stderr
    assert not (tmp_path / "r.md").exists()


def test_only_the_scenarios_comparing_against_aiosmtplib_need_it() -> None:
    # aiosmtplib is the `bench` extra, not a dependency: Debian 12's own stack has none, and scenario 1 must run there
    # (a clean machine's CI failed when the suite imported it for every scenario).
    probe = ("import sys; sys.path.insert(0, 'bench'); import suite; "
             "print(suite.prime_imports(['1', '2']).count('aiosmtplib'), suite.prime_imports(['1', '7']).count('aiosmtplib'), "
             "suite.prime_imports(['3']).count('aiosmtplib'))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1", "1"]
