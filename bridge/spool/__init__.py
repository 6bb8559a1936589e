"""The durable queue between the stages: one record per (message, recipient).

SMTP ingress stores a message here before it answers 250; the outbound worker takes due
deliveries, and every step it takes is written back, so a restarted bridge resumes where
the killed one stopped. `SQLiteSpool` is the embedded default; a server-backed store can
follow by offering the same methods.
"""

from .sqlite import Delivery, Envelope, Received, RecipientRecord, SQLiteSpool, State

__all__ = ["Delivery", "Envelope", "Received", "RecipientRecord", "SQLiteSpool", "State"]
