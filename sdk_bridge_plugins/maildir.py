"""Maildir mailbox delivery: the embedded default for trying sdk-bridge out.

Written the Maildir way (tmp/, fsync, rename into new/, fsync of new/), so a message is
either wholly in the mailbox or not at all, and a power cut after deliver() returns
loses nothing. Dovecot and most MUAs read such a directory directly.

No duplicates: every file name carries a key made from the Message-ID
(`<seconds>.<key>.<host>`, with ":2,<flags>" appended once a reader has seen it), and
deliver() first looks for that key in new/ and cur/. A crash after the rename and before
the bridge recorded the delivery therefore ends in "already there", not in a second copy.
Readers keep the base name when they move a file to cur/ or change its flags. (A message
the user deletes in the milliseconds between the rename and the bridge's record would be
delivered again by a repeat; nothing else can make a second copy.) The keys of new/ and
cur/ are listed again only when the directory has changed since (its mtime), so a
mailbox of 100,000 messages is not listed for every delivery.

Settings: `path`, the Maildir (created with mode 0700 when missing); `folder`, optional,
a Maildir++ subfolder such as "Ärenden/Inkommande" ("/" separates levels, stored as
".&AMQ-renden.Inkommande" the way Dovecot names it); `group`, optional, the group of the
server that reads the Maildir (Dovecot's `mail_gid`, say vmail) when it runs as another
user than the bridge: then directories are made 2770 and mail files 0660 in that group
(the bridge must be a member: systemd/maildir.conf), else 0700 and 0600, whatever the umask.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from sdk_bridge.plugin import TemporaryFailure, mutf7
from sdk_bridge.plugin.kit import move_durably, sync_directory
from sdk_bridge.plugin.settings import only

SETTINGS = {"path", "folder", "group"}


class Maildir:
    """A `sdk_bridge.plugin.Mailbox` writing into a Maildir (or one of its ++ subfolders)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        only(settings, SETTINGS)
        path = settings.get("path")
        if not (isinstance(path, str) and path):
            raise ValueError("`path` must name the Maildir directory")
        self.root = Path(path)
        self.directory = self.root / _subfolder(settings.get("folder"))
        self.gid = _gid(settings.get("group"))  # None: the bridge's alone
        # Maildir's own escaping of the host part, so it never holds "/" or ":".
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._listings = {sub: _Listing(self.directory / sub) for sub in ("new", "cur")}

    def __repr__(self) -> str:
        return f"Maildir({str(self.directory)!r})"

    async def deliver(self, message_id: str, message: bytes) -> None:
        await asyncio.to_thread(self._deliver, message_id, message)

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    async def close(self) -> None:
        return None

    def _check(self) -> None:
        """The Maildir exists (or is made) and a file can be written into its tmp/."""
        probe = self.directory / "tmp" / f".check.{os.getpid()}.{self._host}"
        try:
            self._create()
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise TemporaryFailure(f"cannot write into {self.directory}: {e}") from e

    def _deliver(self, message_id: str, message: bytes) -> None:
        key = hashlib.sha256(message_id.encode()).hexdigest()[:40]
        try:
            self._create()
            if self._holds(key):
                return
            name = f"{int(time.time())}.{key}.{self._host}"
            tmp = self.directory / "tmp" / name
            with self._new_file(tmp) as f:
                f.write(message)
            move_durably(tmp, self.directory / "new" / name)
            self._listings["new"].added(key)
        except OSError as e:
            # A full disk or a lost mount may heal; the message stays queued meanwhile.
            raise TemporaryFailure(f"cannot write into {self.directory}: {e}") from e

    def _create(self) -> None:
        # cur/ is made last, so where it exists the Maildir is whole.
        if not (self.root / "cur").is_dir():
            self._make_maildir(self.root)
        if self.directory != self.root and not (self.directory / "cur").is_dir():
            self._make_maildir(self.directory)
            # Maildir++ marks a subfolder so that readers do not take it for a mailbox root.
            with self._new_file(self.directory / "maildirfolder", exclusive=False):
                pass
            sync_directory(self.root)

    def _make_maildir(self, directory: Path) -> None:
        """The directories missing, parents too, each given its mode and group; what
        another made (the administrator the root, say 2770 vmail:vmail; Dovecot a
        subfolder) is left as it is."""
        missing = [p for p in (directory, *directory.parents) if not p.exists()][::-1]
        for path in [*missing, *(directory / sub for sub in ("tmp", "new", "cur"))]:
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            self._own(path, 0o2770)
        sync_directory(directory)

    def _new_file(self, path: Path, exclusive: bool = True) -> BinaryIO:
        """A new file for writing, private or in the reader's group; an existing one (only
        when not `exclusive`) is opened as it is."""
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if exclusive:
                raise
            return os.fdopen(os.open(path, os.O_WRONLY), "wb")
        file = os.fdopen(descriptor, "wb")
        try:
            self._own(file.fileno(), 0o660)
        except OSError:
            file.close()
            path.unlink(missing_ok=True)
            raise
        return file

    def _own(self, target: Path | int, shared_mode: int) -> None:
        """Mail is private (0600, 0700), or shared with the reader's group (`group`)."""
        if self.gid is None:
            os.chmod(target, 0o700 if shared_mode & 0o100 else 0o600)
            return
        os.chown(target, -1, self.gid)
        os.chmod(target, shared_mode)  # after chown, which clears the setgid bit

    def _holds(self, key: str) -> bool:
        """Whether a message with this key is in new/ or cur/; removes a half-written copy
        that a crash left in tmp/ (which readers keep nearly empty)."""
        for entry in os.scandir(self.directory / "tmp"):
            if _key_of(entry.name) == key:
                os.unlink(entry.path)
        return any(listing.holds(key) for listing in self._listings.values())


class _Listing:
    """The keys of the files in one of new/ and cur/, listed again only when the directory's
    mtime says it changed. Our own renames are added as they happen and their mtime taken,
    so a burst of deliveries lists new/ once. (A file another writer adds within the same
    clock tick as ours would go unseen: only a second bridge delivering the very same
    message at that moment could do that.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns: int | None = None
        self._keys: set[str] = set()
        self._lock = threading.Lock()  # deliveries run in several threads

    def holds(self, key: str) -> bool:
        with self._lock:
            mtime_ns = os.stat(self.path).st_mtime_ns
            if mtime_ns != self._mtime_ns:
                self._keys = {k for entry in os.scandir(self.path) if (k := _key_of(entry.name))}
                self._mtime_ns = mtime_ns
            return key in self._keys

    def added(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)
            self._mtime_ns = os.stat(self.path).st_mtime_ns


def _key_of(name: str) -> str | None:
    """The key in a name this plugin gave (`<seconds>.<key>.<host>[:2,<flags>]`)."""
    parts = name.split(".", 2)
    if len(parts) == 3 and len(parts[1]) == 40 and all(c in "0123456789abcdef" for c in parts[1]):
        return parts[1]
    return None


def _subfolder(folder: Any) -> str:
    """The Maildir++ directory name of `folder` ("" for the inbox itself)."""
    if folder is None or folder == "" or (isinstance(folder, str) and folder.upper() == "INBOX"):
        return ""
    if not isinstance(folder, str):
        raise ValueError(f"`folder` must be text, not {folder!r}")
    levels = folder.split("/")
    for level in levels:
        if not level or "." in level or "\0" in level:
            raise ValueError(
                f"`folder` {folder!r}: each level between '/' must be a non-empty name "
                "without '.' (Maildir++ uses '.' to separate levels)"
            )
    return "." + ".".join(mutf7.encode(level) for level in levels)


def _gid(group: Any) -> int | None:
    """The group id `group` names (a name or a number), or None."""
    if group is None:
        return None
    if isinstance(group, int) and not isinstance(group, bool) and group >= 0:
        return group
    if not (isinstance(group, str) and group):
        raise ValueError(f"`group` must name a group, not {group!r}")
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"`group` {group!r}: there is no such group") from None
