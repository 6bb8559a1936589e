"""The durable queue between the stages: one record per (message, recipient).

SMTP ingress stores a message here before it answers 250; the outbound worker takes due
deliveries, and every step it takes is written back, so a restarted bridge resumes where
the killed one stopped. `Spool` (`contract`) is what the stages rely on; `SQLiteSpool` is
the embedded default, and other back ends are plugins subclassing `Spool` (group
sdk_bridge.spools).
"""

from .contract import Spool
from .errors import STORAGE_ERRORS, ContentRemoved, DuplicateMessage, SpoolFull, SpoolUnavailable
from .records import (
    Conclusion,
    Delivery,
    Envelope,
    InboundMail,
    InboxState,
    NoteChanges,
    Notes,
    OwedKvittens,
    OwedReport,
    Received,
    RecipientRecord,
    State,
)
from .retention import Purged, Retention
from .sqlite import SQLiteSpool

__all__ = [
    "STORAGE_ERRORS",
    "Conclusion",
    "ContentRemoved",
    "Delivery",
    "DuplicateMessage",
    "Envelope",
    "InboundMail",
    "InboxState",
    "NoteChanges",
    "Notes",
    "OwedKvittens",
    "OwedReport",
    "Purged",
    "Received",
    "RecipientRecord",
    "Retention",
    "SQLiteSpool",
    "Spool",
    "SpoolFull",
    "SpoolUnavailable",
    "State",
]
