"""The spool in PostgreSQL, shared by several bridges of one organisation.

Everything lives in the database, message bodies included (bytea), so no instance depends
on another's disk; only large mail still arriving over SMTP is a local file (`incoming()`),
read into the database by `accept`. A commit is durable before `accept` returns (WAL flushed:
the session never runs with synchronous_commit off), so SMTP's 250 follows it as with SQLite.

Several instances share the work safely. Every kind of work a stage takes is claimed
with `FOR UPDATE SKIP LOCKED` and leased to this instance (`lease_seconds`): queued
deliveries, received envelopes to judge, kvittens to hand over, mail for the mailboxes,
MessageIds to retrieve from the access point, delivery reports owed. Two instances never
claim the same row; a lease runs out by the database's clock when its instance dies, and
another takes over. `release_leases` at start-up ends only the leases of this instance's
own predecessor (the same host and spool directory), never those of a colleague that is
still working. What a lease cannot cover, a holder slower than its lease, is caught where
it matters: a received message is concluded once (`conclude_received`), a delivery moves
only from the states it may (`transition`). The dedup keys are unique columns (received
ebMS ids, inbox SDK messageIds, kvittens ids), so an instance may record what another sent
or received; the 24-hour same-mail check is serialised per body hash with an advisory lock.

The schema is `MIGRATIONS`, applied by `sdk-bridge db upgrade` (`PostgresSpool.upgrade`);
the spool refuses a database whose schema is older than it needs.
"""

from .cache import SharedRegistryCache
from .schema import MIGRATIONS, SCHEMA_VERSION, SchemaOutOfDate, schema_version, upgrade
from .spool import PostgresSpool

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresSpool",
    "SchemaOutOfDate",
    "SharedRegistryCache",
    "schema_version",
    "upgrade",
]
