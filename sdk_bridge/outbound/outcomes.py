"""How a delivery ends up, told to its sender: one step for the state and the report owed.

Every outcome (delivered, failed, rejected, delayed) moves the delivery and records the
report the sender is owed in the same spool transaction, and only from the states it may
come from, so two outcomes racing (a duplicate ACCEPTED, a REJECTED after expiry) never
report twice. The report stage sends it afterwards and clears the note (`Notify` wakes
it); a bridge killed in between sends it after the restart. Settling never waits for the
smart host.
"""

import asyncio
from collections.abc import Callable, Collection
from enum import StrEnum
from typing import Any

from ..spool import Delivery, NoteChanges, OwedReport, Spool, State


class Event(StrEnum):
    """What the sender is told about (a DSN, where NOTIFY asks for it)."""

    DELIVERED = "delivered"
    DELIVERED_AFTER_ALL = "delivered-after-all"  # after an earlier failure report
    FAILED = "failed"
    REJECTED = "rejected"  # failed, by the receiving organisation's kvittens
    DELAYED = "delayed"


# Told of a delivery whose notes now owe its sender a report (wakes the report stage).
Notify = Callable[[Delivery], None]


async def settle(
    spool: Spool,
    notify: Notify | None,
    delivery: Delivery,
    from_states: Collection[State],
    event: Event,
    status: str,
    text: str,
    **changes: Any,
) -> Delivery | None:
    """Move `delivery` and owe its sender a report; None if it had already moved on."""
    notes = NoteChanges(**changes.pop("notes", {}))
    notes["report"] = OwedReport(str(event), status, text)
    if event in (Event.FAILED, Event.REJECTED):
        notes["failure_reported"] = True
    if event is Event.DELAYED:  # once, whichever instance sweeps first
        notes["delay_reported"] = True
        changes["when"] = lambda now: not now.notes.delay_reported
    updated = await asyncio.to_thread(
        spool.transition, delivery.id, from_states, notes=notes, **changes
    )
    if updated is not None and notify is not None:
        notify(updated)
    return updated
