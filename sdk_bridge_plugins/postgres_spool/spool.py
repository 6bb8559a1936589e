"""The spool on PostgreSQL: the `Spool` protocol on a database several instances share."""

import contextlib
import hashlib
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from sdk_bridge.plugin.kit import KVITTENS_ACTION
from sdk_bridge.plugin.spools import (
    CONCLUDED_RECEIVED,
    HELD_RECEIVED,
    LEFT_AT_ACCESS_POINT,
    SETTLED_DELIVERIES,
    TAKEN_KVITTENS,
    Conclusion,
    ContentRemoved,
    Decide,
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
    Spool,
    SpoolFull,
    SpoolUnavailable,
    State,
    first_within,
    tables,
)

from .cache import SharedRegistryCache
from .schema import (
    CONNECT_SECONDS,
    SCHEMA_VERSION,
    SchemaOutOfDate,
    conninfo,
    schema_version,
    upgrade,
)

RESEND_LOCK = 0x53444B02  # with 28 bits of the body hash


RESEND_WINDOW = timedelta(hours=24)  # the same mail again within this is a resend


LEASE_SECONDS = 600  # how long a claim stands; another instance takes the work after it


# (table, lease column, owner column) of every claim, for release_leases
LEASES = (
    ("deliveries", "lease_until", "lease_owner"),
    ("deliveries", "report_lease_until", "report_lease_owner"),
    ("received", "lease_until", "lease_owner"),
    ("retrieving", "lease_until", "lease_owner"),
    ("inbox", "lease_until", "lease_owner"),
    ("kvittens_out", "lease_until", "lease_owner"),
    ("reports", "lease_until", "lease_owner"),
)


PURGE_BATCH = 1000  # rows a purge changes in one transaction


POOL_SIZE = 8  # connections per instance; the stages call the spool from worker threads


POOL_WAIT_SECONDS = 30.0  # for a free connection


STATEMENT_TIMEOUT = "60s"  # a 30 MB body is written well within it


LOCK_TIMEOUT = "30s"


DELIVERY_COLUMNS = (
    "id, message_id, details, state, attempts, next_attempt_at, last_error, sdk_message_id,"
    " conversation_id, mail_message_id, created_at, notes"
)


RECEIVED_COLUMNS = (
    "id, action, original_sender, final_recipient, conversation_id, attempts, payload"
)


INBOX_READ = (  # what an InboundMail is made from
    "sdk_message_id, received_id, functional_address, sender, conversation_id,"
    " mail_message_id, reply_references, our_references, state, attempts, last_error,"
    " created_at, content_removed_at"
)


# Ends this instance's lease on a row, and only this instance's: an administrator's
# `queue retry` must not hand a mail another instance is delivering to a third.
RELEASE = (
    "lease_until = CASE WHEN lease_owner = %s THEN NULL ELSE lease_until END,"
    " lease_owner = NULLIF(lease_owner, %s)"
)


def _instance(directory: Path) -> str:
    """This instance's name on its leases: the same after a restart, another's elsewhere."""
    return f"{socket.gethostname()}:{directory.resolve()}"


class PostgresSpool(Spool):
    """The Spool protocol (sdk_bridge.spool) on a PostgreSQL database shared by instances."""

    upgrade = staticmethod(upgrade)  # `sdk-bridge db upgrade` finds it on the factory

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.directory = Path(settings["directory"])
        self._incoming = self.directory / "incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        self.instance = _instance(self.directory)
        self.lease = timedelta(seconds=float(settings.get("lease_seconds", LEASE_SECONDS)))
        target = conninfo(settings)
        with psycopg.connect(target) as connection:  # libpq's own words if it cannot
            found = schema_version(connection)
        if found < SCHEMA_VERSION:
            raise SchemaOutOfDate(
                f"the spool database has schema version {found}, this sdk-bridge needs"
                f" {SCHEMA_VERSION}: run `sdk-bridge db upgrade -c <this configuration>`"
            )
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            target,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"row_factory": dict_row},
            configure=_configure,
            check=ConnectionPool.check_connection,
            timeout=POOL_WAIT_SECONDS,
            open=False,
        )
        self._pool.open(wait=True, timeout=CONNECT_SECONDS)

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        """A pooled connection whose transaction commits as the block ends. A database that
        cannot be reached, or has no room, is the stages' "try again later" (SpoolFull,
        SpoolUnavailable); other errors (a bug, a broken constraint) stay what they are."""
        try:
            with self._pool.connection() as db:
                yield db
        except psycopg.errors.DiskFull as e:
            raise SpoolFull(f"the spool database has no room: {e}") from e
        except (psycopg.OperationalError, PoolTimeout) as e:
            raise SpoolUnavailable(f"the spool database cannot be reached: {e}") from e

    def registry_cache(self) -> "SharedRegistryCache":
        """The registry's cache, shared by the instances in the database."""
        return SharedRegistryCache(self)

    def discard_partial(self) -> None:
        """At start-up: mail that was still arriving here was never answered 250."""
        for leftover in self._incoming.glob("*.part"):
            leftover.unlink()

    # --- ingress ---------------------------------------------------------------------------

    def incoming(self) -> Path:
        """A local file for a message still arriving; `accept` reads it into the database."""
        return self._incoming / f"{uuid.uuid4().hex}.part"

    def accept(
        self, envelope: Envelope, recipients: list[RecipientRecord], body: bytes | Path
    ) -> str:
        """Store one message for its recipients, durably; return its spool id. A file from
        `incoming()` is removed once the database has it."""
        data = body.read_bytes() if isinstance(body, Path) else body
        digest = hashlib.sha256(data).hexdigest()
        with self._connection() as db:
            # Two instances given the same resend at once: one stores it, the other finds it.
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (RESEND_LOCK, int(digest[:7], 16)))
            message_id = self._resent(db, envelope, recipients, digest)
            if message_id is None:
                message_id = uuid.uuid4().hex
                db.execute(
                    "INSERT INTO messages (id, received_at, mail_from, envelope, size,"
                    " body_sha256, body) VALUES (%s, now(), %s, %s, %s, %s, %b)",
                    (
                        message_id,
                        envelope.mail_from,
                        Jsonb(vars(envelope)),
                        len(data),
                        digest,
                        data,
                    ),
                )
                db.cursor().executemany(
                    "INSERT INTO deliveries (message_id, recipient, details, state,"
                    " next_attempt_at, sdk_message_id, mail_message_id, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, now(), %s, %s, now(), now())",
                    [
                        (
                            message_id,
                            r.address,
                            Jsonb({**vars(r), "notify": list(r.notify)}),
                            State.QUEUED.value,
                            str(uuid.uuid4()),
                            envelope.mail_message_id,
                        )
                        for r in recipients
                    ],
                )
        if isinstance(body, Path):
            body.unlink()
        return message_id

    @staticmethod
    def _resent(
        db: psycopg.Connection[DictRow],
        envelope: Envelope,
        recipients: list[RecipientRecord],
        digest: str,
    ) -> str | None:
        """The spool id of the very same mail (bytes, envelope sender, the functional
        address and user it was sent as, recipients) accepted within RESEND_WINDOW."""
        rows = db.execute(
            "SELECT m.id, m.envelope, array_agg(d.recipient ORDER BY d.recipient) AS recipients"
            " FROM messages m JOIN deliveries d ON d.message_id = m.id"
            " WHERE m.body_sha256 = %s AND m.mail_from = %s AND m.received_at >= now() - %s"
            " GROUP BY m.id",
            (digest, envelope.mail_from, RESEND_WINDOW),
        ).fetchall()
        for row in rows:
            if tables.same_mail(row["envelope"], row["recipients"], envelope, recipients):
                return str(row["id"])
        return None

    # --- from the access point ----------------------------------------------------------

    def store_received(self, item: Received, state: str = "new") -> bool:
        # By this instance or another. A `lost` record is replaced: an instance that outlived
        # its lease on the retrieval may store it after another found it no longer given out.
        with self._connection() as db:
            stored = db.execute(
                "INSERT INTO received (id, action, original_sender, final_recipient,"
                " conversation_id, received_at, state, payload)"
                " VALUES (%s, %s, %s, %s, %s, now(), %s, %b) ON CONFLICT (id) DO UPDATE SET"
                " action = excluded.action, original_sender = excluded.original_sender,"
                " final_recipient = excluded.final_recipient,"
                " conversation_id = excluded.conversation_id, state = excluded.state,"
                " note = NULL, payload = excluded.payload, content_removed_at = NULL"
                " WHERE received.state = 'lost'",
                (*_received_fields(item), state, item.payload),
            ).rowcount
            db.execute("DELETE FROM retrieving WHERE id = %s", (item.id,))  # kept, either way
        return stored == 1

    def import_received(self, item: Received) -> bool:
        """An envelope an administrator recovered from the access point: kept as new, in
        place of a `lost` record of it. False: the spool already has it."""
        with self._connection() as db:
            stored = db.execute(
                "INSERT INTO received (id, action, original_sender, final_recipient,"
                " conversation_id, received_at, state, payload)"
                " VALUES (%s, %s, %s, %s, %s, now(), 'new', %b) ON CONFLICT (id) DO UPDATE SET"
                " action = excluded.action, original_sender = excluded.original_sender,"
                " final_recipient = excluded.final_recipient,"
                " conversation_id = excluded.conversation_id, received_at = excluded.received_at,"
                " state = 'new', note = NULL, sdk_message_id = NULL, attempts = 0,"
                " next_attempt_at = NULL, payload = excluded.payload, content_removed_at = NULL"
                " WHERE received.state = 'lost'",
                (*_received_fields(item), item.payload),
            ).rowcount
            if stored:
                db.execute("DELETE FROM retrieving WHERE id = %s", (item.id,))
        return stored == 1

    def note_retrieving(self, message_ids: list[str]) -> list[str]:
        """Note, durably, the MessageIds about to be retrieved; return every one noted and
        not yet stored that this instance may retrieve, the oldest first. Another instance
        retrieving the same ones at this moment holds them: the access point gives a
        message out once, so two must never both ask for it."""
        with self._connection() as db:
            db.execute(
                "INSERT INTO retrieving (id, noted_at) SELECT i, now() FROM unnest(%s::text[]) i"
                " WHERE NOT EXISTS (SELECT 1 FROM received WHERE id = i AND state <> 'lost')"
                " ON CONFLICT (id) DO NOTHING",
                (message_ids,),
            )
            # A note for an envelope stored meanwhile is done with. One is left where another
            # instance noted it just as this one stored it: the insert above waits for the
            # store's transaction, whose delete it then comes after.
            db.execute(
                "DELETE FROM retrieving WHERE EXISTS (SELECT 1 FROM received r"
                " WHERE r.id = retrieving.id AND r.state <> 'lost')"
            )
            # A lost one the access point lists again is taken after all.
            stored = (
                "NOT EXISTS (SELECT 1 FROM received r WHERE r.id = retrieving.id"
                " AND r.state <> 'lost')"
            )
            rows = self._claim(db, "retrieving", "id", stored, (), "seq", None, "id, seq")
        return [row["id"] for row in sorted(rows, key=lambda row: row["seq"])]

    def lost_retrieving(self, message_id: str, note: str) -> None:
        """The access point no longer gives out a message noted before a crash: it stays on
        record as `lost`, for an administrator to recover (`import_received`)."""
        with self._connection() as db:
            db.execute("DELETE FROM retrieving WHERE id = %s", (message_id,))
            db.execute(
                "INSERT INTO received (id, action, original_sender, final_recipient,"
                " received_at, state, note) VALUES (%s, '', '', '', now(), 'lost', %s)"
                " ON CONFLICT (id) DO NOTHING",
                (message_id, note),
            )

    def forget_retrieving(self, message_id: str) -> None:
        """A noted MessageId that is not ours to retrieve after all (another organisation's
        message, left at the access point)."""
        with self._connection() as db:
            db.execute("DELETE FROM retrieving WHERE id = %s", (message_id,))

    def received_states(self, message_ids: list[str]) -> dict[str, str]:
        """The state of each of `message_ids` the spool has a record of."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT id, state FROM received WHERE id = ANY(%s::text[])", (message_ids,)
            ).fetchall()
        return {row["id"]: row["state"] for row in rows}

    def received(
        self, state: str = "new", action: str | None = None, *, limit: int | None = None
    ) -> list[Received]:
        query = (
            f"SELECT {RECEIVED_COLUMNS} FROM received WHERE state = %s"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
        )
        arguments: list[Any] = [state]
        if action:
            query += " AND action = %s"
            arguments.append(action)
        query += " ORDER BY received_at, seq"
        if limit:
            query += " LIMIT %s"
            arguments.append(limit)
        with self._connection() as db:
            rows = db.execute(query, arguments, binary=True).fetchall()
        return [tables.received_from(row, bytes(row["payload"] or b"")) for row in rows]

    def claim_received(
        self, limit: int | None = None, *, kvittens: bool = False, max_bytes: int | None = None
    ) -> list[Received]:
        """Leased to this instance for judging; their payloads come along."""
        condition = "state = 'new' AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
        condition += f" AND action {'=' if kvittens else '!='} %s"
        arguments: list[Any] = [KVITTENS_ACTION]
        with self._connection() as db:
            if max_bytes is not None:  # first which, by size; locked until the claim below
                sized = db.execute(
                    f"SELECT id, coalesce(octet_length(payload), 0) AS size FROM received"
                    f" WHERE ({condition}) AND (lease_until IS NULL OR lease_until <= now()"
                    " OR lease_owner = %s) ORDER BY received_at, seq LIMIT %s"
                    " FOR UPDATE SKIP LOCKED",
                    (*arguments, self.instance, limit),
                ).fetchall()
                ids = first_within(((row["id"], row["size"]) for row in sized), max_bytes)
                condition, arguments, limit = "id = ANY(%s)", [ids], None
            rows = self._claim(
                db,
                "received",
                "id",
                condition,
                arguments,
                "received_at, seq",
                limit,
                f"{RECEIVED_COLUMNS}, received_at, seq",
            )
        rows.sort(key=lambda row: (row["received_at"], row["seq"]))
        return [tables.received_from(row, bytes(row["payload"] or b"")) for row in rows]

    def received_payload(self, received_id: str) -> bytes:
        with self._connection() as db:
            row = db.execute(
                "SELECT payload FROM received WHERE id = %s", (received_id,), binary=True
            ).fetchone()
        return bytes(row["payload"] or b"") if row else b""

    def held_received(self) -> list[dict[str, Any]]:
        """What an administrator must look at: quarantined, unreadable and lost envelopes,
        newest first, without their payloads."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT id, action, original_sender, final_recipient, received_at, state, note"
                " FROM received WHERE state IN ('quarantined', 'unreadable', 'lost')"
                " ORDER BY received_at DESC, seq DESC"
            ).fetchall()
        return [{**row, "received_at": row["received_at"].isoformat()} for row in rows]

    def release_received(self, received_id: str) -> bool:
        """A quarantined envelope judged again. False: there is no such quarantined one."""
        with self._connection() as db:
            changed = db.execute(
                "UPDATE received SET state = 'new', note = NULL, attempts = 0,"
                " next_attempt_at = NULL WHERE id = %s AND state = 'quarantined'",
                (received_id,),
            ).rowcount
        return changed == 1

    def delete_received(self, received_id: str) -> bool:
        """An envelope an administrator has dealt with: its payload is removed, its record
        kept as `deleted`. Only held ones (quarantined, unreadable, lost) can be deleted."""
        with self._connection() as db:
            changed = db.execute(
                "UPDATE received SET state = 'deleted', payload = NULL WHERE id = %s"
                " AND state IN ('quarantined', 'unreadable', 'lost')",
                (received_id,),
            ).rowcount
        return changed == 1

    def postpone_received(self, received_id: str, until: datetime) -> None:
        """A message that cannot be judged now (registry or scanner unavailable)."""
        with self._connection() as db:
            db.execute(
                f"UPDATE received SET attempts = attempts + 1, next_attempt_at = %s, {RELEASE}"
                " WHERE id = %s",
                (until, self.instance, self.instance, received_id),
            )

    def mark_received(self, received_id: str, state: str, note: str | None = None) -> None:
        with self._connection() as db:
            db.execute(
                "UPDATE received SET state = %s, note = %s, lease_until = NULL,"
                " lease_owner = NULL WHERE id = %s",
                (state, note, received_id),
            )

    def _conclude_received(self, received_id: str, conclusion: Conclusion) -> bool:
        with self._connection() as db:
            row = db.execute(
                "SELECT state FROM received WHERE id = %s FOR UPDATE", (received_id,)
            ).fetchone()
            if row is None or row["state"] != "new":
                return False
            if conclusion.kvittens is not None:
                k, payload = conclusion.kvittens
                db.execute(
                    "INSERT INTO kvittens_out (id, answers, receiver, conversation_id, accepted,"
                    " state, next_attempt_at, created_at, updated_at, payload)"
                    " VALUES (%s, %s, %s, %s, %s, 'pending', now(), now(), now(), %b)"
                    " ON CONFLICT (id) DO NOTHING",
                    (k.id, k.answers, k.receiver, k.conversation_id, k.accepted, payload),
                )
            if conclusion.mail is not None:
                inbound, data = conclusion.mail
                try:
                    db.execute(
                        f"INSERT INTO inbox ({tables.INBOX_COLUMNS}, next_attempt_at, created_at,"
                        " updated_at, mail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now(),"
                        " now(), now(), %b)",
                        (*tables.inbox_values(inbound, Jsonb), data),
                    )
                except psycopg.errors.UniqueViolation as e:
                    raise DuplicateMessage(str(e)) from e
            db.execute(
                "UPDATE received SET state = %s, note = %s, sdk_message_id = %s,"
                " lease_until = NULL, lease_owner = NULL WHERE id = %s",
                (conclusion.state, conclusion.note, conclusion.sdk_message_id, received_id),
            )
        return True

    # --- kvittens we send ----------------------------------------------------------------

    def owed_kvittens(self, limit: int = 100) -> list[tuple[OwedKvittens, bytes]]:
        """Kvittens not yet taken by the access point whose time has come, leased to this
        instance for handing over."""
        with self._connection() as db:
            rows = self._kvittens_rows(db, "pending", limit, ", payload")
        return [(tables.owed_kvittens_from(row), bytes(row["payload"])) for row in rows]

    def sent_kvittens(self, limit: int = 100) -> list[OwedKvittens]:
        """Kvittens the access point took and has not yet confirmed sent, due a look,
        leased to this instance for asking."""
        with self._connection() as db:
            return [
                tables.owed_kvittens_from(row) for row in self._kvittens_rows(db, "sent", limit, "")
            ]

    def _kvittens_rows(
        self, db: psycopg.Connection[DictRow], state: str, limit: int, more: str
    ) -> list[DictRow]:
        rows = self._claim(
            db,
            "kvittens_out",
            "id",
            "state = %s AND next_attempt_at <= now()",
            (state,),
            "next_attempt_at",
            limit,
            "id, answers, receiver, conversation_id, accepted, attempts, transport_id,"
            f" resends, next_attempt_at{more}",
        )
        rows.sort(key=lambda row: row["next_attempt_at"])
        return rows

    # --- the inbox: mail on its way to a mailbox -------------------------------------------

    def known_inbound(self, sdk_message_id: str) -> bool:
        with self._connection() as db:
            row = db.execute(
                "SELECT EXISTS (SELECT 1 FROM received WHERE sdk_message_id = %s)"
                " OR EXISTS (SELECT 1 FROM inbox WHERE sdk_message_id = %s) AS known",
                (sdk_message_id, sdk_message_id),
            ).fetchone()
        return bool(row and row["known"])

    def rejected_inbound(self, sdk_message_id: str) -> bool:
        """Whether we answered the message with this SDK messageId with REJECTED."""
        with self._connection() as db:
            row = db.execute(
                "SELECT 1 FROM received WHERE sdk_message_id = %s AND state = 'rejected'",
                (sdk_message_id,),
            ).fetchone()
        return row is not None

    def disk(self) -> tuple[int, int] | None:
        """None: the database server keeps the envelopes, on a disk not seen from here (a
        full one refuses the write, and the access point keeps what was not stored)."""
        return None

    def queue_depths(self) -> dict[tuple[str, str], tuple[int, datetime]]:
        """(queue, state) -> (how many, when the oldest came), for metrics and `queue`."""
        queries = {
            "outbound": "SELECT state, count(*), min(created_at) FROM deliveries GROUP BY state",
            "received": "SELECT state, count(*), min(received_at) FROM received GROUP BY state",
            "inbox": "SELECT state, count(*), min(created_at) FROM inbox GROUP BY state",
            "kvittens": "SELECT state, count(*), min(created_at) FROM kvittens_out GROUP BY state",
        }
        depths = {}
        with self._connection() as db:
            for queue, query in queries.items():
                for state, count, first in db.cursor(row_factory=tuple_row).execute(query):
                    depths[(queue, state)] = (count, first)
        return depths

    def inbox_due(self, limit: int = 16) -> list[InboundMail]:
        """Mail whose time has come for its mailbox, leased to this instance: two instances
        appending one mail at once would put it there twice."""
        with self._connection() as db:
            rows = self._claim(
                db,
                "inbox",
                "sdk_message_id",
                "state = %s AND next_attempt_at <= now()",
                (InboxState.DELIVERING.value,),
                "next_attempt_at",
                limit,
                f"{INBOX_READ}, next_attempt_at",
            )
        rows.sort(key=lambda row: row["next_attempt_at"])
        return [tables.inbound_mail_from(row) for row in rows]

    def inbox(self, state: InboxState | None = None) -> list[InboundMail]:
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {INBOX_READ} FROM inbox"
                + (" WHERE state = %s" if state else "")
                + " ORDER BY seq",
                (state.value,) if state else (),
            ).fetchall()
        return [tables.inbound_mail_from(row) for row in rows]

    def inbound_by_mail_message_id(self, mail_message_id: str) -> InboundMail | None:
        """The received message a reply answers, found by the Message-ID its mail had."""
        with self._connection() as db:
            row = db.execute(
                f"SELECT {INBOX_READ} FROM inbox WHERE mail_message_id = %s ORDER BY seq LIMIT 1",
                (mail_message_id,),
            ).fetchone()
        return tables.inbound_mail_from(row) if row else None

    def inbound_mail(self, sdk_message_id: str) -> bytes:
        with self._connection() as db:
            row = db.execute(
                "SELECT mail, content_removed_at FROM inbox WHERE sdk_message_id = %s",
                (sdk_message_id,),
                binary=True,
            ).fetchone()
        if row is None:
            raise KeyError(sdk_message_id)
        _require_content(sdk_message_id, row)
        return bytes(row["mail"])

    def _update_row(self, table: str, key: str, value: str, changes: dict[str, Any]) -> None:
        assignments = "".join(f"{name} = %s, " for name in changes)
        with self._connection() as db:  # this round's attempt is over: so is its lease
            db.execute(
                f"UPDATE {table} SET {assignments}{RELEASE}, updated_at = now() WHERE {key} = %s",
                (*changes.values(), self.instance, self.instance, value),
            )

    # --- delivery reports waiting for the smart host -------------------------------------

    def hold_report(self, recipient: str, data: bytes) -> None:
        with self._connection() as db:
            db.execute(
                "INSERT INTO reports (recipient, data, created_at) VALUES (%s, %b, now())",
                (recipient, data),
            )

    def held_reports(self) -> list[tuple[int, str, bytes]]:
        """Reports to try again, leased to this instance (not sent twice by two)."""
        with self._connection() as db:
            rows = self._claim(db, "reports", "id", "true", (), "id", None, "id, recipient, data")
        rows.sort(key=lambda row: row["id"])
        return [(row["id"], row["recipient"], bytes(row["data"])) for row in rows]

    def drop_report(self, report_id: int) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM reports WHERE id = %s", (report_id,))

    # --- retention -------------------------------------------------------------------------

    def purge(self, retention: Retention) -> Purged:
        """Remove what `retention` no longer keeps (sdk_bridge.spool.retention), by the
        database's clock, in batches of PURGE_BATCH rows a transaction. Content columns
        are emptied, their rows kept as records; what PostgreSQL keeps of the old values
        (dead tuples until vacuumed, WAL, backups) is the database's to retain."""
        purged = Purged()
        purged.outbound_mails = self._empty(
            "messages",
            "id",
            "body = ''::bytea",
            "content_removed_at IS NULL AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.message_id = messages.id AND (d.state <> ALL(%s)"
            " OR d.updated_at > now() - %s OR jsonb_typeof(d.notes -> 'report') = 'object'))",
            (list(SETTLED_DELIVERIES), retention.content),
        )
        judged = "content_removed_at IS NULL AND state = ANY(%s) AND received_at <= now() - %s"
        purged.received_envelopes = self._empty(
            "received",
            "id",
            "payload = NULL",
            judged,
            (list(CONCLUDED_RECEIVED), retention.content),
        )
        purged.held = self._empty(
            "received",
            "id",
            "payload = NULL, state = 'deleted'",
            judged,
            (list(HELD_RECEIVED), retention.held),
        )
        settled_mail = "content_removed_at IS NULL AND state = %s AND updated_at <= now() - %s"
        purged.inbound_mails = self._empty(
            "inbox",
            "sdk_message_id",
            "mail = ''::bytea",
            settled_mail,
            (InboxState.DELIVERED.value, retention.content),
        )
        purged.held += self._empty(
            "inbox",
            "sdk_message_id",
            "mail = ''::bytea",
            settled_mail,
            (InboxState.FAILED.value, retention.held),
        )
        purged.kvittens = self._empty(
            "kvittens_out",
            "id",
            "payload = ''::bytea",
            "content_removed_at IS NULL AND state = ANY(%s) AND updated_at <= now() - %s",
            (list(TAKEN_KVITTENS), retention.content),
        )
        purged.reports = self._batches(
            "DELETE FROM reports WHERE id IN"
            " (SELECT id FROM reports WHERE created_at <= now() - %s LIMIT %s)",
            (retention.reports,),
        )
        purged.records = self._remove_records(retention.records)
        return purged

    def _empty(
        self, table: str, key: str, emptied: str, condition: str, values: tuple[Any, ...]
    ) -> int:
        """Set `emptied` (the content columns) and mark the rows `condition` finds, batch by
        batch. The condition is checked again outside the subquery: a row another instance
        changed meanwhile (released, retried, recovered) is looked at anew once its lock
        is free."""
        return self._batches(
            f"UPDATE {table} SET {emptied}, content_removed_at = now() WHERE {key} IN"
            f" (SELECT {key} FROM {table} WHERE {condition} LIMIT %s) AND {condition}",
            values,
            values,
        )

    def _batches(self, statement: str, before: tuple[Any, ...], after: tuple[Any, ...] = ()) -> int:
        """Run `statement`, its parameters `before`, the batch size and `after`, until it
        changes fewer rows than a batch; the rows changed."""
        total = 0
        while True:
            with self._connection() as db:
                changed = db.execute(statement, (*before, PURGE_BATCH, *after)).rowcount
            total += changed
            if changed < PURGE_BATCH:
                return total

    def _remove_records(self, age: timedelta) -> int:
        """Rows of settled messages whose content is gone and that have not changed for
        `age`."""
        old = (
            "SELECT id FROM messages m WHERE content_removed_at IS NOT NULL"
            " AND received_at <= now() - %s AND NOT EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.message_id = m.id AND d.updated_at > now() - %s) LIMIT %s"
        )
        count = 0
        while True:
            with self._connection() as db:
                ids = [row["id"] for row in db.execute(old, (age, age, PURGE_BATCH))]
                db.execute(
                    "DELETE FROM superseded WHERE delivery_id IN"
                    " (SELECT id FROM deliveries WHERE message_id = ANY(%s))",
                    (ids,),
                )
                count += db.execute(
                    "DELETE FROM deliveries WHERE message_id = ANY(%s)", (ids,)
                ).rowcount
                count += db.execute("DELETE FROM messages WHERE id = ANY(%s)", (ids,)).rowcount
            if len(ids) < PURGE_BATCH:
                break
        count += self._batches(  # envelopes the access point may still list keep theirs
            "DELETE FROM received WHERE id IN (SELECT id FROM received"
            " WHERE (content_removed_at IS NOT NULL OR state = 'lost')"
            " AND state <> ALL(%s) AND received_at <= now() - %s LIMIT %s)",
            (list(LEFT_AT_ACCESS_POINT), age),
        )
        for table, key in (("inbox", "sdk_message_id"), ("kvittens_out", "id")):
            count += self._batches(
                f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
                " WHERE content_removed_at IS NOT NULL AND updated_at <= now() - %s LIMIT %s)",
                (age,),
            )
        return count

    # --- the worker ------------------------------------------------------------------------

    def claim_due(self, limit: int) -> list[Delivery]:
        """Queued deliveries whose time has come, leased to this instance: rows another
        instance is claiming at this moment are skipped, not waited for. A lease that runs
        out (its instance died) makes the delivery due again, for any instance."""
        with self._connection() as db:
            rows = db.execute(
                "UPDATE deliveries SET lease_until = now() + %s, lease_owner = %s"
                " WHERE id IN (SELECT id FROM deliveries WHERE state = %s"
                " AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until <= now())"
                " ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                f" RETURNING {DELIVERY_COLUMNS}",
                (self.lease, self.instance, State.QUEUED.value, limit),
            ).fetchall()
        claimed = [tables.delivery_from(row) for row in rows]
        return sorted(claimed, key=lambda d: (d.next_attempt_at, d.id))

    def release_leases(self) -> int:
        """At start-up: the leases this instance's killed predecessor held end now; those of
        other instances, still working, stand."""
        released = 0
        with self._connection() as db:
            for table, until, owner in LEASES:
                released += db.execute(
                    f"UPDATE {table} SET {until} = NULL, {owner} = NULL WHERE {owner} = %s",
                    (self.instance,),
                ).rowcount
        return released

    def _claim(
        self,
        db: psycopg.Connection[DictRow],
        table: str,
        key: str,
        condition: str,
        arguments: Sequence[Any],
        order: str,
        limit: int | None,
        columns: str,
        lease: str = "lease",
    ) -> list[DictRow]:
        """Lease to this instance the rows of `table` meeting `condition` that no other
        instance holds now, at most `limit` of them in `order` (returned unordered): rows
        another instance is claiming at this moment are skipped, not waited for. This
        instance may take again what it holds: each stage takes its work in rounds."""
        until, owner = f"{lease}_until", f"{lease}_owner"
        return db.execute(
            f"UPDATE {table} SET {until} = now() + %s, {owner} = %s"
            f" WHERE {key} IN (SELECT {key} FROM {table} WHERE ({condition})"
            f" AND ({until} IS NULL OR {until} <= now() OR {owner} = %s)"
            f" ORDER BY {order} LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {columns}",
            (self.lease, self.instance, *arguments, self.instance, limit),
            binary=True,
        ).fetchall()

    def _transition(
        self, delivery_id: int, decide: Decide, new_sdk_message_id: bool, report: bool | None
    ) -> Delivery | None:
        with self._connection() as db:
            row = db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = %s FOR UPDATE",
                (delivery_id,),
            ).fetchone()
            changes = None if row is None else decide(row)
            if row is None or changes is None:
                return None
            if report is not None:  # owed: this instance sends it next; or sent
                db.execute(
                    "UPDATE deliveries SET report_lease_until = CASE WHEN %s THEN now() + %s END,"
                    " report_lease_owner = CASE WHEN %s THEN %s END WHERE id = %s",
                    (report, self.lease, report, self.instance, delivery_id),
                )
            if new_sdk_message_id:
                db.execute(
                    "INSERT INTO superseded (sdk_message_id, delivery_id) VALUES (%s, %s)",
                    (row["sdk_message_id"], delivery_id),
                )
                db.execute(
                    "UPDATE deliveries SET sdk_message_id = %s WHERE id = %s",
                    (str(uuid.uuid4()), delivery_id),
                )
            return _write(db, delivery_id, changes, tables.TRANSITION_CHANGES)

    def update(self, delivery_id: int, **changes: Any) -> None:
        """Write back what happened to a delivery (state, attempts, last_error, …)."""
        with self._connection() as db:
            _write(db, delivery_id, changes, tables.DELIVERY_UPDATABLE)

    def body(self, message_id: str) -> bytes:
        with self._connection() as db:
            row = db.execute(
                "SELECT body, content_removed_at FROM messages WHERE id = %s",
                (message_id,),
                binary=True,
            ).fetchone()
        if row is None:
            raise KeyError(message_id)
        _require_content(message_id, row)
        return bytes(row["body"])

    def envelope(self, message_id: str) -> Envelope:
        with self._connection() as db:
            row = db.execute(
                "SELECT envelope FROM messages WHERE id = %s", (message_id,)
            ).fetchone()
        if row is None:
            raise KeyError(message_id)
        return Envelope(**row["envelope"])

    def delivery(self, delivery_id: int) -> Delivery:
        found = self._maybe("id = %s", delivery_id)
        if found is None:
            raise KeyError(delivery_id)
        return found

    def by_sdk_message_id(self, sdk_message_id: str) -> Delivery | None:
        return self._maybe(
            "sdk_message_id = %s OR id ="
            " (SELECT delivery_id FROM superseded WHERE sdk_message_id = %s)",
            sdk_message_id,
            sdk_message_id,
        )

    def by_mail_message_id(self, mail_message_id: str) -> Delivery | None:
        return self._maybe("mail_message_id = %s ORDER BY id DESC LIMIT 1", mail_message_id)

    def deliveries(
        self,
        state: State | None = None,
        *,
        due: datetime | None = None,
        created_before: datetime | None = None,
    ) -> list[Delivery]:
        conditions, arguments = tables.delivery_filter(state, due, created_before)
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries{conditions} ORDER BY id", arguments
            ).fetchall()
        return [tables.delivery_from(row) for row in rows]

    def owing_reports(self, limit: int = 10) -> list[Delivery]:
        """Deliveries whose report is owed and not being sent by another instance (the one
        that recorded it sends it at once), leased to this instance for sending."""
        with self._connection() as db:
            rows = self._claim(
                db,
                "deliveries",
                "id",
                "jsonb_typeof(notes -> 'report') = 'object'",
                (),
                "id",
                limit,
                DELIVERY_COLUMNS,
                lease="report_lease",
            )
        return sorted((tables.delivery_from(row) for row in rows), key=lambda d: d.id)

    def _maybe(self, condition: str, *args: Any) -> Delivery | None:
        with self._connection() as db:
            row = db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {condition}", args
            ).fetchone()
        return tables.delivery_from(row) if row else None


def _configure(connection: psycopg.Connection[DictRow]) -> None:
    """Each pooled session: times in UTC, every wait bounded, and commits durable before
    they return (a server whose default is synchronous_commit=off would make 250 a lie)."""
    connection.execute("SET TIME ZONE 'UTC'")
    connection.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    row = connection.execute("SELECT current_setting('synchronous_commit') AS mode").fetchone()
    if row is not None and row["mode"] == "off":
        connection.execute("SET synchronous_commit = on")
    connection.commit()


def _received_fields(item: Received) -> tuple[str, str, str, str, str | None]:
    return (item.id, item.action, item.original_sender, item.final_recipient, item.conversation_id)


def _write(
    db: psycopg.Connection[DictRow],
    delivery_id: int,
    changes: dict[str, Any],
    allowed: frozenset[str],
) -> Delivery:
    tables.check_updatable(allowed, changes)
    values = {k: Jsonb(v) if k == "notes" else v for k, v in changes.items()}
    assignments = "".join(f"{name} = %s, " for name in values)
    if "state" in changes:  # a new state: whoever held it is done with it
        assignments += "lease_until = NULL, lease_owner = NULL, "
    row = db.execute(
        f"UPDATE deliveries SET {assignments}updated_at = now() WHERE id = %s"
        f" RETURNING {DELIVERY_COLUMNS}",
        (*values.values(), delivery_id),
    ).fetchone()
    if row is None:
        raise KeyError(delivery_id)
    return tables.delivery_from(row)


def _require_content(key: str, row: DictRow) -> None:
    if row["content_removed_at"] is not None:
        removed = row["content_removed_at"].isoformat()
        raise ContentRemoved(f"{key}: its content was removed at {removed} (retention)")
