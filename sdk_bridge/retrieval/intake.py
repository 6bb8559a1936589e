"""Taking envelopes from the access point: each one is stored before the access point may
forget it.

Domibus 5 (the WS plugin's current interface) leaves a retrieved message pending until the
bridge says it has it (`AccessPoint.acknowledge`, markMessageAsDownloaded), so the order is
retrieve, store durably, acknowledge: a bridge killed anywhere in between finds the message
still listed after its restart, retrieves it again and stores it once. A message that is
stored but not yet acknowledged (the access point could not be told) is acknowledged
without being retrieved again.

Only our own messages are taken. The list is asked for our organisation only; a message
whose finalRecipient is another organisation's all the same (an access point that ignores
the filter, a plugin user with another organisation's originalUser) is left pending and
unacknowledged for its owner, logged once and counted.

The deprecated interface (Domibus 4.x) marks a message downloaded as it hands it out and,
under Digg's P-Mode (`retention_downloaded=0`), deletes it at once. There, every MessageId
is noted durably before it is retrieved, and nothing but the write happens between
retrieve and store; a bridge killed in that window finds the noted MessageId unanswerable
after its restart, records the message as `lost` and raises an alert naming it. Operators
should configure a retention above zero: the payload then stays at the access point for
that long, and an administrator downloads it there and hands it over with
`sdk-bridge inbound import`. With retention 0 it is gone.
"""

import asyncio
from collections.abc import Collection
from dataclasses import replace
from typing import Any

import structlog

from ..plugin import (
    AccessPoint,
    OversizedRetrieval,
    PermanentFailure,
    Retrieved,
    TemporaryFailure,
    UnreadableRetrieval,
)
from ..runtime import counters
from ..runtime.concurrently import each
from ..sdk import xhe
from ..sdk.names import DOCUMENT_ID_SCHEME, KVITTENS_DOCUMENT_ID, MESSAGE_DOCUMENT_ID
from ..sdk.sealing import MAX_ENVELOPE_BYTES
from ..sdk.xmlsafe import UnsafeXML, parse
from ..spool import STORAGE_ERRORS, Received, Spool
from ..spool.retention import LEFT_AT_ACCESS_POINT
from ..spool.room import room_wanted

log = structlog.get_logger(__name__)

# Envelopes retrieved a round (8 at a time): even against an access point that hangs until
# each one's timeout, a round stays well within the spool's lease on them.
RETRIEVALS = 48
# The action recorded for a message too large to take: its payload is only the beginning
# of its envelope, enough to address the kvittens that refuses it (B1.3.3 §5.3, too-long).
OVERSIZE_ACTION = "sdk-bridge:oversize"


# What the spool's record of a listed message says to do with it. Left: another
# organisation's (or too large to say whose), unreadable, or deleted by an administrator:
# never retrieved again, never marked downloaded, so the access point keeps it. Lost (the
# deprecated interface gave it out and a crash took it): retrieved again if listed.
LEFT_ALONE = frozenset(LEFT_AT_ACCESS_POINT)
RETRIEVE_AGAIN = frozenset({"lost"})
# Failed attempts to mark one stored message downloaded before an alert says so.
ACKNOWLEDGE_ALERT = 10


class Intake:
    """Fetching from one access point into one spool, for the organisations `ours`.

    Nothing is retrieved while the spool's disk has less room than `spool.room` asks: the
    access point keeps it meanwhile. On the deprecated interface, an envelope that still
    cannot be stored once retrieved is held in memory and stored first next round; nothing
    more is retrieved until it is. On the current one nothing is held."""

    def __init__(self, access_point: AccessPoint, spool: Spool, ours: Collection[str]) -> None:
        self.access_point = access_point
        self.spool = spool
        self.ours = frozenset(ours)
        self.unstored: dict[str, Received] = {}
        self.backlog = False  # the last look found more pending than one round takes
        self.waiting_for_room = False  # the spool's disk is too full to take anything
        self._unacknowledged: dict[str, int] = {}  # failed marks, by MessageId

    @property
    def _keeps(self) -> bool:
        return bool(getattr(self.access_point, "keeps_until_acknowledged", False))

    async def fetch(self, limit: int = RETRIEVALS) -> int | None:
        """Retrieve up to `limit` pending envelopes into the spool; how many were new, or
        None when the access point could not be asked or the spool cannot take more."""
        needed = await asyncio.to_thread(room_wanted, self.spool)
        if needed is not None:
            if not self.waiting_for_room:
                log.error(
                    "alert: the spool's disk is nearly full; nothing is taken from the access"
                    " point until there is room (it keeps the messages meanwhile)",
                    needed_bytes=needed,
                )
            self.waiting_for_room = True
            return None
        self.waiting_for_room = False
        new = 0
        for item in list(self.unstored.values()):
            try:
                new += await asyncio.to_thread(self.spool.store_received, item)
            except STORAGE_ERRORS as e:
                log.error(
                    "alert: a retrieved message still cannot be stored", id=item.id, error=str(e)
                )
                return None
            del self.unstored[item.id]
            log.info("retrieved message stored after all", id=item.id)
        try:
            listed = await self.access_point.pending(self.ours)
        except TemporaryFailure as e:
            log.warning("access point: cannot list pending messages", error=str(e))
            counters.ACCESS_POINT_ERRORS.labels("pending").inc()
            return None
        states = await asyncio.to_thread(self.spool.received_states, listed) if listed else {}
        fresh = [i for i in listed if i not in states or states[i] in RETRIEVE_AGAIN]
        if self._keeps:  # stored before, the access point not yet told (or a crash between)
            kept = [i for i in states if states[i] not in LEFT_ALONE | RETRIEVE_AGAIN]
            await each(kept, self._acknowledge)
        self.backlog = len(fresh) > limit
        noted = await asyncio.to_thread(self.spool.note_retrieving, fresh[:limit])
        taken: list[bool] = []

        async def take(message_id: str) -> None:
            taken.append(await self._take(message_id))

        await each(noted, take)
        return new + sum(taken)

    async def _take(self, message_id: str) -> bool:
        """Retrieve one envelope, store it at once, then acknowledge it; whether it was new."""
        try:
            item = await self.access_point.retrieve(message_id)
        except TemporaryFailure as e:
            log.warning(
                "access point: retrieve failed, will try again", id=message_id, error=str(e)
            )
            counters.ACCESS_POINT_ERRORS.labels("retrieve").inc()
            return False
        except OversizedRetrieval as e:
            return await self._oversized(message_id, e)
        except UnreadableRetrieval as e:  # kept as it came, for an administrator
            log.error(
                "access point: retrieved message unreadable; kept", id=message_id, error=str(e)
            )
            unreadable = Received(message_id, "", "", "", None, e.raw)
            await asyncio.to_thread(self.spool.store_received, unreadable, "unreadable")
            # Not marked downloaded where the access point keeps it: whose it is cannot be
            # told, and it may be another organisation's.
            return False
        except PermanentFailure as e:
            if self._keeps:  # it never gives a message out once only: taken by its owner
                log.warning(
                    "access point: a listed message is no longer there (another bridge of a"
                    " shared access point took it?)",
                    ebms_id=message_id,
                    error=str(e),
                )
                await asyncio.to_thread(self.spool.forget_retrieving, message_id)
                return False
            log.error(  # given out before, to us: kept on record as lost
                "alert: message lost at the access point; recover it from there during its"
                " retention and run `sdk-bridge inbound import`",
                ebms_id=message_id,
                error=str(e),
            )
            counters.LOST.inc()
            note = f"the access point no longer gives it out: {e}"
            await asyncio.to_thread(self.spool.lost_retrieving, message_id, note)
            return False
        if self._keeps and item.final_recipient not in self.ours:
            await self._leave(item, f"for another organisation, {item.final_recipient}")
            counters.FOREIGN.inc()
            log.error(
                "a message for another organisation is listed to us; left at the access"
                " point. Give the bridge's plugin user ROLE_USER and our organisation id as"
                " originalUser",
                ebms_id=item.message_id,
                final_recipient=item.final_recipient,
            )
            return False
        return await self._store(_received(item))

    async def _store(self, received: Received) -> bool:
        """Store a retrieved envelope, then mark it downloaded; whether it was new."""
        try:
            new = await asyncio.to_thread(self.spool.store_received, received)
        except Exception as e:
            if self._keeps:  # still at the access point: retrieved again next round
                log.error(
                    "a retrieved message cannot be stored; it stays at the access point",
                    id=received.id,
                    error=str(e),
                )
                return False
            # Gone at the access point: keep it, whatever the store says.
            log.error(
                "alert: a retrieved message cannot be stored; held in memory until it can,"
                " so do not stop the bridge before there is room",
                id=received.id,
                error=str(e),
            )
            self.unstored[received.id] = received
            return False
        await self._acknowledge(received.id)
        return new

    async def _oversized(self, message_id: str, e: OversizedRetrieval) -> bool:
        """A message too large to take: stored as its beginning (OVERSIZE_ACTION), for the
        inbound stage to answer REJECTED BV too-long; one whose ids cannot be learnt stays
        at the access point (or, on the deprecated interface, is recorded lost), with an
        alert either way."""
        counters.OVERSIZED.inc()
        item = e.retrieved
        if item is None:
            log.error(
                "alert: a message too large to take, and its sender cannot be told; fetch it"
                " from the access point's console",
                ebms_id=message_id,
                error=str(e),
            )
            if self._keeps:
                unknown = Retrieved(message_id, b"", "", "", "", None)
                await self._leave(unknown, "too large, and its sender cannot be told")
            else:
                await asyncio.to_thread(self.spool.lost_retrieving, message_id, str(e))
            return False
        if self._keeps and item.final_recipient not in self.ours:
            await self._leave(item, f"too large, for another organisation {item.final_recipient}")
            return False
        log.warning(
            "a message too large to take; it will be answered REJECTED too-long",
            ebms_id=message_id,
            size=e.size,
            sender=item.original_sender,
        )
        return await self._store(_received(item, action=OVERSIZE_ACTION))

    async def _leave(self, item: Retrieved, why: str) -> None:
        """Record a message left at the access point (none of its content): it is not
        retrieved again, nor marked downloaded, by any bridge on this spool."""
        record = _received(item, payload=b"")
        await asyncio.to_thread(self.spool.store_received, record, "left")
        log.info("left at the access point", ebms_id=item.message_id, why=why)

    async def _acknowledge(self, message_id: str) -> None:
        """Tell the access point a stored message may go; if it cannot be told now, the
        message is still listed next round and told then."""
        try:
            await self.access_point.acknowledge(message_id)
        except (TemporaryFailure, PermanentFailure) as e:
            failures = self._unacknowledged.get(message_id, 0) + 1
            self._unacknowledged[message_id] = failures
            alert = failures % ACKNOWLEDGE_ALERT == 0
            (log.error if alert else log.warning)(
                ("alert: " if alert else "")
                + "access point: cannot mark a stored message downloaded; will try again",
                id=message_id,
                failures=failures,
                error=str(e),
            )
            counters.ACCESS_POINT_ERRORS.labels("acknowledge").inc()
            return
        self._unacknowledged.pop(message_id, None)


def _received(item: Retrieved, **changes: Any) -> Received:
    """The spool's record of what the access point handed over (with `changes`)."""
    return replace(
        Received(
            id=item.message_id,
            action=item.action,
            original_sender=item.original_sender,
            final_recipient=item.final_recipient,
            conversation_id=item.conversation_id,
            payload=item.payload,
        ),
        **changes,
    )


def recovered(ebms_id: str, payload: bytes) -> Received:
    """An envelope an administrator downloaded from the access point, as if retrieved:
    parties and document type read from the XHE (the inbound stage verifies them all).
    Raise ValueError when it is not an XHE envelope."""
    try:
        root = parse(payload, max_bytes=MAX_ENVELOPE_BYTES)
    except UnsafeXML as e:
        raise ValueError(f"not an XHE envelope: {e}") from None
    envelope_id, from_party, to_party = xhe.identity(root)
    if not (envelope_id and from_party and to_party):
        raise ValueError("not an XHE envelope with an ID and both parties")
    document = KVITTENS_DOCUMENT_ID if xhe.carries_kvittens(root) else MESSAGE_DOCUMENT_ID
    action = f"{DOCUMENT_ID_SCHEME}::{document}"
    return Received(ebms_id, action, from_party, to_party, None, payload)
