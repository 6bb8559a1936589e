"""A stage of the daemon: rounds when woken, on its timer, at once while more waits; a
round that fails is logged and the stage goes on."""

import asyncio

from sdk_bridge.runtime.stages import Stage


def test_a_stage_rounds_when_woken_while_more_waits_and_after_a_failure() -> None:
    rounds: list[str] = []
    backlog = ["a", "b", "c"]

    async def round() -> bool:
        rounds.append(backlog.pop(0) if backlog else "idle")
        if rounds[-1] == "b":
            raise RuntimeError("a bug in one round")
        return bool(backlog)

    async def run() -> None:
        stop = asyncio.Event()
        stage = Stage("test", round, every=3600)  # within the timeout, only a wake brings one
        running = asyncio.create_task(stage.run(stop))
        async with asyncio.timeout(5):
            for expected in (["a", "b"], ["a", "b", "c"], ["a", "b", "c", "idle"]):
                while len(rounds) < len(expected):
                    await asyncio.sleep(0.01)
                assert rounds == expected
                stage.wake()  # a's "more" brought b; b failed, and the stage went on waiting
            stop.set()
            await running

    asyncio.run(run())


def test_a_stopped_stage_ends_without_waiting_for_its_timer() -> None:
    async def round() -> None:
        return None

    async def run() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(Stage("test", round, every=3600).run(stop))
        await asyncio.sleep(0.05)
        stop.set()
        async with asyncio.timeout(2):
            await running

    asyncio.run(run())
