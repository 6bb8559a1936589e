"""Mail mapped at ingress, kept for the outbound worker so that it is not parsed twice.

Ingress maps every mail to refuse what SDK cannot carry; the worker needs the same
mapping for each recipient. Kept in memory only, bounded, and each entry only until every
recipient's delivery has taken it or `MAX_AGE` has passed (the worker took the mail from
the spool before ingress kept it, or it waits for a retry): a mail not found here (after a
restart, on a retry, one too large to keep, one pushed out by newer mail) is mapped again
from the spool, with the same result.
"""

import threading
import time
from collections import OrderedDict

from .to_sdk import MappedMail

MAX_BYTES = 16 * 1024 * 1024  # all entries together
MAX_ENTRY_BYTES = 1024 * 1024  # larger mail is mapped again: holding it costs more than that
MAX_AGE = 60.0  # seconds; a mail's content is not held longer than its submission needs


class Premapped:
    """Thread-safe: ingress keeps on the event loop, the worker takes in a thread."""

    def __init__(
        self,
        max_bytes: int = MAX_BYTES,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        max_age: float = MAX_AGE,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.max_age = max_age
        # message id -> (mapping, deliveries still to take it, size, when kept), oldest first
        self._entries: OrderedDict[str, tuple[MappedMail, int, int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, message_id: str, mapped: MappedMail, uses: int) -> None:
        """Keep the mapping of spooled message `message_id` for `uses` deliveries."""
        size = mapped.size
        if size > self.max_entry_bytes or uses < 1:
            return
        with self._lock:
            self._drop(message_id)
            self._entries[message_id] = (mapped, uses, size, time.monotonic())
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def take(self, message_id: str) -> MappedMail | None:
        """The mapping for one delivery of `message_id`; None when it is not kept."""
        with self._lock:
            entry = self._entries.get(message_id)
            if entry is None:
                return None
            mapped, uses, size, kept = entry
            if uses > 1:
                self._entries[message_id] = (mapped, uses - 1, size, kept)
            else:
                self._drop(message_id)
            return mapped

    def expire(self) -> None:
        """Drop what was kept longer than `max_age` (the worker calls it every round)."""
        oldest = time.monotonic() - self.max_age
        with self._lock:
            while self._entries and next(iter(self._entries.values()))[3] <= oldest:
                self._drop(next(iter(self._entries)))

    def _drop(self, message_id: str) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            self._bytes -= entry[2]
