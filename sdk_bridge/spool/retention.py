"""What the spool keeps, and for how long: the content of a mail (its text, its files, the
envelopes that carry them) only until it is delivered and its kvittens settled; what an
administrator must look at (quarantined envelopes, mail a mailbox refused) a while longer;
the bare record of what happened (ids, addresses, states, times) for troubleshooting,
duplicates and reply threading. Each back end's `purge` applies a `Retention`; the daemon
runs it every PURGE_INTERVAL, `sdk-bridge purge` at once."""

import asyncio
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from .errors import STORAGE_ERRORS

if TYPE_CHECKING:
    from . import Spool

log = structlog.get_logger(__name__)

PURGE_INTERVAL = 60.0  # seconds: content outlives its retention by at most this
# A file no record names (a crash between writing it and committing its record) is removed
# once it is this old: younger, its record may be on its way.
ORPHAN_AGE = timedelta(hours=1)


# The states in which a record's content is no longer needed (as each back end spells them).
SETTLED_DELIVERIES = ("delivered", "failed", "deleted")  # and no report owed
CONCLUDED_RECEIVED = ("done", "ignored", "accepted", "rejected", "deleted")
HELD_RECEIVED = ("quarantined", "unreadable")  # removed after `held`, then `deleted`
# Received envelopes the access point may go on listing (left there, unreadable, deleted by
# an administrator): their records stay, or the bridge would retrieve them again.
LEFT_AT_ACCESS_POINT = ("left", "unreadable", "deleted")
TAKEN_KVITTENS = ("delivered", "failed", "unconfirmed", "handed-over")


@dataclass(frozen=True)
class Retention:
    """How long past its time each kind of data is kept (config `retention`)."""

    # A mail's content after it settled: outbound, every recipient's kvittens or failure
    # (and the sender's report) in; inbound, put into its mailbox; kvittens, taken.
    content: timedelta = timedelta(0)
    # Quarantined and unreadable envelopes, mail a mailbox refused for good.
    held: timedelta = timedelta(days=30)
    # Delivery reports the smart host has not taken (Postfix's bounce_queue_lifetime).
    reports: timedelta = timedelta(days=5)
    # The records of settled messages (no content): after this, a reply to one no longer
    # threads and a copy of it would no longer be known as a duplicate.
    records: timedelta = timedelta(days=90)


@dataclass
class Purged:
    """What one purge removed."""

    outbound_mails: int = 0  # the mail as it came over SMTP
    received_envelopes: int = 0  # what the access point handed over (encrypted)
    inbound_mails: int = 0  # decrypted mail, once in its mailbox (or refused for good)
    kvittens: int = 0  # sealed kvittens the access point has taken
    held: int = 0  # quarantined or unreadable envelopes, refused mail, past `held`
    reports: int = 0  # delivery reports the smart host never took
    records: int = 0  # rows of settled messages past `records`
    orphans: int = 0  # files no record names

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def summary(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


async def purge(spool: "Spool", retention: Retention) -> None:
    """One round of the daemon's purge (every PURGE_INTERVAL); a spool that cannot be
    reached now is purged next time."""
    try:
        purged = await asyncio.to_thread(spool.purge, retention)
    except STORAGE_ERRORS as e:
        log.warning("spool not purged this time", error=str(e))
        return
    if purged:
        log.info("spool purged", **purged.summary())
