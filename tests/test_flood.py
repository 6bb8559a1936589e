"""Issue 16's flood: 2,000 idle connections from one address (127.0.0.2, which may not even
relay), each saying NOOP every few seconds and coming back when refused, while 200 mails
arrive from 127.0.0.1 at A's running bridge. Every mail gets 250 in normal time, A's admin
port answers /readyz, A keeps polling its access point (every kvittens comes back), and
A's log stays JSON and small."""

import asyncio
import json
import resource
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.sandboxed import FROM_A, TO_B

from sdk_bridge.lab.local import LocalRun, send_mail
from sdk_bridge.lab.sandbox.federation import HOST

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

FLOOD_CONNECTIONS = 2000
FLOOD_SOURCE = "127.0.0.2"
NOOP_SECONDS = 3.0  # an admitted flood connection says NOOP this often
RETRY_SECONDS = 5.0  # a refused one comes back after this
MAILS = 200
MAX_LOG_BYTES = 2_000_000


class Flood:
    """The flood's clients, on an event loop of their own in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self.greetings: dict[bytes, int] = {}  # the first three bytes of each greeting
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    def __enter__(self) -> "Flood":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(60)
        self.loop.close()

    async def _run(self) -> None:
        clients = [asyncio.create_task(self._client(n)) for n in range(FLOOD_CONNECTIONS)]
        await self.stopping.wait()
        for client in clients:
            client.cancel()
        await asyncio.gather(*clients, return_exceptions=True)

    async def _client(self, number: int) -> None:
        await asyncio.sleep(number / 1000)  # 2,000 connections within two seconds
        while not self.stopping.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection(
                    HOST, self.port, local_addr=(FLOOD_SOURCE, 0)
                )
                greeting = await reader.readline()
                self.greetings[greeting[:3]] = self.greetings.get(greeting[:3], 0) + 1
                while greeting.startswith(b"220") and not self.stopping.is_set():
                    await asyncio.sleep(NOOP_SECONDS)
                    writer.write(b"NOOP\r\n")
                    if not await reader.readline():
                        break  # cut: the idle timer ran out after the junk allowance
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RETRY_SECONDS)


def get(port: int, path: str) -> tuple[int, float]:
    """The status of an admin page and how long it took."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as answer:
            return answer.status, time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, time.monotonic() - started


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalRun]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < FLOOD_CONNECTIONS + 500:
        pytest.skip(f"the file descriptor limit ({hard}) is too low for the flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = LocalRun(tmp_path, key_size=2048, poll_seconds=0.5, log_json=True)
    run.start()
    yield run
    run.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.hostile("SMTP abuse: connection floods")
def test_a_flood_of_idle_connections_does_not_stop_the_bridge(local: LocalRun) -> None:
    a = local.bridges["a"]
    admin = local.bridges["a"].admin_port
    latencies, ready = [], []
    with Flood(a.port) as flood:
        time.sleep(3)  # the flood is in place
        for number in range(MAILS):
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = FROM_A, TO_B, f"Under flod {number}"
            mail.set_content("Hej!")
            started = time.monotonic()
            send_mail((HOST, a.port), "a", FROM_A, TO_B, mail)
            latencies.append(time.monotonic() - started)
            if number % 20 == 0:
                ready.append(get(admin, "/readyz"))
        deadline = time.monotonic() + 180
        while len(local.kvittens("a")) < MAILS:  # A polls its access point for them
            assert time.monotonic() < deadline, f"{len(local.kvittens('a'))} kvittens came back"
            time.sleep(1)
        greetings = dict(flood.greetings)
    assert greetings.get(b"421", 0) > FLOOD_CONNECTIONS / 2, greetings  # refused, not served
    assert greetings.get(b"220", 0) >= 50
    assert statistics.median(latencies) < 1.0, latencies
    assert max(latencies) < 10.0, latencies
    assert all(status == 200 and seconds < 5 for status, seconds in ready), ready
    assert set(local.kvittens("a").values()) == {"ACCEPTED"}
    assert a.log is not None
    log = a.log.read_bytes()
    assert len(log) < MAX_LOG_BYTES
    lines = log.decode().splitlines()
    assert all(json.loads(line) for line in lines)  # nothing but JSON, no tracebacks
    refusals = [json.loads(line) for line in lines if "connections refused" in line]
    assert refusals and all(r["count"] >= 1 for r in refusals)
