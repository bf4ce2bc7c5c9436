"""unwanted.py: which certificates `status` names as wanted by no target at their last deploy, from journal records
in order (pure: the records are what Journal.audit vouched for)."""

from __future__ import annotations

from typing import Any

from certbot_smtp_dist._internal.unwanted import NO_TARGET, Unwanted, never_delivered, unwanted


def rec(event: str, certificate: str, time: str, **fields: Any) -> dict[str, Any]:
    return {"event": event, "certificate": certificate, "time": time, **fields}


def test_the_last_outcome_per_certificate_decides() -> None:
    records = [
        rec(NO_TARGET, "a.example", "t1", targets=["x"], names=["a.example"]),
        rec("attempt", "a.example", "t2", outcome="delivered"),  # wanted again since: not named
        rec("attempt", "b.example", "t3", outcome="failed"),
        rec(NO_TARGET, "b.example", "t4", targets=["x", "y"], names=["b.example", "www.b.example"]),
        rec(NO_TARGET, "c.example", "t5", targets=["x"], names=["c.example"]),
        rec("skipped", "c.example", "t6", reason="min_interval"),  # a quiet target wanted it, held it back
        rec("dismissed", "b.example", "t7"),  # closing events decide nothing about who wants it
        {"event": "journal_started", "time": "t0"},
    ]
    assert unwanted(records) == [Unwanted("b.example", "t4", ("x", "y"), ("b.example", "www.b.example"))]
    assert not never_delivered(records)
    assert never_delivered([records[0], records[4], records[7]])


def test_a_line_names_at_most_five_names_and_reads_as_one_line() -> None:
    many = tuple(f"n{i}.example" for i in range(8))
    line = Unwanted("m.example", "t", ("x",), many).line()
    assert "n4.example and 3 more" in line and "n5.example" not in line and "\n" not in line
    assert line.endswith("matches n0.example, n1.example, n2.example, n3.example, n4.example and 3 more); nothing "
                         "to deliver")
    assert "(none selected)" in Unwanted("m.example", "t", (), ()).line()
