"""A message while DATA arrives: in memory when small, a file of the spool's when large.

A file costs a create, two fsyncs and a rename before the 250, and creating one costs up
to half a millisecond of CPU on some filesystems (ext4 without a journal): most mail is
small, and the spool keeps small mail in its database row anyway. So DATA is held in
memory up to `MemoryBudget.per_message` bytes while all sessions together hold at most
`MemoryBudget.total`; past either, what has come is written to a file from the spool's
`incoming()` and the rest follows it there. Nothing is lost either way: the 250 is given
only after the spool has stored the message durably.
"""

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Final

PER_MESSAGE: Final = 256 * 1024  # the SQLite spool keeps this much in a row (INLINE_BYTES)
TOTAL: Final = 32 * 1024 * 1024  # all sessions together: 128 sessions of the largest


class MemoryBudget:
    """How much DATA the sessions of one listener hold in memory, shared on its event loop."""

    def __init__(self, per_message: int = PER_MESSAGE, total: int = TOTAL) -> None:
        self.per_message = per_message
        self.total = total
        self.in_use = 0

    def take(self, size: int) -> bool:
        if self.in_use + size > self.total:
            return False
        self.in_use += size
        return True

    def give_back(self, size: int) -> None:
        self.in_use -= size


class Arriving:
    """Written to as DATA arrives (`write`, then `finish`); `content` is then the message,
    as bytes or as the file holding it. `discard` removes what is left: a file the spool
    did not take, the memory."""

    def __init__(self, budget: MemoryBudget, incoming: Callable[[], Path]) -> None:
        self._budget = budget
        self._incoming = incoming
        self._memory = bytearray()
        self._whole = b""  # the memory as bytes, once DATA has ended
        self._held = 0  # bytes of the budget this message holds
        self._file: BinaryIO | None = None
        self._path: Path | None = None

    def write(self, data: bytes) -> None:
        """OSError when a file was needed and could not be written."""
        if self._file is None:
            size = len(self._memory) + len(data)
            if size <= self._budget.per_message and self._budget.take(size - self._held):
                self._held = size
                self._memory += data
                return
            self._path = self._incoming()
            self._file = self._path.open("wb")
            self._file.write(self._memory)
            self._release_memory()
        self._file.write(data)

    def finish(self) -> None:
        """After the final dot: a file is flushed and closed (OSError when it fails); what
        is in memory becomes bytes, the one copy held from then on (the budget counts it)."""
        if self._file is None:
            self._whole, self._memory = bytes(self._memory), bytearray()
        else:
            file, self._file = self._file, None
            try:
                file.flush()
            finally:
                file.close()

    @property
    def content(self) -> bytes | Path:
        return self._path if self._path is not None else self._whole

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a failed write was answered already
                self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)  # an accepted one was moved into the spool
        self._release_memory()

    def _release_memory(self) -> None:
        self._budget.give_back(self._held)
        self._held = 0
        self._memory, self._whole = bytearray(), b""
