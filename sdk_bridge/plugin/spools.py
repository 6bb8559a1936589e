"""For spool back ends: the contract they implement (`spool.contract.Spool`, by
subclassing it), the records they keep, how rows become records (`spool.tables`), and the
retention rules every back end applies the same way."""

from ..spool import (
    Conclusion,
    ContentRemoved,
    Delivery,
    DuplicateMessage,
    Envelope,
    InboundMail,
    InboxState,
    OwedKvittens,
    Purged,
    Received,
    RecipientRecord,
    Retention,
    SpoolFull,
    SpoolUnavailable,
    SQLiteSpool,
    State,
    tables,
)
from ..spool.batches import first_within
from ..spool.contract import Decide, Spool
from ..spool.retention import (
    CONCLUDED_RECEIVED,
    HELD_RECEIVED,
    LEFT_AT_ACCESS_POINT,
    SETTLED_DELIVERIES,
    TAKEN_KVITTENS,
)

__all__ = [
    "CONCLUDED_RECEIVED",
    "HELD_RECEIVED",
    "LEFT_AT_ACCESS_POINT",
    "SETTLED_DELIVERIES",
    "TAKEN_KVITTENS",
    "Conclusion",
    "ContentRemoved",
    "Decide",
    "Delivery",
    "DuplicateMessage",
    "Envelope",
    "InboundMail",
    "InboxState",
    "OwedKvittens",
    "Purged",
    "Received",
    "RecipientRecord",
    "Retention",
    "SQLiteSpool",
    "Spool",
    "SpoolFull",
    "SpoolUnavailable",
    "State",
    "first_within",
    "tables",
]
