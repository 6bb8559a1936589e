"""The embedded spool: the queue in SQLite (WAL), large contents as files beside it.

A message is stored durably before `accept` returns: a power cut after SMTP's 250 loses
nothing. A large body is written and fsynced (file and directory) before its rows are
committed; a crash between the two leaves an orphan file that no row names, never
delivered.

What the bridge keeps (a mail taken over SMTP, a retrieved envelope, the mail for the
mailbox, a sealed kvittens) stays in its row when it is at most INLINE_BYTES, and is a file
of its own only when larger: a file costs a create, two fsyncs and a rename, and creating
one costs half a millisecond of CPU on some filesystems (ext4 without a journal). What is
deleted from the database is overwritten (secure_delete).

Every commit that makes a promise (a message taken, a state reached, a report owed or
sent) is fsynced (synchronous=FULL). Bookkeeping that a stage redoes by itself (leases,
attempts, the time of the next try or look) is written without an fsync
(synchronous=NORMAL): it survives a crash of the process, and a power cut loses at most
the last such commits, never one before a durable commit, as the WAL is kept in order.
"""

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..runtime.files import move_durably, sync_directory, write_atomic
from ..sdk.names import KVITTENS_ACTION
from . import tables
from .batches import first_within
from .contract import Decide, Spool
from .errors import ContentRemoved, DuplicateMessage, SpoolFull
from .records import (
    Conclusion,
    Delivery,
    Envelope,
    InboundMail,
    InboxState,
    OwedKvittens,
    Received,
    RecipientRecord,
    State,
)
from .retention import (
    CONCLUDED_RECEIVED,
    HELD_RECEIVED,
    LEFT_AT_ACCESS_POINT,
    ORPHAN_AGE,
    SETTLED_DELIVERIES,
    TAKEN_KVITTENS,
    Purged,
    Retention,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    envelope TEXT NOT NULL,          -- JSON: client, helo, auth user, ENVID, RET, Message-ID
    size INTEGER NOT NULL,
    body_sha256 TEXT,                -- to know the same mail sent again after a lost 250
    content_removed_at TEXT          -- when retention removed its body (NULL: still kept)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id),
    recipient TEXT NOT NULL,         -- the RCPT TO address
    details TEXT NOT NULL,           -- JSON: ORCPT, NOTIFY, SDK parties
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    sdk_message_id TEXT UNIQUE,      -- fixed at creation: also the XHE ID and ebMS MessageId
    conversation_id TEXT,
    mail_message_id TEXT,            -- the mail's Message-ID, to thread replies
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT '{}', -- JSON: DSNs sent, kvittens outcome, …
    lease_until TEXT                 -- a worker holds it until then (NULL: nobody)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_owing_report ON deliveries(id)
    WHERE json_extract(notes, '$.report') IS NOT NULL;
CREATE TABLE IF NOT EXISTS superseded (  -- SDK messageIds a delivery had before a resend
    sdk_message_id TEXT PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id)
);
CREATE TABLE IF NOT EXISTS reports (   -- delivery reports (DSNs) the smart host did not take yet
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS received (
    id TEXT PRIMARY KEY,             -- the ebMS MessageId the access point gave it
    action TEXT NOT NULL,
    original_sender TEXT NOT NULL,
    final_recipient TEXT NOT NULL,
    conversation_id TEXT,
    received_at TEXT NOT NULL,
    state TEXT NOT NULL,             -- new; done, ignored (kvittens); accepted, rejected,
                                     -- quarantined (messages); unreadable, lost
    note TEXT,
    sdk_message_id TEXT,             -- of a message judged after its signature verified
    attempts INTEGER NOT NULL DEFAULT 0,  -- rounds it waited (registry, scanner down)
    next_attempt_at TEXT,            -- NULL: now
    content_removed_at TEXT          -- when retention removed its payload
);
CREATE INDEX IF NOT EXISTS received_sdk_id ON received(sdk_message_id);
CREATE INDEX IF NOT EXISTS deliveries_mail_id ON deliveries(mail_message_id);
CREATE TABLE IF NOT EXISTS retrieving (  -- ebMS MessageIds about to be retrieved
    id TEXT PRIMARY KEY,
    noted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (     -- SDK messages accepted for us, on their way to a mailbox
    sdk_message_id TEXT PRIMARY KEY, -- a second message with this id is a duplicate
    received_id TEXT NOT NULL,       -- its ebMS MessageId
    functional_address TEXT NOT NULL,
    sender TEXT NOT NULL,            -- the sending organisation
    conversation_id TEXT NOT NULL,
    mail_message_id TEXT NOT NULL,   -- the Message-ID of its mail, for threading replies
    reply_references TEXT NOT NULL,  -- JSON: the sender's reference ids, returned in a reply
    our_references TEXT NOT NULL,    -- JSON: the reference ids it gave for us (our case)
    state TEXT NOT NULL,             -- delivering, delivered, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    content_removed_at TEXT          -- when retention removed its mail
);
CREATE INDEX IF NOT EXISTS inbox_due ON inbox(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS inbox_mail_id ON inbox(mail_message_id);
CREATE TABLE IF NOT EXISTS kvittens_out (  -- kvittens we owe senders, until the AP has them
    id TEXT PRIMARY KEY,             -- the kvittens ID, also its ebMS MessageId
    answers TEXT NOT NULL,           -- the ebMS MessageId of the message it answers
    receiver TEXT NOT NULL,          -- the organisation that sent that message
    conversation_id TEXT,
    accepted INTEGER NOT NULL,
    state TEXT NOT NULL,             -- pending, sent (followed), delivered, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,   -- pending: when to hand over; sent: when to ask
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    content_removed_at TEXT          -- when retention removed the sealed kvittens
);
CREATE INDEX IF NOT EXISTS kvittens_due ON kvittens_out(state, next_attempt_at);
"""
# After ADDED_COLUMNS: what retention still has to remove, found without a scan.
INDEXES = """
CREATE INDEX IF NOT EXISTS messages_content ON messages(id) WHERE content_removed_at IS NULL;
CREATE INDEX IF NOT EXISTS received_content ON received(id) WHERE content_removed_at IS NULL;
CREATE INDEX IF NOT EXISTS inbox_content ON inbox(state) WHERE content_removed_at IS NULL;
CREATE INDEX IF NOT EXISTS kvittens_content ON kvittens_out(state)
    WHERE content_removed_at IS NULL;
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries(message_id);
CREATE INDEX IF NOT EXISTS messages_received ON messages(received_at);
CREATE INDEX IF NOT EXISTS received_at ON received(received_at);
CREATE INDEX IF NOT EXISTS inbox_updated ON inbox(updated_at);
CREATE INDEX IF NOT EXISTS kvittens_updated ON kvittens_out(updated_at);
CREATE INDEX IF NOT EXISTS messages_resent ON messages(body_sha256, mail_from, received_at);
CREATE INDEX IF NOT EXISTS received_state ON received(state, received_at);
"""


# Columns added after a table was first released, for `_add_missing_columns`.
ADDED_COLUMNS = {
    "messages": {"body_sha256": "TEXT", "content_removed_at": "TEXT", "body": "BLOB"},
    "received": {
        "sdk_message_id": "TEXT",
        "attempts": "INTEGER NOT NULL DEFAULT 0",
        "next_attempt_at": "TEXT",
        "content_removed_at": "TEXT",
        "payload": "BLOB",
    },
    "inbox": {"content_removed_at": "TEXT", "mail": "BLOB"},
    "kvittens_out": {
        "transport_id": "TEXT",
        "resends": "INTEGER NOT NULL DEFAULT 0",
        "content_removed_at": "TEXT",
        "payload": "BLOB",
    },
}
RESEND_WINDOW = timedelta(hours=24)  # the same mail again within this is a resend
BUSY_TIMEOUT_MS = 5000  # how long a statement waits for another process's write
# Contents up to this size are kept in their rows; larger ones as files (a 30 MB message
# would pass through the WAL and stay in the database's free pages until reused).
INLINE_BYTES = 256 * 1024
WAL_TRUNCATE_WAIT_MS = 100  # how long a purge waits for readers to let it empty the WAL
LEASE = timedelta(minutes=10)  # a claimed delivery whose worker failed is due again after this


def _now() -> datetime:
    return datetime.now(UTC)


def _sha256(body: bytes | Path) -> str:
    if isinstance(body, bytes):
        return hashlib.sha256(body).hexdigest()
    digest = hashlib.sha256()
    with body.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inline(content: bytes) -> bytes | None:
    """`content` as its row keeps it, or None where it is too large and is a file."""
    return content if len(content) <= INLINE_BYTES else None


def _kept(inline: bytes | None, file: Path) -> bytes:
    """A content as kept: in its row (`inline`), or else in `file` (FileNotFoundError
    when that is gone too)."""
    return bytes(inline) if inline is not None else file.read_bytes()


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))


def _before(now: datetime, age: timedelta) -> str:
    return (now - age).isoformat()


def _safe_name(message_id: str) -> str:
    """A file name for an ebMS MessageId, which may hold any printable character."""
    return hashlib.sha256(message_id.encode()).hexdigest()


class SQLiteSpool(Spool):
    """The spool of one instance: its claims need no leases against others, so only the
    worker's deliveries carry one (a delivery whose worker failed is due again after it)."""

    def __init__(self, directory: Path, lease: timedelta = LEASE) -> None:
        self.directory = directory
        self.lease = lease
        self._bodies = directory / "messages"
        self._bodies.mkdir(parents=True, exist_ok=True)
        self._received = directory / "received"
        self._received.mkdir(parents=True, exist_ok=True)
        self._inbox = directory / "inbox"
        self._inbox.mkdir(parents=True, exist_ok=True)
        self._kvittens = directory / "kvittens"
        self._kvittens.mkdir(parents=True, exist_ok=True)
        self._incoming = directory / "incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            directory / "spool.sqlite3", timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        self._wal_holds_deleted = True  # until a purge empties it (a killed predecessor's)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._durable = True
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")  # what is deleted is overwritten
            self._db.executescript(SCHEMA)
            with self._db:
                self._add_missing_columns()
            self._db.executescript(INDEXES)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _writing(self, durable: bool) -> Iterator[None]:
        """One write transaction under the lock: fsynced at commit when `durable`, else
        only kept in order in the WAL (see the module docstring)."""
        with self._lock:
            self._synchronous(durable)
            with self._db:
                yield

    def _synchronous(self, durable: bool) -> None:
        """Set before a write transaction begins (the caller holds the lock)."""
        if durable != self._durable:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _add_missing_columns(self) -> None:
        """A spool made by an earlier version gets the columns added since (empty)."""
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns.items():
                if column not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    if (table, column) == ("kvittens_out", "transport_id"):
                        # Handed over before kvittens were followed: not asked after now.
                        self._db.execute(
                            "UPDATE kvittens_out SET state = 'handed-over' WHERE state = 'sent'"
                        )

    def registry_cache(self) -> None:
        """None: one instance, so the registry keeps its cache in its own cache_dir."""
        return None

    def discard_partial(self) -> None:
        """At start-up of the daemon: mail that was still arriving was never answered 250,
        so it is not ours to keep."""
        for leftover in self._incoming.glob("*.part"):
            leftover.unlink()

    # Where each kind of content lies, for every reader and writer, the purge and the sweep.

    def _body_file(self, message_id: str) -> Path:
        return self._bodies / f"{message_id}.eml"

    def _received_file(self, received_id: str) -> Path:
        return self._received / f"{_safe_name(received_id)}.xhe"

    def _inbox_file(self, received_id: str) -> Path:
        """Named by the ebMS MessageId, so a copy judged at the same moment never writes
        over the accepted mail."""
        return self._inbox / f"{_safe_name(received_id)}.eml"

    def _kvittens_file(self, kvittens_id: str) -> Path:
        return self._kvittens / f"{_safe_name(kvittens_id)}.xhe"

    # --- ingress ---------------------------------------------------------------------------

    def incoming(self) -> Path:
        """A new file for a message still arriving; `accept` moves it into the spool."""
        return self._incoming / f"{uuid.uuid4().hex}.part"

    def accept(
        self, envelope: Envelope, recipients: list[RecipientRecord], body: bytes | Path
    ) -> str:
        """Store one message for its recipients, durably; return its spool id.

        `body` is the message, or a file from `incoming()` holding it (moved, not copied).
        SpoolFull when the disk has no room for it.
        """
        try:
            return self._accept(envelope, recipients, body)
        except sqlite3.OperationalError as e:
            if "full" in str(e):  # "database or disk is full"
                raise SpoolFull(f"the spool's disk is full: {e}") from e
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"the spool's disk is full: {e}") from e
            raise

    def _accept(
        self, envelope: Envelope, recipients: list[RecipientRecord], body: bytes | Path
    ) -> str:
        digest = _sha256(body)
        earlier = self._resent(envelope, recipients, digest)
        if earlier is not None:  # the client did not see our 250 (we were killed): once only
            if isinstance(body, Path):
                body.unlink()
            return earlier
        message_id = uuid.uuid4().hex
        target = self._body_file(message_id)
        inline = None
        if isinstance(body, Path):  # written to a file as it arrived (see ingress.arriving)
            size = body.stat().st_size
            if size <= INLINE_BYTES:  # small after all: while the sessions' memory was full
                inline = body.read_bytes()
            else:
                move_durably(body, target)
        else:
            size = len(body)
            inline = _inline(body)
            if inline is None:
                write_atomic(target, body)
        now = _now().isoformat()
        with self._writing(durable=True):
            self._db.execute(
                "INSERT INTO messages (id, received_at, mail_from, envelope, size, body_sha256,"
                " body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    now,
                    envelope.mail_from,
                    json.dumps(vars(envelope)),
                    size,
                    digest,
                    inline,
                ),
            )
            for recipient in recipients:
                details = {**vars(recipient), "notify": list(recipient.notify)}
                self._db.execute(
                    "INSERT INTO deliveries (message_id, recipient, details, state,"
                    " next_attempt_at, sdk_message_id, mail_message_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message_id,
                        recipient.address,
                        json.dumps(details),
                        State.QUEUED,
                        now,
                        str(uuid.uuid4()),
                        envelope.mail_message_id,
                        now,
                        now,
                    ),
                )
        if isinstance(body, Path) and inline is not None:
            body.unlink()  # its row has it now (a crash before this: discard_partial)
        return message_id

    def _resent(
        self, envelope: Envelope, recipients: list[RecipientRecord], digest: str
    ) -> str | None:
        """The spool id of the very same mail (bytes, envelope sender, the functional
        address and user it was sent as, recipients) accepted within RESEND_WINDOW: a
        client that lost our 250 sends it again, and SMTP cannot tell."""
        since = (_now() - RESEND_WINDOW).isoformat()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, envelope FROM messages WHERE body_sha256 = ? AND mail_from = ?"
                " AND received_at >= ?",
                (digest, envelope.mail_from, since),
            ).fetchall()
            for row in rows:
                addresses = self._db.execute(
                    "SELECT recipient FROM deliveries WHERE message_id = ?", (row["id"],)
                ).fetchall()
                earlier = (a["recipient"] for a in addresses)
                if tables.same_mail(row["envelope"], earlier, envelope, recipients):
                    return str(row["id"])
        return None

    # --- from the access point ----------------------------------------------------------

    def store_received(self, item: Received, state: str = "new") -> bool:
        with self._lock:
            known = self._db.execute("SELECT state FROM received WHERE id = ?", (item.id,))
            found = known.fetchone()
        if found is not None and found["state"] != "lost":
            return False
        self._keep_received(item, state)
        return True

    def import_received(self, item: Received) -> bool:
        """An envelope an administrator recovered from the access point: kept as new, in
        place of a `lost` record of it. False: the spool already has it."""
        with self._lock:
            row = self._db.execute("SELECT state FROM received WHERE id = ?", (item.id,))
            found = row.fetchone()
        if found is not None and found["state"] != "lost":
            return False
        self._keep_received(item, "new")
        return True

    def _keep_received(self, item: Received, state: str) -> None:
        payload = _inline(item.payload)
        if payload is None:
            write_atomic(self._received_file(item.id), item.payload)
        with self._writing(durable=True):
            self._db.execute("DELETE FROM retrieving WHERE id = ?", (item.id,))
            self._db.execute(
                "INSERT OR REPLACE INTO received (id, action, original_sender, final_recipient,"
                " conversation_id, received_at, state, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    item.action,
                    item.original_sender,
                    item.final_recipient,
                    item.conversation_id,
                    _now().isoformat(),
                    state,
                    payload,
                ),
            )

    def note_retrieving(self, message_ids: list[str]) -> list[str]:
        """Note, durably, the MessageIds about to be retrieved; return every one noted and
        not yet stored, those of a killed predecessor first. With a retention at the
        access point, such a message can still be retrieved after a crash."""
        now = _now().isoformat()
        with self._writing(durable=True):
            known = {
                row[0]
                for row in self._db.execute(
                    f"SELECT id FROM received WHERE id IN ({','.join('?' * len(message_ids))})"
                    " AND state != 'lost'",  # a lost one the access point lists again: taken
                    message_ids,
                )
            }
            self._db.executemany(
                "INSERT OR IGNORE INTO retrieving VALUES (?, ?)",
                [(i, now) for i in message_ids if i not in known],
            )
            rows = self._db.execute("SELECT id FROM retrieving ORDER BY rowid").fetchall()
        return [row[0] for row in rows]

    def lost_retrieving(self, message_id: str, note: str) -> None:
        """The access point no longer gives out a message noted before a crash: it stays on
        record as `lost`, for an administrator to recover (`import_received`)."""
        with self._writing(durable=True):
            self._db.execute("DELETE FROM retrieving WHERE id = ?", (message_id,))
            self._db.execute(
                "INSERT OR IGNORE INTO received (id, action, original_sender, final_recipient,"
                " received_at, state, note) VALUES (?, '', '', '', ?, 'lost', ?)",
                (message_id, _now().isoformat(), note),
            )

    def forget_retrieving(self, message_id: str) -> None:
        """A noted MessageId that is not ours to retrieve after all (another organisation's
        message, left at the access point)."""
        with self._writing(durable=True):
            self._db.execute("DELETE FROM retrieving WHERE id = ?", (message_id,))

    def received_states(self, message_ids: list[str]) -> dict[str, str]:
        """The state of each of `message_ids` the spool has a record of."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, state FROM received WHERE id IN ({','.join('?' * len(message_ids))})",
                message_ids,
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def received(
        self, state: str = "new", action: str | None = None, *, limit: int | None = None
    ) -> list[Received]:
        query = "SELECT * FROM received WHERE state = ? AND (next_attempt_at IS NULL"
        query += " OR next_attempt_at <= ?)" + (" AND action = ?" if action else "")
        query += " ORDER BY received_at" + (f" LIMIT {int(limit)}" if limit else "")
        arguments = (state, _now().isoformat()) + ((action,) if action else ())
        with self._lock:
            rows = self._db.execute(query, arguments).fetchall()
        return [self._received_item(row) for row in rows]

    def claim_received(
        self, limit: int | None = None, *, kvittens: bool = False, max_bytes: int | None = None
    ) -> list[Received]:
        query = "SELECT * FROM received WHERE state = 'new'"
        query += " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        query += f" AND action {'=' if kvittens else '!='} ? ORDER BY received_at"
        query += f" LIMIT {int(limit)}" if limit else ""
        with self._lock:
            rows = self._db.execute(query, (_now().isoformat(), KVITTENS_ACTION)).fetchall()
        if max_bytes is not None:
            rows = first_within(((row, self._received_size(row)) for row in rows), max_bytes)
        return [self._received_item(row) for row in rows]

    def _received_size(self, row: sqlite3.Row) -> int:
        if row["payload"] is not None:
            return len(row["payload"])
        try:
            return self._received_file(row["id"]).stat().st_size
        except FileNotFoundError:
            return 0

    def _received_item(self, row: sqlite3.Row) -> Received:
        return tables.received_from(row, self._received_payload(row))

    def received_payload(self, received_id: str) -> bytes:
        with self._lock:
            row = self._db.execute(
                "SELECT id, payload FROM received WHERE id = ?", (received_id,)
            ).fetchone()
        return b"" if row is None else self._received_payload(row)

    def _received_payload(self, row: sqlite3.Row) -> bytes:
        try:
            return _kept(row["payload"], self._received_file(row["id"]))
        except FileNotFoundError:  # damaged spool: judged as the broken envelope it now is
            return b""

    def held_received(self) -> list[dict[str, Any]]:
        """What an administrator must look at: quarantined, unreadable and lost envelopes,
        newest first, without their payloads."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, action, original_sender, final_recipient, received_at, state, note"
                " FROM received WHERE state IN ('quarantined', 'unreadable', 'lost')"
                " ORDER BY received_at DESC"
            ).fetchall()
        return [dict(row) for row in rows]

    def release_received(self, received_id: str) -> bool:
        """A quarantined envelope judged again (say, after a missing decryption key was
        configured). False: there is no such quarantined envelope."""
        with self._writing(durable=True):
            return (
                self._db.execute(
                    "UPDATE received SET state = 'new', note = NULL, attempts = 0,"
                    " next_attempt_at = NULL WHERE id = ? AND state = 'quarantined'",
                    (received_id,),
                ).rowcount
                == 1
            )

    def delete_received(self, received_id: str) -> bool:
        """An envelope an administrator has dealt with: its payload is removed, its record
        kept as `deleted`. Only held ones (quarantined, unreadable, lost) can be deleted."""
        with self._writing(durable=True):
            changed = self._db.execute(
                "UPDATE received SET state = 'deleted', payload = NULL WHERE id = ?"
                " AND state IN ('quarantined', 'unreadable', 'lost')",
                (received_id,),
            ).rowcount
        if changed:
            self._received_file(received_id).unlink(missing_ok=True)
        return changed == 1

    def postpone_received(self, received_id: str, until: datetime) -> None:
        """A message that cannot be judged now (registry or scanner unavailable)."""
        with self._writing(durable=False):
            self._db.execute(
                "UPDATE received SET attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
                (until.isoformat(), received_id),
            )

    def mark_received(self, received_id: str, state: str, note: str | None = None) -> None:
        """A kvittens dealt with. Not fsynced: the delivery's transition it led to was,
        and a kvittens judged again after a power cut settles nothing twice."""
        with self._writing(durable=False):
            self._db.execute(
                "UPDATE received SET state = ?, note = ? WHERE id = ?", (state, note, received_id)
            )

    def _conclude_received(self, received_id: str, conclusion: Conclusion) -> bool:
        with self._lock:
            row = self._db.execute("SELECT state FROM received WHERE id = ?", (received_id,))
            found = row.fetchone()
            if found is None or found["state"] != "new":
                return False  # before writing: its mail file is the accepted mail's name
        written = []
        if conclusion.kvittens is not None and _inline(conclusion.kvittens[1]) is None:
            written.append(self._kvittens_file(conclusion.kvittens[0].id))
            write_atomic(written[-1], conclusion.kvittens[1])
        if conclusion.mail is not None and _inline(conclusion.mail[1]) is None:
            written.append(self._inbox_file(received_id))
            write_atomic(written[-1], conclusion.mail[1])
        try:
            self._conclude(received_id, conclusion)
        except sqlite3.IntegrityError as e:
            for path in written:
                path.unlink(missing_ok=True)
            raise DuplicateMessage(str(e)) from e
        return True

    def _conclude(self, received_id: str, conclusion: Conclusion) -> None:
        now = _now().isoformat()
        with self._writing(durable=True):
            if conclusion.kvittens is not None:
                k = conclusion.kvittens[0]
                self._db.execute(
                    "INSERT OR IGNORE INTO kvittens_out (id, answers, receiver, conversation_id,"
                    " accepted, state, next_attempt_at, created_at, updated_at, payload)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                    (
                        *(k.id, k.answers, k.receiver, k.conversation_id, k.accepted),
                        *(now, now, now, _inline(conclusion.kvittens[1])),
                    ),
                )
            if conclusion.mail is not None:
                inbound, mail = conclusion.mail
                self._db.execute(
                    f"INSERT INTO inbox ({tables.INBOX_COLUMNS}, next_attempt_at, created_at,"
                    " updated_at, mail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*tables.inbox_values(inbound, json.dumps), now, now, now, _inline(mail)),
                )
            self._db.execute(
                "UPDATE received SET state = ?, note = ?, sdk_message_id = ? WHERE id = ?",
                (conclusion.state, conclusion.note, conclusion.sdk_message_id, received_id),
            )

    # --- kvittens we send ----------------------------------------------------------------

    def owed_kvittens(self, limit: int = 100) -> list[tuple[OwedKvittens, bytes]]:
        """Kvittens not yet taken by the access point whose time has come."""
        rows = self._kvittens_rows("pending", limit)
        return [
            (
                tables.owed_kvittens_from(row),
                _kept(row["payload"], self._kvittens_file(row["id"])),
            )
            for row in rows
        ]

    def sent_kvittens(self, limit: int = 100) -> list[OwedKvittens]:
        """Kvittens the access point took and has not yet confirmed sent, due a look."""
        return [tables.owed_kvittens_from(row) for row in self._kvittens_rows("sent", limit)]

    def _kvittens_rows(self, state: str, limit: int) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(
                "SELECT * FROM kvittens_out WHERE state = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (state, _now().isoformat(), limit),
            ).fetchall()

    # --- the inbox: mail on its way to a mailbox -------------------------------------------

    def known_inbound(self, sdk_message_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM received WHERE sdk_message_id = ?"
                " UNION SELECT 1 FROM inbox WHERE sdk_message_id = ?",
                (sdk_message_id, sdk_message_id),
            ).fetchone()
        return row is not None

    def disk(self) -> tuple[int, int] | None:
        """(free, total) bytes of the disk of the spool's directory, where all is kept."""
        usage = shutil.disk_usage(self.directory)
        return usage.free, usage.total

    def queue_depths(self) -> dict[tuple[str, str], tuple[int, datetime]]:
        """(queue, state) -> (how many, when the oldest came), for metrics and `queue`."""
        queries = {
            "outbound": "SELECT state, COUNT(*), MIN(created_at) FROM deliveries GROUP BY state",
            "received": "SELECT state, COUNT(*), MIN(received_at) FROM received GROUP BY state",
            "inbox": "SELECT state, COUNT(*), MIN(created_at) FROM inbox GROUP BY state",
            "kvittens": "SELECT state, COUNT(*), MIN(created_at) FROM kvittens_out GROUP BY state",
        }
        depths = {}
        with self._lock:
            for queue, query in queries.items():
                for state, count, first in self._db.execute(query).fetchall():
                    depths[(queue, state)] = (count, datetime.fromisoformat(first))
        return depths

    def rejected_inbound(self, sdk_message_id: str) -> bool:
        """Whether we answered the message with this SDK messageId with REJECTED."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM received WHERE sdk_message_id = ? AND state = 'rejected'",
                (sdk_message_id,),
            ).fetchone()
        return row is not None

    def inbox_due(self, limit: int = 16) -> list[InboundMail]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inbox WHERE state = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (InboxState.DELIVERING, _now().isoformat(), limit),
            ).fetchall()
        return [tables.inbound_mail_from(row) for row in rows]

    def inbox(self, state: InboxState | None = None) -> list[InboundMail]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inbox" + (" WHERE state = ?" if state else "") + " ORDER BY rowid",
                (state,) if state else (),
            ).fetchall()
        return [tables.inbound_mail_from(row) for row in rows]

    def inbound_by_mail_message_id(self, mail_message_id: str) -> InboundMail | None:
        """The received message a reply answers, found by the Message-ID its mail had."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM inbox WHERE mail_message_id = ?", (mail_message_id,)
            ).fetchone()
        return tables.inbound_mail_from(row) if row else None

    def inbound_mail(self, sdk_message_id: str) -> bytes:
        """The mail of an accepted message (its file is named by the ebMS MessageId, so
        a copy judged at the same moment never writes over it)."""
        with self._lock:
            row = self._db.execute(
                "SELECT received_id, mail FROM inbox WHERE sdk_message_id = ?", (sdk_message_id,)
            ).fetchone()
        if row is None:
            raise KeyError(sdk_message_id)
        try:
            return _kept(row["mail"], self._inbox_file(row["received_id"]))
        except FileNotFoundError:
            self._content_removed("inbox", "sdk_message_id", sdk_message_id)
            raise KeyError(sdk_message_id) from None

    def _content_removed(self, table: str, key: str, value: str) -> None:
        """Raise ContentRemoved if retention removed the content of this row."""
        with self._lock:
            row = self._db.execute(
                f"SELECT content_removed_at FROM {table} WHERE {key} = ?", (value,)
            ).fetchone()
        if row is not None and row[0] is not None:
            raise ContentRemoved(f"{value}: its content was removed at {row[0]} (retention)")

    def _update_row(self, table: str, key: str, value: str, changes: dict[str, Any]) -> None:
        values = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in changes.items()}
        values["updated_at"] = _now().isoformat()
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._writing(durable="state" in changes):
            self._db.execute(
                f"UPDATE {table} SET {assignments} WHERE {key} = ?", (*values.values(), value)
            )

    # --- delivery reports waiting for the smart host -------------------------------------

    def hold_report(self, recipient: str, data: bytes) -> None:
        with self._writing(durable=True):
            self._db.execute(
                "INSERT INTO reports (recipient, data, created_at) VALUES (?, ?, ?)",
                (recipient, data, _now().isoformat()),
            )

    def held_reports(self) -> list[tuple[int, str, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, recipient, data FROM reports ORDER BY id"
            ).fetchall()
        return [(row["id"], row["recipient"], row["data"]) for row in rows]

    def drop_report(self, report_id: int) -> None:
        with self._writing(durable=True):
            self._db.execute("DELETE FROM reports WHERE id = ?", (report_id,))
            self._wal_holds_deleted = True  # until the next purge empties the WAL

    # --- retention -------------------------------------------------------------------------

    def purge(self, retention: Retention) -> Purged:
        """Remove what `retention` no longer keeps (sdk_bridge.spool.retention). A file goes
        before its record says so: killed in between, the next purge finds it again."""
        now = _now()
        content, held = _before(now, retention.content), _before(now, retention.held)
        purged = Purged()
        purged.outbound_mails = self._remove_content(
            "messages",
            "id",
            "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id"
            f" AND (d.state NOT IN ({_marks(SETTLED_DELIVERIES)}) OR d.updated_at > ?"
            " OR json_extract(d.notes, '$.report') IS NOT NULL))",
            (*SETTLED_DELIVERIES, content),
        )
        judged = f"received_at <= ? AND state IN ({_marks(CONCLUDED_RECEIVED)})"
        purged.received_envelopes = self._remove_content(
            "received", "id", judged, (content, *CONCLUDED_RECEIVED)
        )
        held_ones = f"received_at <= ? AND state IN ({_marks(HELD_RECEIVED)})"
        purged.held = self._remove_content(
            "received", "id", held_ones, (held, *HELD_RECEIVED), state="deleted"
        )
        settled_mail = "state = ? AND updated_at <= ?"
        purged.inbound_mails = self._remove_content(
            "inbox", "sdk_message_id", settled_mail, (InboxState.DELIVERED, content)
        )
        purged.held += self._remove_content(
            "inbox", "sdk_message_id", settled_mail, (InboxState.FAILED, held)
        )
        purged.kvittens = self._remove_content(
            "kvittens_out",
            "id",
            f"state IN ({_marks(TAKEN_KVITTENS)}) AND updated_at <= ?",
            (*TAKEN_KVITTENS, content),
        )
        with self._writing(durable=True):
            purged.reports = self._db.execute(
                "DELETE FROM reports WHERE created_at <= ?", (_before(now, retention.reports),)
            ).rowcount
            purged.records = self._remove_records(_before(now, retention.records))
        purged.orphans = self._remove_orphans(now)
        self._wal_holds_deleted = self._wal_holds_deleted or bool(purged)
        if self._wal_holds_deleted:
            self._truncate_wal()
        return purged

    def _content(self, table: str) -> tuple[str, str, Callable[[str], Path], Path]:
        """The column that keeps a row's content in `table` when it is at most INLINE_BYTES,
        the column that names its file when larger, where that file lies, and the directory
        of them all."""
        return {
            "messages": ("body", "id", self._body_file, self._bodies),
            "received": ("payload", "id", self._received_file, self._received),
            "inbox": ("mail", "received_id", self._inbox_file, self._inbox),
            "kvittens_out": ("payload", "id", self._kvittens_file, self._kvittens),
        }[table]

    def _remove_content(
        self,
        table: str,
        key: str,
        condition: str,
        arguments: tuple[str, ...],
        state: str | None = None,
    ) -> int:
        """Remove the content (its file, or the column that keeps it) of the rows of
        `table` whose content is still there and that `condition` finds, and mark the rows
        (giving them `state`), in one write transaction: nothing changes them meanwhile (a
        release from quarantine, a retry, a recovered envelope). The number of contents
        removed, from files or rows."""
        inline, column, file, directory = self._content(table)
        removed = 0
        with self._lock:
            self._synchronous(durable=True)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    f"SELECT {key}, {column}, {inline} IS NOT NULL FROM {table}"
                    f" WHERE content_removed_at IS NULL AND {condition}",
                    arguments,
                ).fetchall()
                for row in rows:
                    try:
                        file(row[1]).unlink()
                        removed += 1
                    except FileNotFoundError:
                        removed += bool(row[2])
                if rows:
                    sync_directory(directory)
                    marks = f"content_removed_at = ?, {inline} = NULL"
                    marks += ", state = ?" if state else ""
                    values = (_now().isoformat(), state) if state else (_now().isoformat(),)
                    self._db.executemany(
                        f"UPDATE {table} SET {marks} WHERE {key} = ?",
                        [(*values, row[0]) for row in rows],
                    )
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        return removed

    def _remove_records(self, before: str) -> int:
        """Rows of settled messages whose content is gone and that have not changed since
        `before` (the caller holds the lock and the transaction). Envelopes the access
        point may still list keep theirs."""
        old_messages = (
            "SELECT id FROM messages m WHERE content_removed_at IS NOT NULL AND received_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id"
            " AND d.updated_at > ?)"
        )
        count = self._db.execute(
            "DELETE FROM superseded WHERE delivery_id IN (SELECT id FROM deliveries"
            f" WHERE message_id IN ({old_messages}))",
            (before, before),
        ).rowcount
        count += self._db.execute(
            f"DELETE FROM deliveries WHERE message_id IN ({old_messages})", (before, before)
        ).rowcount
        count += self._db.execute(
            "DELETE FROM messages WHERE content_removed_at IS NOT NULL AND received_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id)",
            (before,),
        ).rowcount
        count += self._db.execute(
            "DELETE FROM received WHERE received_at <= ?"
            " AND (content_removed_at IS NOT NULL OR state = 'lost')"
            f" AND state NOT IN ({_marks(LEFT_AT_ACCESS_POINT)})",
            (before, *LEFT_AT_ACCESS_POINT),
        ).rowcount
        for table in ("inbox", "kvittens_out"):
            count += self._db.execute(
                f"DELETE FROM {table} WHERE updated_at <= ? AND content_removed_at IS NOT NULL",
                (before,),
            ).rowcount
        return int(count)

    def _remove_orphans(self, now: datetime) -> int:
        """Files no record keeps (a crash between writing one and committing its record),
        once older than ORPHAN_AGE."""
        kept: dict[Path, set[str]] = {}
        with self._lock:
            for table in ("messages", "received", "inbox", "kvittens_out"):
                _, column, file, directory = self._content(table)
                rows = self._db.execute(
                    f"SELECT {column} FROM {table} WHERE content_removed_at IS NULL"
                ).fetchall()
                kept[directory] = {file(row[0]).name for row in rows}
        oldest = (now - ORPHAN_AGE).timestamp()
        removed = 0
        for directory, names in kept.items():
            for entry in os.scandir(directory):
                if entry.name in names:
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= oldest:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:  # gone meanwhile, or not ours to remove: the next file
                    continue
        return removed

    def _truncate_wal(self) -> None:
        """Empty the write-ahead log, which keeps old pages (a deleted report among them)
        until then. A reader of another process (`sdk-bridge queue`, a backup) may keep
        it from being done now: then at the next purge, not waiting for it meanwhile."""
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {WAL_TRUNCATE_WAIT_MS}")
            try:
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._wal_holds_deleted = bool(busy)

    # --- the worker ------------------------------------------------------------------------

    def claim_due(self, limit: int) -> list[Delivery]:
        """Queued deliveries whose time has come, leased so no other worker takes them;
        a lease that runs out (its worker died) makes the delivery due again."""
        now = _now().isoformat()
        with self._writing(durable=False):  # a lease
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE state = ? AND next_attempt_at <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_attempt_at LIMIT ?",
                (State.QUEUED, now, now, limit),
            ).fetchall()
            until = (_now() + self.lease).isoformat()
            self._db.executemany(
                "UPDATE deliveries SET lease_until = ? WHERE id = ?",
                [(until, row["id"]) for row in rows],
            )
        return [tables.delivery_from(row) for row in rows]

    def release_leases(self) -> int:
        """At start-up of the only worker: leases held by a killed predecessor end now."""
        with self._writing(durable=False):
            return self._db.execute(
                "UPDATE deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL"
            ).rowcount

    def _transition(
        self, delivery_id: int, decide: Decide, new_sdk_message_id: bool, report: bool | None
    ) -> Delivery | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            changes = None if row is None else decide(row)
            if row is None or changes is None:
                return None
            self._synchronous(durable="state" in changes or report is not None)
            with self._db:  # the transaction begins with the first write
                if new_sdk_message_id:
                    self._db.execute(
                        "INSERT INTO superseded VALUES (?, ?)",
                        (row["sdk_message_id"], delivery_id),
                    )
                    self._db.execute(
                        "UPDATE deliveries SET sdk_message_id = ? WHERE id = ?",
                        (str(uuid.uuid4()), delivery_id),
                    )
                self._write(delivery_id, changes, tables.TRANSITION_CHANGES)
                row = self._db.execute(
                    "SELECT * FROM deliveries WHERE id = ?", (delivery_id,)
                ).fetchone()
        return tables.delivery_from(row)

    def update(self, delivery_id: int, **changes: Any) -> None:
        """Write back what happened to a delivery (state, attempts, last_error, …)."""
        with self._writing(durable="state" in changes):
            self._write(delivery_id, changes, tables.DELIVERY_UPDATABLE)

    def _write(self, delivery_id: int, changes: dict[str, Any], allowed: frozenset[str]) -> None:
        tables.check_updatable(allowed, changes)
        values = {
            k: v.isoformat() if isinstance(v, datetime) else json.dumps(v) if k == "notes" else v
            for k, v in changes.items()
        }
        values["updated_at"] = _now().isoformat()
        if "state" in changes:
            values["lease_until"] = None  # a new state: whoever held it is done with it
        assignments = ", ".join(f"{k} = ?" for k in values)
        self._db.execute(
            f"UPDATE deliveries SET {assignments} WHERE id = ?", (*values.values(), delivery_id)
        )

    def body(self, message_id: str) -> bytes:
        """KeyError: no such message; ContentRemoved: retention removed it."""
        with self._lock:
            row = self._db.execute("SELECT body FROM messages WHERE id = ?", (message_id,))
            found = row.fetchone()
        try:
            return _kept(None if found is None else found["body"], self._body_file(message_id))
        except FileNotFoundError:
            self._content_removed("messages", "id", message_id)
            raise KeyError(message_id) from None

    def envelope(self, message_id: str) -> Envelope:
        with self._lock:
            row = self._db.execute(
                "SELECT envelope FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        if row is None:
            raise KeyError(message_id)
        return Envelope(**json.loads(row["envelope"]))

    def delivery(self, delivery_id: int) -> Delivery:
        return self._one("SELECT * FROM deliveries WHERE id = ?", delivery_id)

    def by_sdk_message_id(self, sdk_message_id: str) -> Delivery | None:
        return self._maybe(
            "SELECT * FROM deliveries WHERE sdk_message_id = ? OR id ="
            " (SELECT delivery_id FROM superseded WHERE sdk_message_id = ?)",
            sdk_message_id,
            sdk_message_id,
        )

    def by_mail_message_id(self, mail_message_id: str) -> Delivery | None:
        return self._maybe(
            "SELECT * FROM deliveries WHERE mail_message_id = ? ORDER BY id DESC LIMIT 1",
            mail_message_id,
        )

    def deliveries(
        self,
        state: State | None = None,
        *,
        due: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[Delivery]:
        due_text = None if due is None else due.isoformat()
        before = None if created_before is None else created_before.isoformat()
        conditions, arguments = tables.delivery_filter(state, due_text, before)
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deliveries" + conditions.replace("%s", "?") + " ORDER BY id",
                arguments,
            ).fetchall()
        return [tables.delivery_from(row) for row in rows]

    def owing_reports(self, limit: int = 10) -> list[Delivery]:
        """Deliveries whose sender is owed a delivery report, through an index: every
        round asks, and the table keeps all deliveries ever made."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE json_extract(notes, '$.report') IS NOT NULL"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [tables.delivery_from(row) for row in rows]

    def _maybe(self, query: str, *args: Any) -> Delivery | None:
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        return tables.delivery_from(row) if row else None

    def _one(self, query: str, *args: Any) -> Delivery:
        delivery = self._maybe(query, *args)
        if delivery is None:
            raise KeyError(args)
        return delivery
