"""How a delivery ends up, told to its sender: one step for the state and the report owed.

Every outcome (delivered, failed, rejected, delayed) moves the delivery and records the
report the sender is owed in the same spool transaction, and only from the states it may
come from, so two outcomes racing (a duplicate ACCEPTED, a REJECTED after expiry) never
report twice. The report stage sends it afterwards and clears the note (`Notify` wakes
it); a bridge killed in between sends it after the restart. Settling never waits for the
smart host. A report the recipient's NOTIFY does not ask for (most: a success without
NOTIFY=SUCCESS) is not owed at all, which spares the report stage a round and a commit.
"""

import asyncio
from collections.abc import Callable, Collection
from enum import StrEnum
from typing import Any

from ..spool import Delivery, NoteChanges, OwedReport, Spool, State
from . import dsn


class Event(StrEnum):
    """What the sender is told about (a DSN, where NOTIFY asks for it)."""

    DELIVERED = "delivered"
    DELIVERED_AFTER_ALL = "delivered-after-all"  # after an earlier failure report
    FAILED = "failed"
    REJECTED = "rejected"  # failed, by the receiving organisation's kvittens
    DELAYED = "delayed"


ACTIONS = {
    Event.DELIVERED: dsn.Action.DELIVERED,
    Event.DELIVERED_AFTER_ALL: dsn.Action.DELIVERED,
    Event.FAILED: dsn.Action.FAILED,
    Event.REJECTED: dsn.Action.FAILED,
    Event.DELAYED: dsn.Action.DELAYED,
}

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
    updated = await asyncio.to_thread(
        settled, spool, delivery, from_states, event, status, text, **changes
    )
    tell(notify, updated)
    return updated


def settled(
    spool: Spool,
    delivery: Delivery,
    from_states: Collection[State],
    event: Event,
    status: str,
    text: str,
    **changes: Any,
) -> Delivery | None:
    """`settle` in the calling thread, which `tell` must follow on the event loop: for a
    stage that does more spool work in the same thread hop."""
    notes = NoteChanges(**changes.pop("notes", {}))
    after_failure = event is Event.DELIVERED_AFTER_ALL
    wanted = dsn.should_notify(
        delivery.recipient.notify, ACTIONS[event], after_failure=after_failure
    )
    # Unwanted, it still replaces a report owed before (a delay, say): this one is newer.
    notes["report"] = OwedReport(str(event), status, text) if wanted else None
    if event in (Event.FAILED, Event.REJECTED):
        notes["failure_reported"] = True
    if event is Event.DELAYED:  # once, whichever instance sweeps first
        notes["delay_reported"] = True
        changes["when"] = lambda now: not now.notes.delay_reported
    return spool.transition(delivery.id, from_states, notes=notes, **changes)


def tell(notify: Notify | None, delivery: Delivery | None) -> None:
    """Wake the report stage for a delivery (as settled) that now owes a report."""
    if delivery is not None and notify is not None and delivery.notes.report is not None:
        notify(delivery)
