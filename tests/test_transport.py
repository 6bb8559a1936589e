"""Issue 18: a submitted message's status is asked when its look is due, not every round:
a kvittens usually comes first, and a busy bridge must not ask about every message."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.spools import ENVELOPE, RECIPIENTS

from sdk_bridge.outbound.transport import MAX_WAIT, follow
from sdk_bridge.spool import SQLiteSpool, State


class OnItsWay:
    """An access point whose every message is still being sent; counts the questions."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def status(self, message_id: str) -> str:
        self.asked.append(message_id)
        return "SEND_ENQUEUED"


def test_the_status_is_asked_when_due_and_then_after_a_growing_pause(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    spool.accept(ENVELOPE, RECIPIENTS, b"Subject: x\r\n\r\ntext")
    due, later = spool.deliveries()
    now = datetime.now(UTC)
    spool.transition(due.id, {State.QUEUED}, state=State.SUBMITTED, next_attempt_at=now)
    spool.transition(
        later.id, {State.QUEUED}, state=State.SUBMITTED, next_attempt_at=now + timedelta(hours=1)
    )
    access_point = OnItsWay()
    try:
        asyncio.run(follow(access_point, spool, None))  # type: ignore[arg-type]
        assert access_point.asked == [due.sdk_message_id]  # the other's look is not due
        asked_again_at = spool.delivery(due.id).next_attempt_at
        assert now < asked_again_at <= datetime.now(UTC) + MAX_WAIT
        asyncio.run(follow(access_point, spool, None))  # type: ignore[arg-type]
        assert access_point.asked == [due.sdk_message_id]  # not again at once
        assert spool.delivery(due.id).state is State.SUBMITTED
    finally:
        spool.close()
