"""The admin port on its own: /healthz, /readyz with each problem it reports, /metrics."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sdk_bridge.lab.sandbox.ports import free_tcp_port
from sdk_bridge.lab.testpki import TestPKI
from sdk_bridge.ops import admin, metrics
from sdk_bridge.spool import Envelope, RecipientRecord, SQLiteSpool


async def get(port: int, path: str, request: bytes | None = None) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request or f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = (await reader.read()).decode()
    writer.close()
    head, _, body = answer.partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


def run(health: admin.Health, *requests: tuple[str, bytes | None]) -> list[tuple[int, str]]:
    async def go() -> list[tuple[int, str]]:
        port = free_tcp_port()
        server = await admin.serve("127.0.0.1", port, health)
        try:
            return [await get(port, path, raw) for path, raw in requests]
        finally:
            server.close()

    return asyncio.run(go())


def test_ready_only_when_everything_is(pki: TestPKI, tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    soon = pki.issue("expires-soon", not_after=datetime.now(UTC) + timedelta(days=5))
    later = pki.issue("expires-later")
    health = admin.Health(
        spool,
        {"signing": later.cert, "decryption 1": soon.cert},
        warning=timedelta(days=14),
        access_point_grace=timedelta(seconds=60),
        started=datetime.now(UTC) - timedelta(minutes=5),
    )
    (alive, not_ready) = run(health, ("/healthz", None), ("/readyz", None))
    assert alive == (200, "ok\n")
    status, text = not_ready
    assert status == 503
    assert text.splitlines() == [
        "access point: not reached since start",
        f"certificate decryption 1: expires {soon.cert.not_valid_after_utc:%Y-%m-%d} (4 days left)",
    ]
    health.reached_access_point()
    health.certificates.pop("decryption 1")
    assert run(health, ("/readyz", None)) == [(200, "ready\n")]
    spool.close()
    status, text = run(health, ("/readyz", None))[0]
    assert status == 503 and text.startswith("spool: cannot be read")


class Book:
    refreshed_at = None
    refresh_errors = 2


def test_metrics_count_the_queues(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    spool.accept(Envelope("a@kommun.se"), [RecipientRecord("x@y", "0203:b.se", "b.r")], b"x")
    metrics.watch(spool, {}, Book())  # type: ignore[arg-type]
    health = admin.Health(spool, {}, timedelta(0), timedelta(hours=1))
    ((status, text),) = run(health, ("/metrics", None))
    assert status == 200
    depth = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "sdk_bridge_queue_depth"
        for s in family.samples
    }
    assert depth == {(("queue", "outbound"), ("state", "queued")): 1.0}
    assert "sdk_bridge_address_book_refresh_errors_total 2.0" in text


def test_bad_requests(tmp_path: Path) -> None:
    health = admin.Health(SQLiteSpool(tmp_path), {}, timedelta(0), timedelta(hours=1))
    answers = run(
        health,
        ("/", b"POST /metrics HTTP/1.1\r\n\r\n"),
        ("/", b"garbage\r\n\r\n"),
        ("/elsewhere", None),
    )
    assert [status for status, _ in answers] == [400, 400, 404]
