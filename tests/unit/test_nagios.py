"""The `status --nagios` verdict (pure): thresholds, an expired certificate, and output no `|` can break."""

from __future__ import annotations

from certbot_smtp_dist._internal import nagios

NOW = 1.8e9
DAY = 86400.0


def verdict(rows: list[dict[str, object]], human: list[bool], days: float | None) -> tuple[int, str]:
    expiries = [] if days is None else [nagios.Expiry("t", "c", NOW + days * DAY)]
    return nagios.check(rows, human, expiries, NOW, nagios.Thresholds(14, 7))


def test_thresholds() -> None:
    assert verdict([], [], None)[0] == nagios.OK
    assert verdict([], [], 14.01)[0] == nagios.OK
    assert verdict([], [], 13.99)[0] == nagios.WARNING
    assert verdict([], [], 6.99)[0] == nagios.CRITICAL
    expired = verdict([], [], -2)
    assert expired[0] == nagios.CRITICAL and "expired 2.0 days ago" in expired[1]
    assert "expires_in_days=-2.00;14:;7:;;" in expired[1]


def test_states() -> None:
    pending = {"state": "pending", "created": "2027-01-15T07:00:00+00:00"}
    assert verdict([pending], [False], None)[0] == nagios.WARNING
    assert "oldest_pending=3600s;;;0" in verdict([pending], [False], None)[1]
    assert verdict([{"state": "uncertain"}], [True], None)[0] == nagios.CRITICAL
    assert verdict([{"state": "rejected", "id": "x", "detail": "forged"}], [True], 60)[0] == nagios.CRITICAL


def test_no_pipe_or_line_break_from_names_or_server_text() -> None:
    row = {"state": "failed", "id": "x", "target": "t", "certificate": "a|b\nc", "error_code": "X|Y"}
    code, text = nagios.check([row], [True], [nagios.Expiry("t", "a|b", NOW + 30 * DAY)], NOW, nagios.Thresholds())
    first, *rest = text.split("\n")
    assert code == nagios.CRITICAL and first.count("|") == 1 and all("|" not in line for line in rest)
    assert len(rest) == 2
