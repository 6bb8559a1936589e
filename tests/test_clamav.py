"""The ClamAV scanner plugin against a real clamd (tests/support/clamd.py) and a few fake ones."""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.clamd import EICAR, REPORTED, Clamd

from sdk_bridge import plugin
from sdk_bridge.plugin import PluginError, TemporaryFailure
from sdk_bridge_plugins.clamav import ClamAV

WAIT = 20.0  # seconds: the most any test waits for one scan
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, WAIT)

    return asyncio.run(bounded())


def scan(scanner: ClamAV, data: bytes) -> str | None:
    return run(scanner.scan(data))


def where(transport: str, server: Clamd) -> dict[str, Any]:
    if transport == "unix":
        return {"socket": server.socket}
    return {"host": "127.0.0.1", "port": server.port}


@pytest.fixture(scope="module")
def unix(clamd_server: Clamd) -> ClamAV:
    return ClamAV(where("unix", clamd_server) | {"timeout": 10})


@pytest.fixture(scope="module")
def tcp(clamd_server: Clamd) -> ClamAV:
    return ClamAV(where("tcp", clamd_server) | {"timeout": 10})


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for Unix sockets (their paths must stay under ~100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="clamav-") as directory:
        yield Path(directory)


# --- a real clamd -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_eicar_is_found(transport: str, request: pytest.FixtureRequest) -> None:
    scanner: ClamAV = request.getfixturevalue(transport)
    assert scan(scanner, EICAR) == REPORTED


def test_eicar_attached_to_a_mail_is_found(unix: ClamAV) -> None:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@example.se", "b@example.se", "Underlag"
    mail.set_content("Hej!")
    mail.add_attachment(EICAR, "application", "octet-stream", filename="eicar.com")  # base64
    assert scan(unix, mail.as_bytes()) == REPORTED


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
        EICAR[:-1],
    ],
    ids=["empty", "pdf", "eicar-minus-one-byte"],
)
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_clean(transport: str, data: bytes, request: pytest.FixtureRequest) -> None:
    scanner: ClamAV = request.getfixturevalue(transport)
    assert scan(scanner, data) is None


def test_large_clean_message(unix: ClamAV) -> None:
    data = b"%PDF-1.7\n" + bytes(range(256)) * (20 * 1024 * 1024 // 256)
    assert scan(unix, data) is None


def test_parallel_scans(unix: ClamAV) -> None:
    async def many() -> list[str | None]:
        return await asyncio.gather(*(unix.scan(EICAR if i % 2 else b"clean") for i in range(8)))

    assert run(many()) == [None, REPORTED] * 4


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_above_clamd_stream_max_length_is_a_temporary_failure(
    transport: str, clamd_server: Clamd
) -> None:
    """clamd answers and hangs up mid-stream; its answer is read for the reason."""
    settings = where(transport, clamd_server) | {"max_bytes": 2 * clamd_server.stream_max_length}
    scanner = ClamAV(settings)
    with pytest.raises(TemporaryFailure, match=r"INSTREAM size limit exceeded\..*StreamMaxLength"):
        scan(scanner, bytes(clamd_server.stream_max_length + 1024 * 1024))
    assert scan(scanner, EICAR) == REPORTED  # clamd still serves


def test_above_max_bytes_is_a_temporary_failure(clamd_server: Clamd) -> None:
    scanner = ClamAV({"socket": clamd_server.socket, "max_bytes": 1000})
    assert scan(scanner, bytes(1000)) is None
    with pytest.raises(TemporaryFailure, match="max_bytes"):
        scan(scanner, bytes(1001))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_clamd_gone_is_a_temporary_failure(how: signal.Signals, short_dir: Path) -> None:
    with Clamd(short_dir) as server:
        unix = ClamAV({"socket": server.socket, "timeout": 5})
        tcp = ClamAV({"host": "127.0.0.1", "port": server.port, "timeout": 5})
        assert scan(unix, EICAR) == REPORTED
        assert server.process is not None
        server.process.send_signal(how)
        server.process.wait(10)
        # SIGTERM removes the socket file; SIGKILL leaves it behind, refusing connections.
        for scanner in (unix, tcp):
            with pytest.raises(TemporaryFailure, match="unreachable"):
                scan(scanner, EICAR)


def test_wrong_socket_path_is_a_temporary_failure(short_dir: Path) -> None:
    scanner = ClamAV({"socket": str(short_dir / "no-such.sock")})
    with pytest.raises(TemporaryFailure, match="unreachable"):
        scan(scanner, b"clean")


def test_nothing_listening_on_tcp_is_a_temporary_failure() -> None:
    with socket.socket() as s:  # a port that is bound but not listening refuses connections
        s.bind(("127.0.0.1", 0))
        scanner = ClamAV({"host": "127.0.0.1", "port": s.getsockname()[1]})
        with pytest.raises(TemporaryFailure, match="unreachable"):
            scan(scanner, b"clean")


def test_loads_through_the_plugin_interface(clamd_server: Clamd) -> None:
    scanner = plugin.load(plugin.SCANNERS, "clamav", {"socket": clamd_server.socket})
    assert isinstance(scanner, ClamAV)
    assert scan(scanner, EICAR) == REPORTED


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"socket": "/run/clamd.ctl", "host": "127.0.0.1", "port": 3310},
        {"host": "127.0.0.1"},
        {"port": 3310},
        {"host": "127.0.0.1", "port": "3310"},
        {"socket": "/run/clamd.ctl", "timeout": 0},
        {"socket": "/run/clamd.ctl", "max_bytes": -1},
        {"socket": "/run/clamd.ctl", "sockt": "typo"},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(PluginError, match="clamav"):
        plugin.load(plugin.SCANNERS, "clamav", settings)


# --- fake clamds that misbehave -------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def scan_with_fake(path: Path, handler: Handler, data: bytes = b"clean") -> str | None:
    async def go() -> str | None:
        server = await asyncio.start_unix_server(handler, str(path))
        async with server:
            return await ClamAV({"socket": str(path), "timeout": 1}).scan(data)

    return run(go())


async def read_instream(reader: asyncio.StreamReader) -> None:
    assert await reader.readexactly(10) == b"zINSTREAM\0"
    while size := int.from_bytes(await reader.readexactly(4), "big"):
        await reader.readexactly(size)


def answering(reply: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"stream: OK",  # no terminating NUL: cut short
        b"stream: FOUND\0",
        b"stream: Ok\0",
        b"OK\0",
        b"stream: something else\0",
        b"stream: Can't allocate memory ERROR\0",
        b"UNKNOWN COMMAND\0",
        b"x" * 100_000,
    ],
)
def test_unexpected_answers_are_temporary_failures(reply: bytes, short_dir: Path) -> None:
    with pytest.raises(TemporaryFailure):
        scan_with_fake(short_dir / "fake.sock", answering(reply))


def test_fake_that_answers_properly(short_dir: Path) -> None:
    """The fakes speak the protocol: a well-formed reply is understood."""
    assert scan_with_fake(short_dir / "ok.sock", answering(b"stream: OK\0")) is None
    found = answering(b"stream: Win.Test.Thing-1 FOUND\0")
    assert scan_with_fake(short_dir / "found.sock", found) == "Win.Test.Thing-1"


def test_silent_clamd_times_out(short_dir: Path) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)
        await asyncio.sleep(WAIT)

    with pytest.raises(TemporaryFailure, match="did not answer within 1 s"):
        scan_with_fake(short_dir / "silent.sock", silent)


def test_hang_up_mid_stream_is_a_temporary_failure(short_dir: Path) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1000)
        writer.transport.abort()

    with pytest.raises(TemporaryFailure):
        scan_with_fake(short_dir / "hangup.sock", hang_up, bytes(8 * 1024 * 1024))
