"""The crypto workers on their own: each has read what the tasks carry before its first
task, answers and errors come back, a worker that dies fails only the task it held and is
replaced, a cancelled caller does not leave an answer behind for the next, and closing
ends every worker. (That a worker ends with a bridge killed outright is in test_daemon.)"""

import asyncio
import operator
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sdk_bridge.lab.testpki import Identity
from sdk_bridge.runtime.workers import BrokenWorker, CryptoWorkers
from sdk_bridge.sdk import keys


def with_workers(
    count: int, test: Callable[[CryptoWorkers], Awaitable[None]], *carried: object
) -> None:
    async def go() -> None:
        workers = CryptoWorkers(count, *carried)
        await workers.start()
        try:
            await asyncio.wait_for(test(workers), 60)
        finally:
            await workers.close()

    asyncio.run(go())


def test_each_worker_has_loaded_the_keys_before_its_first_task(alice: Identity) -> None:
    pair = keys.KeyPair(alice.key, alice.cert)

    async def test(workers: CryptoWorkers) -> None:
        loaded = dict(await asyncio.gather(*(workers.run(_keys_loaded) for _ in range(4))))
        assert len(loaded) == 2  # both workers answered
        assert set(loaded.values()) == {1}  # each had the key before anything carried it

    with_workers(2, test, pair)


def test_what_a_worker_cannot_read_is_said_at_start() -> None:
    async def go() -> None:
        workers = CryptoWorkers(1, _Unreadable())
        try:
            with pytest.raises(ValueError, match="cannot be read here"):
                await workers.start()
        finally:
            await workers.close()

    asyncio.run(go())


def test_answers_and_errors_come_back_from_the_workers() -> None:
    async def test(workers: CryptoWorkers) -> None:
        pids = set(await asyncio.gather(*(workers.run(os.getpid) for _ in range(8))))
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        assert await workers.run(operator.add, b"x" * 3_000_000, b"y") == b"x" * 3_000_000 + b"y"
        with pytest.raises(ZeroDivisionError) as raised:
            await workers.run(operator.truediv, 1, 0)
        assert "ZeroDivisionError" in "".join(raised.value.__notes__)  # where, in the worker
        assert await workers.run(operator.neg, 5) == -5  # the worker goes on

    with_workers(2, test)


def test_a_worker_that_dies_fails_its_task_only_and_is_replaced() -> None:
    async def test(workers: CryptoWorkers) -> None:
        first = await workers.run(os.getpid)
        with pytest.raises(BrokenWorker):
            await workers.run(os.abort)  # dies holding the task
        second = await workers.run(os.getpid)
        assert second != first
        os.kill(second, signal.SIGKILL)  # dies while free: the next task does not see it
        for _ in range(500):
            if _state(second) in ("Z", None):
                break
            await asyncio.sleep(0.01)
        third = await workers.run(os.getpid)
        assert third not in (first, second)

    with_workers(1, test)


def test_a_cancelled_caller_leaves_no_answer_for_the_next() -> None:
    async def test(workers: CryptoWorkers) -> None:
        pid = await workers.run(os.getpid)
        waiting = asyncio.create_task(workers.run(_sleep_then_neg, 0.3, 1))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await workers.run(operator.neg, 2) == -2  # not the -1 it left behind
        assert await workers.run(os.getpid) == pid  # the same worker, not a new one

    with_workers(1, test)


def test_what_cannot_be_sent_or_read_back_leaves_the_worker_as_it_was() -> None:
    async def test(workers: CryptoWorkers) -> None:
        pid = await workers.run(os.getpid)
        with pytest.raises(TypeError):  # a generator does not pickle: nothing was sent
            await workers.run(operator.neg, (n for n in range(0)))
        with pytest.raises(RuntimeError, match="cannot be read here"):
            await workers.run(_unreadable_answer)
        with pytest.raises(RuntimeError, match="_OddError in a crypto worker"):
            await workers.run(_odd_error)
        os.kill(pid, signal.SIGTERM)  # systemd's stop reaches every process: ignored
        assert await workers.run(os.getpid) == pid

    with_workers(1, test)


def test_after_closing_a_task_fails_as_a_broken_worker() -> None:
    async def go() -> None:
        workers = CryptoWorkers(1)
        starting = asyncio.create_task(workers.start())
        await asyncio.sleep(0)
        await workers.close()  # while the worker starts
        with pytest.raises(BrokenWorker):
            await starting
        with pytest.raises(BrokenWorker):
            await workers.run(os.getpid)

    asyncio.run(asyncio.wait_for(go(), 60))


def test_closing_ends_every_worker() -> None:
    pids: set[int] = set()

    async def test(workers: CryptoWorkers) -> None:
        pids.update(await asyncio.gather(*(workers.run(os.getpid) for _ in range(4))))

    with_workers(2, test)
    assert pids and all(_state(pid) is None for pid in pids)


def _keys_loaded() -> tuple[int, int]:
    """This worker's process id, and how many keys it has loaded."""
    return os.getpid(), keys._keypair_from_der.cache_info().currsize


def _refuse() -> None:
    raise ValueError("cannot be read here")


class _Unreadable:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _refuse, ()


class _OddError(Exception):
    def __init__(self, code: int, text: str) -> None:  # its args are not these: no round trip
        super().__init__(f"{code} {text}")


def _odd_error() -> None:
    raise _OddError(1, "odd")


def _unreadable_answer() -> object:
    return _Refusing()


class _Refusing:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _refuse, ()


def _sleep_then_neg(seconds: float, value: int) -> int:
    import time

    time.sleep(seconds)
    return -value


def _state(pid: int) -> str | None:
    """A process's state letter (Z for a zombie), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
