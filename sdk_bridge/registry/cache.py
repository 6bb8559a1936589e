"""The registry's persistent cache, behind an interface so that it need not be a directory.

One bridge keeps the address book and fetched revocation answers as files under
`registry.cache_dir` (`FileCache`). Several bridges on a shared spool keep them in the
spool's database instead, so that each instance sees what another fetched and a restart
on a new machine does not start from nothing. Both hold opaque blobs by name: the
callers verify what they read (the revocation answers are signed, the address book is
parsed), so a store only has to give back what was put.
"""

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ..runtime.files import write_atomic


class Cache(Protocol):
    """Where the registry keeps what must survive a restart (and, on a shared spool, be
    seen by every instance): blobs by name, with when each was stored."""

    def get(self, name: str) -> tuple[bytes, datetime] | None:
        """The blob stored under `name` and when it was stored (UTC, aware); None when
        nothing is. OSError when the store cannot be read: callers log and go on."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, replacing what was there, as stored now. OSError
        when it cannot: callers log and go on, since losing it only costs a refetch."""
        ...


class FileCache:
    """A directory, one file per name: the layout older versions wrote, so an existing
    `cache_dir` keeps serving after an upgrade. A file's mtime is when it was stored."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get(self, name: str) -> tuple[bytes, datetime] | None:
        try:
            with self._path(name).open("rb") as file:
                # fstat of the open file: the time belongs to these bytes even if a
                # concurrent put renames a new file into place meanwhile.
                stored_at = datetime.fromtimestamp(os.fstat(file.fileno()).st_mtime, UTC)
                return file.read(), stored_at
        except FileNotFoundError:
            return None

    def put(self, name: str, data: bytes) -> None:
        write_atomic(self._path(name), data)

    def _path(self, name: str) -> Path:
        """`name` as a file inside the directory. Checked by its segments rather than by
        resolving, so that names mean the same here as in a database."""
        segments = name.split("/")
        if any(segment in ("", ".", "..") or "\0" in segment for segment in segments):
            raise ValueError(f"not a cache name: {name!r}")
        return self.directory.joinpath(*segments)
