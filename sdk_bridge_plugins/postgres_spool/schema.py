"""The spool database's schema: its migrations, applied by `sdk-bridge db upgrade`, and
how to connect for it."""

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import scalar_row

from sdk_bridge.plugin import PluginError

# Each step must leave the previous version working (add, never drop or rename), so the
# instances of a rolling upgrade can run on the upgraded database one after the other.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "the spool: outbound queue, received envelopes, inbox, kvittens",
        """
CREATE TABLE messages (
    id text PRIMARY KEY,
    received_at timestamptz NOT NULL,
    mail_from text NOT NULL,
    envelope jsonb NOT NULL,         -- client, helo, auth user, ENVID, RET, Message-ID
    size bigint NOT NULL,
    body_sha256 text NOT NULL,       -- to know the same mail sent again after a lost 250
    body bytea NOT NULL
);
CREATE INDEX messages_resent ON messages (body_sha256, mail_from, received_at);
CREATE TABLE deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id text NOT NULL REFERENCES messages (id),
    recipient text NOT NULL,         -- the RCPT TO address
    details jsonb NOT NULL,          -- ORCPT, NOTIFY, SDK parties
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text,
    sdk_message_id text NOT NULL UNIQUE,  -- also the XHE ID and ebMS MessageId
    conversation_id text,
    mail_message_id text,            -- the mail's Message-ID, to thread replies
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    notes jsonb NOT NULL DEFAULT '{}',
    lease_until timestamptz,         -- an instance holds it until then (NULL: nobody)
    lease_owner text                 -- which instance (PostgresSpool.instance)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_message ON deliveries (message_id);
CREATE INDEX deliveries_mail_id ON deliveries (mail_message_id);
CREATE INDEX deliveries_lease_owner ON deliveries (lease_owner);
CREATE INDEX deliveries_owing_report ON deliveries (id)
    WHERE jsonb_typeof(notes -> 'report') = 'object';
CREATE TABLE superseded (            -- SDK messageIds a delivery had before a resend
    sdk_message_id text PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES deliveries (id)
);
CREATE TABLE reports (               -- delivery reports the smart host did not take yet
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient text NOT NULL,
    data bytea NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE received (
    id text PRIMARY KEY,             -- the ebMS MessageId the access point gave it
    seq bigint GENERATED ALWAYS AS IDENTITY,
    action text NOT NULL,
    original_sender text NOT NULL,
    final_recipient text NOT NULL,
    conversation_id text,
    received_at timestamptz NOT NULL,
    state text NOT NULL,             -- as in the SQLite spool
    note text,
    sdk_message_id text,             -- of a message judged after its signature verified
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,     -- NULL: now
    payload bytea                    -- NULL once deleted (and for lost ones)
);
CREATE INDEX received_state ON received (state, received_at);
CREATE INDEX received_sdk_id ON received (sdk_message_id);
CREATE TABLE retrieving (            -- ebMS MessageIds about to be retrieved
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    noted_at timestamptz NOT NULL
);
CREATE TABLE inbox (                 -- SDK messages accepted for us, on their way to a mailbox
    sdk_message_id text PRIMARY KEY, -- a second message with this id is a duplicate
    seq bigint GENERATED ALWAYS AS IDENTITY,
    received_id text NOT NULL,
    functional_address text NOT NULL,
    sender text NOT NULL,
    conversation_id text NOT NULL,
    mail_message_id text NOT NULL,
    reply_references jsonb NOT NULL,
    our_references jsonb NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    mail bytea NOT NULL
);
CREATE INDEX inbox_due ON inbox (state, next_attempt_at);
CREATE INDEX inbox_mail_id ON inbox (mail_message_id);
CREATE TABLE kvittens_out (          -- kvittens we owe senders, until the AP has them
    id text PRIMARY KEY,             -- the kvittens ID, also its ebMS MessageId
    answers text NOT NULL,
    receiver text NOT NULL,
    conversation_id text,
    accepted boolean NOT NULL,
    state text NOT NULL,             -- pending, sent, failed
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX kvittens_due ON kvittens_out (state, next_attempt_at);
""",
    ),
    (
        2,
        "leases on all claimed work, so several instances can run at once; the registry cache",
        """
ALTER TABLE received ADD COLUMN lease_until timestamptz, ADD COLUMN lease_owner text;
ALTER TABLE retrieving ADD COLUMN lease_until timestamptz, ADD COLUMN lease_owner text;
ALTER TABLE inbox ADD COLUMN lease_until timestamptz, ADD COLUMN lease_owner text;
ALTER TABLE kvittens_out ADD COLUMN lease_until timestamptz, ADD COLUMN lease_owner text;
ALTER TABLE reports ADD COLUMN lease_until timestamptz, ADD COLUMN lease_owner text;
ALTER TABLE deliveries ADD COLUMN report_lease_until timestamptz,
    ADD COLUMN report_lease_owner text;
CREATE INDEX received_lease_owner ON received (lease_owner);
CREATE INDEX retrieving_lease_owner ON retrieving (lease_owner);
CREATE INDEX inbox_lease_owner ON inbox (lease_owner);
CREATE INDEX kvittens_lease_owner ON kvittens_out (lease_owner);
CREATE INDEX reports_lease_owner ON reports (lease_owner);
CREATE INDEX deliveries_report_lease_owner ON deliveries (report_lease_owner);
CREATE TABLE registry_cache (         -- address book, revocation answers: for every instance
    name text PRIMARY KEY,
    data bytea NOT NULL,
    stored_at timestamptz NOT NULL
);
""",
    ),
    (
        3,
        "kvittens followed at the access point until sent, and sent again after a failure",
        """
ALTER TABLE kvittens_out ADD COLUMN transport_id text,
    ADD COLUMN resends integer NOT NULL DEFAULT 0;
-- Handed over before kvittens were followed: not asked after now (nor sent again).
UPDATE kvittens_out SET state = 'handed-over' WHERE state = 'sent';
""",
    ),
    (
        4,
        "retention: when the content of a message was removed",
        """
ALTER TABLE messages ADD COLUMN content_removed_at timestamptz;
ALTER TABLE received ADD COLUMN content_removed_at timestamptz;
ALTER TABLE inbox ADD COLUMN content_removed_at timestamptz;
ALTER TABLE kvittens_out ADD COLUMN content_removed_at timestamptz;
CREATE INDEX messages_content ON messages (id) WHERE content_removed_at IS NULL;
CREATE INDEX received_content ON received (state) WHERE content_removed_at IS NULL;
CREATE INDEX inbox_content ON inbox (state) WHERE content_removed_at IS NULL;
CREATE INDEX kvittens_content ON kvittens_out (state) WHERE content_removed_at IS NULL;
CREATE INDEX messages_received ON messages (received_at);
CREATE INDEX received_at ON received (received_at);
CREATE INDEX inbox_updated ON inbox (updated_at);
CREATE INDEX kvittens_updated ON kvittens_out (updated_at);
""",
    ),
]


SCHEMA_VERSION = MIGRATIONS[-1][0]  # what this code needs


# Advisory lock keys (two int4, so they share no space with other applications' bigints).
UPGRADE_LOCK = 0x53444B01


CONNECT_SECONDS = 10  # libpq's connect_timeout, unless the DSN sets one


UPGRADE_WAIT = "120s"  # for another instance's upgrade to finish


TLS_SETTINGS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


class SchemaOutOfDate(PluginError):
    """The database has an older schema than this code needs (or none yet)."""


def conninfo(settings: Mapping[str, Any]) -> str:
    """The libpq connection string: the DSN with the password and TLS settings given
    beside it, and a connect timeout so no start-up waits forever."""
    extra = {name: settings[name] for name in (*TLS_SETTINGS, "password") if name in settings}
    dsn = str(settings["dsn"])
    if "connect_timeout" not in conninfo_to_dict(dsn):
        extra["connect_timeout"] = CONNECT_SECONDS
    return make_conninfo(dsn, **extra)


def schema_version(connection: psycopg.Connection[Any]) -> int:
    """The highest migration applied; 0 for a database never upgraded."""
    cursor = connection.cursor(row_factory=scalar_row)
    if not cursor.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone():
        return 0
    found = cursor.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(found or 0)


def upgrade(settings: Mapping[str, Any]) -> list[str]:
    """Apply the migrations the database lacks, in one transaction, under an advisory lock
    (two instances upgrading at once: the second waits, then finds nothing to do). Return
    the steps applied, "N: description"; empty when the schema was up to date."""
    try:
        with psycopg.connect(conninfo(settings)) as connection:
            connection.execute(f"SET lock_timeout = '{UPGRADE_WAIT}'")  # for another instance
            connection.execute("SELECT pg_advisory_xact_lock(%s, 0)", (UPGRADE_LOCK,))
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
                " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = schema_version(connection)
            applied = []
            for number, description, statements in MIGRATIONS:
                if number > current:
                    connection.execute(statements)
                    connection.execute(
                        "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                        (number, description),
                    )
                    applied.append(f"{number}: {description}")
            return applied  # committed as the connection's block ends
    except psycopg.Error as e:
        raise PluginError(f"the spool database could not be upgraded: {e}") from e
