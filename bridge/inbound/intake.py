"""Taking envelopes from the access point: each one is stored before anything else.

Domibus marks a retrieved message downloaded and, under Digg's P-Mode
(`retention_downloaded=0`), deletes it at once, so the window between retrieve and fsync
is kept as small as the code allows: nothing but the write happens in between.

Operators should configure a retention above zero. Every MessageId is noted durably
before it is retrieved, so after a crash between retrieve and store the bridge knows what
it was fetching and retrieves it again, which a retention allows (the access point no
longer lists a downloaded message as pending). With retention 0 such a message is gone at
the access point; that is logged as an error naming its MessageId.
"""

import asyncio

import structlog

from ..plugins import AccessPoint, PermanentFailure, TemporaryFailure, UnreadableRetrieval
from ..spool import Received, Spool

log = structlog.get_logger(__name__)


async def fetch_once(access_point: AccessPoint, spool: Spool, limit: int = 100) -> int:
    """Retrieve up to `limit` pending envelopes into the spool; how many were new."""
    try:
        pending = await access_point.pending()
    except TemporaryFailure as e:
        log.warning("access point: cannot list pending messages", error=str(e))
        return 0
    new = 0
    noted = await asyncio.to_thread(spool.note_retrieving, pending[:limit])
    for message_id in noted:
        try:
            item = await access_point.retrieve(message_id)
        except TemporaryFailure as e:
            log.warning(
                "access point: retrieve failed, will try again", id=message_id, error=str(e)
            )
            continue
        except UnreadableRetrieval as e:  # kept as it came, for an administrator
            log.error(
                "access point: retrieved message unreadable; kept", id=message_id, error=str(e)
            )
            unreadable = Received(message_id, "", "", "", None, e.raw)
            await asyncio.to_thread(spool.store_received, unreadable, "unreadable")
            continue
        except PermanentFailure as e:  # gone: nothing of it can be kept
            log.error("access point: message could not be retrieved", id=message_id, error=str(e))
            await asyncio.to_thread(spool.forget_retrieving, message_id)
            continue
        stored = await asyncio.to_thread(
            spool.store_received,
            Received(
                id=item.message_id,
                action=item.action,
                original_sender=item.original_sender,
                final_recipient=item.final_recipient,
                conversation_id=item.conversation_id,
                payload=item.payload,
            ),
        )
        new += stored
    return new
