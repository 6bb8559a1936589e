"""The admin port: /metrics (Prometheus), /healthz (alive) and /readyz (fit for work).

Plain HTTP on loopback by default, as Postfix's and Dovecot's own status ports are: it
says nothing secret, but it is for the machine's monitoring agent, not the network.
/readyz answers 503 with one line per problem: the spool cannot be read, the access
point has not answered lately, or a certificate expires within the warning period.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST

from ..spool import Spool
from ..spool.room import room_wanted
from . import metrics
from .checks import expiring

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request
MAX_HEADER_LINES = 100


@dataclass
class Health:
    """What /readyz checks; the intake stage reports each time it reached the access point."""

    spool: Spool
    certificates: dict[str, x509.Certificate]  # what it is ("signing", …) -> certificate
    warning: timedelta  # a certificate expiring sooner makes the bridge not ready
    access_point_grace: timedelta  # how long the access point may stay silent
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    access_point_reached: datetime | None = None

    def reached_access_point(self) -> None:
        self.access_point_reached = datetime.now(UTC)

    def problems(self) -> list[str]:
        """Why the bridge is not ready; empty when it is (reads the spool: off the loop)."""
        now = datetime.now(UTC)
        found = []
        try:
            self.spool.queue_depths()
        except Exception as e:  # any failure to read it means it is not usable
            found.append(f"spool: cannot be read ({type(e).__name__}: {e})")
        needed = room_wanted(self.spool)
        if needed is not None:
            found.append(
                "spool: its disk is nearly full; nothing is taken from the access point until"
                f" {needed // 1_000_000} MB are free"
            )
        since = self.access_point_reached or self.started
        if now - since > self.access_point_grace:
            found.append(
                "access point: not reached since "
                + (since.isoformat(timespec="seconds") if self.access_point_reached else "start")
            )
        return found + expiring(self.certificates, self.warning)


async def serve(host: str, port: int, health: Health) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path = await asyncio.wait_for(_request_path(reader), REQUEST_TIMEOUT)
            status, content_type, body = await _answer(path, health)
        except (TimeoutError, ValueError, ConnectionError):
            status, content_type, body = "400 Bad Request", "text/plain", b"bad request\n"
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


async def _request_path(reader: asyncio.StreamReader) -> str:
    line = (await reader.readline()).decode("latin-1")
    method, path, _ = line.split(" ", 2)
    for _ in range(MAX_HEADER_LINES):  # the headers: read and ignored
        if (await reader.readline()) in (b"\r\n", b"\n", b""):
            break
    if method != "GET":
        raise ValueError(method)
    return path.split("?", 1)[0]


async def _answer(path: str, health: Health) -> tuple[str, str, bytes]:
    if path == "/healthz":
        return "200 OK", "text/plain", b"ok\n"
    if path == "/metrics":
        return "200 OK", CONTENT_TYPE_LATEST, await asyncio.to_thread(metrics.exposition)
    if path == "/readyz":
        problems = await asyncio.to_thread(health.problems)
        if problems:
            text = "".join(f"{problem}\n" for problem in problems)
            return "503 Service Unavailable", "text/plain", text.encode()
        return "200 OK", "text/plain", b"ready\n"
    return "404 Not Found", "text/plain", b"not found: /metrics, /healthz, /readyz\n"
