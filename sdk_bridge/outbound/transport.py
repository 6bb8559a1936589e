"""Following a submitted message at the access point until it has left.

A submission only says the access point has the message. Its status says whether it
reached the receiving access point: ACKNOWLEDGED is the AS4 receipt. SEND_FAILURE with
EBMS:0004 / NOT_SERVICED means the receiving access point does not serve that
organisation: a permanent failure. Any other SEND_FAILURE (the receiving access point did
not answer) is sent again, after a fresh SMP/CertPub lookup, as a new SDK message: the
access point refuses its MessageId for good, and the ebMS MessageId is the XHE ID is the
SDK messageId. The old id stays findable, so a kvittens for it still counts.

The status is asked only of messages whose kvittens has not come: first when the worker
said (`OutboundSettings.first_look`, in the delivery's `next_attempt_at`), then with pauses
that grow with its age, up to MAX_WAIT. A busy bridge does not ask the access point about
every message every round.
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from ..plugin import (
    ACKNOWLEDGED,
    DELIVERED_STATUSES,
    NOT_SERVICED,
    SEND_FAILURE,
    AccessPoint,
    TemporaryFailure,
    describe_errors,
)
from ..runtime.concurrently import each
from ..spool import Delivery, Spool, State
from .outcomes import Event, Notify, settle

log = structlog.get_logger(__name__)

MAX_RESENDS = 3
MAX_WAIT = timedelta(minutes=15)  # between two looks at one submitted message


async def follow(
    access_point: AccessPoint,
    spool: Spool,
    notify: Notify | None,
    lifetime: timedelta = timedelta(days=5),
    resend_after: timedelta = timedelta(seconds=30),
) -> None:
    """Ask the access point about the submitted deliveries it has not confirmed yet
    whose look is due."""
    now = datetime.now(UTC)
    waiting = [
        delivery
        for delivery in await asyncio.to_thread(spool.deliveries, State.SUBMITTED, due=now)
        if delivery.notes.transport != ACKNOWLEDGED
    ]
    await each(
        waiting,
        lambda delivery: _follow_one(access_point, spool, notify, delivery, lifetime, resend_after),
    )


async def _follow_one(
    access_point: AccessPoint,
    spool: Spool,
    notify: Notify | None,
    delivery: Delivery,
    lifetime: timedelta,
    resend_after: timedelta,
) -> None:
    # What is learnt about this SDK messageId counts only while the delivery still has it
    # (another instance may have sent it again as a new one meanwhile).
    def still(now: Delivery) -> bool:
        return now.sdk_message_id == delivery.sdk_message_id

    try:
        status = await access_point.status(delivery.sdk_message_id)
        if status in DELIVERED_STATUSES:
            await asyncio.to_thread(
                spool.transition,
                delivery.id,
                {State.SUBMITTED},
                when=still,
                notes={"transport": ACKNOWLEDGED},
                # nothing more to ask: looked at again only when the sweep would fail it
                next_attempt_at=delivery.created_at + lifetime,
            )
            return
        if status != SEND_FAILURE:
            await _look_later(spool, delivery, still)  # still on its way
            return
        errors = await access_point.errors(delivery.sdk_message_id)
    except TemporaryFailure as e:
        log.warning("access point: status unknown for now", **delivery.ids(), error=str(e))
        await _look_later(spool, delivery, still)
        return
    details = describe_errors(errors)
    not_serviced = NOT_SERVICED in details
    resends = delivery.notes.resends
    young = datetime.now(UTC) - delivery.created_at < lifetime
    if not not_serviced and resends < MAX_RESENDS and young:
        resent = await asyncio.to_thread(
            spool.transition,
            delivery.id,
            {State.SUBMITTED},
            new_sdk_message_id=True,
            when=still,
            state=State.QUEUED,
            next_attempt_at=datetime.now(UTC) + resend_after,
            last_error=f"the access point could not send it ({details})",
            notes={"transport": None, "resends": resends + 1},
        )
        if resent is not None:
            log.warning(
                "send failure: sending again as a new SDK message",
                old=delivery.sdk_message_id,
                new=resent.sdk_message_id,
            )
        return
    reason = (
        "the receiving access point does not serve this organisation"
        if not_serviced
        else "the access point could not send it"
    ) + f" ({details})"
    log.warning("send failure at the access point", **delivery.ids(), reason=reason)
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
        when=still,
        notes={"transport": SEND_FAILURE},
    )


async def _look_later(spool: Spool, delivery: Delivery, still: Callable[[Delivery], bool]) -> None:
    """The next look after a pause as long as the message is old, up to MAX_WAIT."""
    now = datetime.now(UTC)
    pause = min(MAX_WAIT, max(now - delivery.created_at, timedelta(seconds=1)))
    await asyncio.to_thread(
        spool.transition, delivery.id, {State.SUBMITTED}, when=still, next_attempt_at=now + pause
    )
