"""The crypto worker processes: RSA private-key work in processes of their own (this
module, run by `python -m`), away from the event loop.

Each worker is a process holding one end of a socket pair. The event loop writes a task (a
function and its arguments, pickled) to a free worker's socket and reads the answer from the
same socket. No thread stands in between: concurrent.futures' ProcessPoolExecutor passes
each task through a feeder and a manager thread, and with those hand-overs a task cost the
bridge 0.26-0.30 ms of CPU against 0.14-0.16 ms here (16 KB tasks, measured alone).

A worker that dies (killed, out of memory) fails the task it held with `BrokenWorker`; the
next task starts a new one, which runs the code installed then (after an upgrade, restart
the bridge, as always). A worker ends with the bridge: its read returns nothing once the
bridge's end of the socket is closed, by a SIGKILL too. It ignores SIGINT and SIGTERM
(systemd sends SIGTERM to every process of the service): the bridge stops it when the work
in flight is done.
"""

import asyncio
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from . import memory

T = TypeVar("T")

_LENGTH = struct.Struct("!Q")
LARGE_MESSAGE_BYTES = 2_000_000
STOP_SECONDS = 5.0


class BrokenWorker(BrokenExecutor):
    """The worker ended before it answered; the task may be tried again."""


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


class CryptoWorkers:
    """`count` worker processes, each doing one task at a time.

    `carried` is what the tasks will carry (their functions, the keys): each worker reads
    it once as it starts. Reading a function imports its module, and reading a key loads
    and checks it, which costs more than a hundred signatures; done then, neither falls on
    the first messages (nor, in the bench, into the figures)."""

    def __init__(self, count: int, *carried: object) -> None:
        self.count = count
        self._carried = carried
        # A free worker, or None for a place whose worker is still to be started.
        self._free: asyncio.Queue[_Worker | None] = asyncio.Queue()
        for _ in range(count):
            self._free.put_nowait(None)
        self._busy: set[asyncio.Task[Any]] = set()
        self._started: set[_Worker] = set()
        self._closed = False

    async def start(self) -> None:
        """Start every worker now, while nothing waits for them."""
        taken = await asyncio.gather(*(self._take() for _ in range(self.count)))
        for worker in taken:
            self._free.put_nowait(worker)

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in a worker. Cancelling the caller does not cancel the task:
        the worker finishes it, and its answer is read and dropped before the worker takes
        another."""
        task = pickle.dumps((function, args), pickle.HIGHEST_PROTOCOL)  # before a worker
        worker = await self._take()
        exchange = asyncio.create_task(self._exchange(worker, task))
        del task
        self._busy.add(exchange)
        exchange.add_done_callback(self._busy.discard)
        return await asyncio.shield(exchange)

    async def _take(self) -> _Worker:
        """A free worker, started first where its place has none (or it died while free)."""
        if self._closed:
            raise BrokenWorker("the crypto workers are stopping")
        worker = await self._free.get()
        try:
            if worker is not None and worker.process.poll() is not None:
                await self._ended(worker)
                worker = None
            return worker or await self._start_worker()
        except BaseException:
            self._free.put_nowait(None)
            raise

    async def _exchange(self, worker: _Worker, task: bytes) -> Any:
        """One task, after which the worker is free again (or its place, if it ended)."""
        try:
            ok, value = await self._ask(worker, task)
        except BaseException:
            self._free.put_nowait(None)
            raise
        self._free.put_nowait(worker)
        if not ok:
            raise value
        return value

    async def _ask(self, worker: _Worker, task: bytes) -> tuple[bool, Any]:
        """Whether the task succeeded, and its result or exception. A worker that ends
        meanwhile, or whose exchange is cancelled (the bridge stops), is ended."""
        try:
            worker.writer.write(_LENGTH.pack(len(task)) + task)  # one send, not two
            del task
            await worker.writer.drain()
            head = await worker.reader.readexactly(_LENGTH.size)
            answer = await worker.reader.readexactly(_size(head))
        except (OSError, asyncio.IncompleteReadError) as e:
            await self._ended(worker)
            raise BrokenWorker(f"a crypto worker ended before it answered ({e!r})") from None
        except BaseException:
            await self._ended(worker)
            raise
        try:
            loaded: tuple[bool, Any] = pickle.loads(answer)
        except Exception as e:  # the worker is fine, and the next answer is whole
            return False, RuntimeError(f"a crypto worker's answer cannot be read here: {e!r}")
        return loaded

    async def _start_worker(self) -> _Worker:
        ours, theirs = socket.socketpair()
        process = None
        try:
            with theirs:
                process = subprocess.Popen(
                    # -P: not the working directory first on the path, as -m would put it.
                    [sys.executable, "-P", "-m", __name__, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    # The same modules as the bridge's, wherever they were found.
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))},
                )
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            if process is not None:
                process.kill()
                await asyncio.to_thread(process.wait)
            raise
        worker = _Worker(process, reader, writer)
        self._started.add(worker)
        carried = pickle.dumps((ready, self._carried), pickle.HIGHEST_PROTOCOL)
        ok, error = await self._ask(worker, carried)
        if not ok:  # a key that does not load there: every task would fail the same way
            await self._ended(worker)
            raise error
        if self._closed:  # closed while it started
            await self._ended(worker)
            raise BrokenWorker("the crypto workers are stopping")
        return worker

    async def _ended(self, worker: _Worker) -> None:
        """Close the worker's socket and wait for it to end (it does once it reads the
        end), or kill it; once only, however many callers find it ended."""
        if worker not in self._started:
            return
        self._started.discard(worker)
        worker.writer.close()
        try:
            await asyncio.to_thread(worker.process.wait, STOP_SECONDS)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            await asyncio.to_thread(worker.process.wait)

    async def close(self) -> None:
        """Stop the workers: each ends when it reads the end of its socket, after the task
        it may still be doing. Tasks asked for afterwards fail with BrokenWorker."""
        self._closed = True
        for exchange in list(self._busy):
            exchange.cancel()
        await asyncio.gather(*self._busy, return_exceptions=True)
        while self._started:
            await asyncio.gather(*(self._ended(worker) for worker in list(self._started)))


async def run(
    workers: CryptoWorkers | None, function: Callable[..., T], *args: object, size: int = 0
) -> T:
    """Seal or open a message of `size` bytes in a crypto worker, or in a thread of this
    process for a large one (or where there are no workers, as in tests). An ordinary
    message's cost is its RSA work, which the workers spread over the cores; a large one's
    is AES, base64 and c14n over its bytes, and in a worker it would also be pickled there
    and back: copies of its size in two processes at once."""
    if workers is None or size > LARGE_MESSAGE_BYTES:
        return await asyncio.to_thread(function, *args)
    return await workers.run(function, *args)


def ready(*carried: object) -> None:
    """Nothing more than reading `carried`, which the worker did to call this."""


def _serve(sock: socket.socket) -> None:
    """A worker's life: read a task, do it, write its answer, until the bridge's end of
    `sock` closes. Large buffers go back to the system at once (`memory`). Interrupts and
    terminations are the bridge's to act on (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    memory.return_large_buffers()
    with sock:
        while (head := _read(sock, _LENGTH.size)) and (task := _read(sock, _size(head))):
            try:
                function, args = pickle.loads(task)
                del task
                answer = pickle.dumps((True, function(*args)), pickle.HIGHEST_PROTOCOL)
                del function, args
            except Exception as e:
                answer = _failure(e)
            try:
                sock.sendall(_LENGTH.pack(len(answer)) + answer)
            except OSError:  # the bridge has gone
                return


def _failure(error: Exception) -> bytes:
    """An exception for the bridge to raise, with where it happened here; if it does not
    come back whole from a pickle (an exception whose arguments are not its fields), a
    RuntimeError that names it."""
    error.add_note("".join(traceback.format_exception(error)).rstrip())
    try:
        answer = pickle.dumps((False, error), pickle.HIGHEST_PROTOCOL)
        pickle.loads(answer)
        return answer
    except Exception:
        named = RuntimeError(f"{type(error).__name__} in a crypto worker: {error}")
        return pickle.dumps((False, named), pickle.HIGHEST_PROTOCOL)


def _size(head: bytes) -> int:
    (size,) = _LENGTH.unpack(head)
    return int(size)


def _read(sock: socket.socket, size: int) -> bytes:
    """`size` bytes, or b"" if the bridge closed its end first."""
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return b""
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":  # a worker, as CryptoWorkers starts it
    _serve(socket.socket(fileno=int(sys.argv[1])))
