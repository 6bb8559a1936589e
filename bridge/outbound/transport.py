"""Following a submitted message at the access point until it has left.

A submission only says the access point has the message. Its status says whether it
reached the receiving access point: ACKNOWLEDGED is the AS4 receipt. SEND_FAILURE with
EBMS:0004 / NOT_SERVICED means the receiving access point does not serve that
organisation: a permanent failure. Any other SEND_FAILURE is also final for this
MessageId (the access point refuses it again as a duplicate), so the sender is told.
"""

import asyncio

import structlog

from ..plugins import AccessPoint, TemporaryFailure
from ..spool import Spool, State
from .outcomes import Event, Notify, settle

log = structlog.get_logger(__name__)

SENT = "ACKNOWLEDGED"
FAILED = "SEND_FAILURE"


async def follow(access_point: AccessPoint, spool: Spool, notify: Notify) -> None:
    """Ask the access point about every submitted delivery it has not confirmed yet."""
    for delivery in await asyncio.to_thread(spool.deliveries, State.SUBMITTED):
        if delivery.notes.get("transport") == SENT:
            continue
        try:
            status = await access_point.status(delivery.sdk_message_id)
            if status == SENT:
                await asyncio.to_thread(
                    spool.transition, delivery.id, {State.SUBMITTED}, notes={"transport": SENT}
                )
                continue
            if status != FAILED:
                continue  # still on its way
            errors = await access_point.errors(delivery.sdk_message_id)
        except TemporaryFailure as e:
            log.warning(
                "access point: status unknown for now", id=delivery.sdk_message_id, error=str(e)
            )
            continue
        details = (
            "; ".join(
                f"{e.get('errorCode', '')} {e.get('errorDetail', '')}".strip() for e in errors
            )
            or "no details"
        )
        not_serviced = "NOT_SERVICED" in details
        reason = (
            "the receiving access point does not serve this organisation"
            if not_serviced
            else "the access point could not send it"
        ) + f" ({details})"
        log.warning("send failure at the access point", id=delivery.sdk_message_id, reason=reason)
        await settle(
            spool,
            notify,
            delivery,
            {State.SUBMITTED},
            Event.FAILED,
            "5.1.1" if not_serviced else "5.4.0",
            reason,
            state=State.FAILED,
            last_error=reason,
            notes={"transport": FAILED},
        )
