"""Taking envelopes from the access point: each one is stored before anything else.

Domibus marks a retrieved message downloaded and, under Digg's P-Mode
(`retention_downloaded=0`), deletes it at once, so the window between retrieve and fsync
is kept as small as the code allows: nothing but the write happens in between.

Every MessageId is noted durably before it is retrieved. Domibus gives a message out once:
retrieved, it is marked downloaded and no longer listed or retrievable. So a bridge killed
between retrieve and store finds the noted MessageId unanswerable after its restart; it
records the message as `lost` and raises an alert naming it. Operators should configure a
retention above zero: the payload then stays at the access point for that long, and an
administrator downloads it there and hands it over with `sdk-bridge inbound import`. With
retention 0 (Digg's P-Mode) it is gone.
"""

import asyncio

import structlog

from .. import metrics
from ..concurrently import each
from ..plugins import AccessPoint, PermanentFailure, TemporaryFailure, UnreadableRetrieval
from ..sdk import xhe
from ..sdk.names import DOCUMENT_ID_SCHEME, KVITTENS_DOCUMENT_ID, MESSAGE_DOCUMENT_ID
from ..sdk.sealing import MAX_ENVELOPE_BYTES
from ..sdk.xmlsafe import UnsafeXML, parse
from ..spool import STORAGE_ERRORS, Received, Spool

log = structlog.get_logger(__name__)

# Envelopes retrieved a round (8 at a time): even against an access point that hangs until
# each one's timeout, a round stays well within the spool's lease on them.
RETRIEVALS = 48


class Intake:
    """Fetching from one access point into one spool. An envelope that cannot be stored
    once retrieved (a full disk) is held in memory and stored first next round; nothing
    more is retrieved until it is."""

    def __init__(self, access_point: AccessPoint, spool: Spool) -> None:
        self.access_point = access_point
        self.spool = spool
        self.unstored: dict[str, Received] = {}
        self.backlog = False  # the last look found more pending than one round takes

    async def fetch(self, limit: int = RETRIEVALS) -> int | None:
        """Retrieve up to `limit` pending envelopes into the spool; how many were new, or
        None when the access point could not be asked or the spool cannot take more."""
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
            pending = await self.access_point.pending()
        except TemporaryFailure as e:
            log.warning("access point: cannot list pending messages", error=str(e))
            metrics.ACCESS_POINT_ERRORS.labels("pending").inc()
            return None
        self.backlog = len(pending) > limit
        noted = await asyncio.to_thread(self.spool.note_retrieving, pending[:limit])
        stored: list[bool] = []

        async def take(message_id: str) -> None:
            stored.append(await self._take(message_id))

        await each(noted, take)
        return new + sum(stored)

    async def _take(self, message_id: str) -> bool:
        """Retrieve one envelope and store it at once; whether it was new."""
        try:
            item = await self.access_point.retrieve(message_id)
        except TemporaryFailure as e:
            log.warning(
                "access point: retrieve failed, will try again", id=message_id, error=str(e)
            )
            metrics.ACCESS_POINT_ERRORS.labels("retrieve").inc()
            return False
        except UnreadableRetrieval as e:  # kept as it came, for an administrator
            log.error(
                "access point: retrieved message unreadable; kept", id=message_id, error=str(e)
            )
            unreadable = Received(message_id, "", "", "", None, e.raw)
            await asyncio.to_thread(self.spool.store_received, unreadable, "unreadable")
            return False
        except PermanentFailure as e:  # not given out (again): kept on record as lost
            log.error(
                "alert: message lost at the access point; recover it from there during its"
                " retention and run `sdk-bridge inbound import`",
                ebms_id=message_id,
                error=str(e),
            )
            metrics.LOST.inc()
            note = f"the access point no longer gives it out: {e}"
            await asyncio.to_thread(self.spool.lost_retrieving, message_id, note)
            return False
        received = Received(
            id=item.message_id,
            action=item.action,
            original_sender=item.original_sender,
            final_recipient=item.final_recipient,
            conversation_id=item.conversation_id,
            payload=item.payload,
        )
        try:
            return await asyncio.to_thread(self.spool.store_received, received)
        except Exception as e:  # whatever the store says: gone at the access point, keep it
            log.error(
                "alert: a retrieved message cannot be stored; held in memory until it can,"
                " so do not stop the bridge before there is room",
                id=message_id,
                error=str(e),
            )
            self.unstored[received.id] = received
            return False


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
