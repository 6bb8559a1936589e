"""The bridge's jobs, each in a loop of its own, as Postfix gives each job its own service.

A stage runs one round of its job when another stage has left it work (`wake`), every
`every` seconds (retries fall due, the access point has news), and at once again while a
round says more is waiting. A round that raises is logged and the next one is tried. A
slow peer holds up only the stage that talks to it: a smart host that hangs delays
delivery reports, never the kvittens a sender is waiting for.
"""

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

# One round of a stage's job; True when more is waiting than one round takes.
Round = Callable[[], Awaitable[bool | None]]


class Stage:
    def __init__(self, name: str, round: Round, every: float, *, interruptible: bool = False):
        """`interruptible`: a round may be dropped midway when the bridge stops, because
        what it did is recorded step by step and the rest is redone (a report stays owed
        until the smart host took it); other stages' rounds are let finish."""
        self.name = name
        self.round = round
        self.every = every
        self.interruptible = interruptible
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Work is waiting for this stage: a round now rather than after `every`."""
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set; the round in flight then finishes."""
        while not stop.is_set():
            self._woken.clear()
            try:
                more = await self.round()
            except Exception:  # a bug: must not stop the bridge, nor this stage
                log.exception("a round of a stage failed; trying again", stage=self.name)
                more = False
            if not more:
                await _first_of(stop, self._woken, self.every)


async def _first_of(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    waiting = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
    await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        task.cancel()
