"""pipeline.RelaySlots.take: a free slot is taken at once (no timer, no task: issue 16's per-target cost), a busy
relay's slot is waited for within the budget, and none is ever held beyond the bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

from certbot_smtp_dist._internal import pipeline
from certbot_smtp_dist._internal.config import parse_settings
from certbot_smtp_dist._internal.payload import BUILTIN_FORMATS
from certbot_smtp_dist.model import Target


def target(host: str = "127.0.0.1", port: int = 2525) -> Target:
    doc = {"targets": {"t": {"host": host, "port": port, "tls_mode": "plaintext", "from_address": "a@example.com",
                             "to": ["b@example.com"]}}}
    return parse_settings(doc, Path("c.toml"), {}, {f.name: f for f in BUILTIN_FORMATS}).targets[0]


def test_free_slots_are_taken_at_once_and_the_bound_holds() -> None:
    async def scenario() -> list[float | None]:
        slots = pipeline.RelaySlots(2)
        t = target()
        waited = [await slots.take(t, 5.0), await slots.take(t, 5.0)]
        assert slots._of(t).locked()
        waited.append(await slots.take(t, 0.05))  # none free: waited for, in vain, within its budget
        slots.give_back(t)
        waited.append(await slots.take(t, 5.0))  # given back: free again, taken at once
        return waited

    first, second, none, again = asyncio.run(scenario())
    assert none is None
    assert all(w is not None and 0 <= w < 1.0 for w in (first, second, again))


def test_a_slot_given_back_during_the_wait_is_taken_and_the_wait_counted() -> None:
    async def scenario() -> tuple[float | None, bool]:
        slots = pipeline.RelaySlots(1)
        t = target()
        assert await slots.take(t, 5.0) is not None
        asyncio.get_running_loop().call_later(0.05, slots.give_back, t)
        waited = await slots.take(t, 5.0)
        return waited, slots._of(t).locked()

    waited, held = asyncio.run(scenario())
    assert waited is not None and waited > 0 and held


def test_relays_are_bounded_apart() -> None:
    async def scenario() -> list[float | None]:
        slots = pipeline.RelaySlots(1)
        return [await slots.take(target(port=25), 5.0), await slots.take(target(port=587), 5.0),
                await slots.take(target("127.0.0.1", 25), 0.01)]

    assert [w is None for w in asyncio.run(scenario())] == [False, False, True]
