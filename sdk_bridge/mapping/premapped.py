"""Mail mapped at ingress, kept for the outbound worker so that it is not parsed twice.

Ingress maps every mail to refuse what SDK cannot carry; the worker needs the same
mapping for each recipient. Kept in memory only, bounded, and each entry only until every
recipient's delivery has taken it: a mail not found here (after a restart, on a retry,
one too large to keep, one pushed out by newer mail) is mapped again from the spool, with
the same result.
"""

import threading
from collections import OrderedDict

from .to_sdk import MappedMail

MAX_BYTES = 16 * 1024 * 1024  # all entries together
MAX_ENTRY_BYTES = 1024 * 1024  # larger mail is mapped again: holding it costs more than that


class Premapped:
    """Thread-safe: ingress keeps on the event loop, the worker takes in a thread."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict[str, tuple[MappedMail, int, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, message_id: str, mapped: MappedMail, uses: int) -> None:
        """Keep the mapping of spooled message `message_id` for `uses` deliveries."""
        size = mapped.size + sum(len(text) for text in mapped.document.texts)
        if size > self.max_entry_bytes or uses < 1:
            return
        with self._lock:
            self._drop(message_id)
            self._entries[message_id] = (mapped, uses, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def take(self, message_id: str) -> MappedMail | None:
        """The mapping for one delivery of `message_id`; None when it is not kept."""
        with self._lock:
            entry = self._entries.get(message_id)
            if entry is None:
                return None
            mapped, uses, size = entry
            if uses > 1:
                self._entries[message_id] = (mapped, uses - 1, size)
            else:
                self._drop(message_id)
            return mapped

    def _drop(self, message_id: str) -> None:
        entry = self._entries.pop(message_id, None)
        if entry is not None:
            self._bytes -= entry[2]
