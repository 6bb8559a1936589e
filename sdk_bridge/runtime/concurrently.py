"""Working through a list of items a few at a time.

Most per-item work in the stages is a round trip (the access point, the disk, a crypto
worker), so doing one item after another leaves the machine idle while a backlog grows.
A bound keeps one busy round from opening hundreds of connections at once.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

AT_ONCE = 8  # items in flight; about what one access point connection pool serves well


async def each(
    items: Iterable[T], work: Callable[[T], Awaitable[object]], at_once: int = AT_ONCE
) -> None:
    """Run `work` for every item, at most `at_once` at a time; the first exception is
    raised once all have finished (each item's work handles its own expected failures)."""
    gate = asyncio.Semaphore(at_once)

    async def one(item: T) -> None:
        async with gate:
            await work(item)

    results = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
