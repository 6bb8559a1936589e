"""The access point connector's HTTP/1.1 client against real servers on loopback: the
sandbox's web server for kept-alive connections, and small asyncio servers that answer as
servers in the wild do (chunked, to the end of the connection, closing idle connections)
or as a hostile one might."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from sdk_bridge.lab.sandbox.web import Server, read_body, respond
from sdk_bridge_plugins import http11
from sdk_bridge_plugins.http11 import AnswerTooLarge, Client, HTTPError, HTTPTimeout

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = read_body(environ, 1 << 20)
    said = f"{environ['REQUEST_METHOD']} {environ.get('QUERY_STRING', '')} {len(body)} "
    return respond(start_response, 200, said.encode() + body[:16])


@contextlib.asynccontextmanager
async def scripted(answer: Answer) -> AsyncIterator[str]:
    """A server on loopback that reads each request's head and lets `answer` reply."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/x"
    finally:
        server.close()
        await server.wait_closed()


async def request_of(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


@pytest.fixture
def echoing() -> Iterator[Server]:
    """The sandbox's web server answering with what it was sent."""
    server = Server(echo).start()
    yield server
    server.stop()


def replying(answer: bytes) -> Answer:
    """A server's part that reads one request, sends `answer` and closes."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_of(reader)
        writer.write(answer)
        await writer.drain()

    return reply


async def fetch(client: Client, url: str, body: bytes = b"hej") -> tuple[int, bytes]:
    async with client.request("POST", url, body=body) as response:
        return response.status, await response.read(1 << 20)


def test_requests_go_on_one_kept_alive_connection(echoing: Server) -> None:
    server = echoing

    async def main() -> None:
        client = Client(timeout=5)
        try:
            for number in range(5):
                status, said = await fetch(client, f"{server.url}/x?n={number}", b"a" * number)
                assert (status, said) == (
                    200,
                    f"POST n={number} {number} ".encode() + b"a" * number,
                )
            origin = next(iter(client._origins.values()))
            assert len(origin.idle) == 1 and origin.idle[0].used == 5
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_streamed_body_is_sent_with_its_length(echoing: Server) -> None:
    server = echoing

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"e"):
            yield part

    async def main() -> tuple[int, bytes]:
        client = Client(timeout=5)
        try:
            async with client.request("PUT", f"{server.url}/x", body=parts(), size=5) as answer:
                return answer.status, await answer.read(100)
        finally:
            await client.aclose()

    assert asyncio.run(main()) == (200, b"PUT  5 abcde")
    with pytest.raises(ValueError, match="needs its size"):
        asyncio.run(Client().request("POST", server.url, body=parts()).__aenter__())


def test_chunked_answers_and_answers_to_the_end_of_the_connection() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # kept alive after a chunked answer
            await request_of(reader)
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"
            )
            await writer.drain()

    async def main() -> None:
        client = Client(timeout=5)
        async with scripted(chunked) as url:
            assert await fetch(client, url) == (200, b"hello, world")
            assert await fetch(client, url) == (200, b"hello, world")
        async with scripted(replying(b"HTTP/1.0 200 OK\r\n\r\nall of it")) as url:
            assert await fetch(client, url) == (200, b"all of it")
        assert all(
            not origin.idle or origin.idle[0].used == 2 for origin in client._origins.values()
        )
        await client.aclose()

    asyncio.run(main())


def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    """A server that answers and closes (or closes idle connections) costs a new connection,
    not a failed request."""

    async def main() -> None:
        client = Client(timeout=5)
        # each connection is closed after its answer, unannounced, while it idles
        async with scripted(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as url:
            for _ in range(3):
                assert await fetch(client, url) == (200, b"ok")
                await asyncio.sleep(0.05)  # lets the close arrive (bounded: 3 rounds)
        await client.aclose()

    asyncio.run(main())


def test_a_connection_idle_too_long_is_not_used_again(
    echoing: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = echoing
    monkeypatch.setattr(http11, "IDLE_SECONDS", 0.0)

    async def main() -> None:
        client = Client(timeout=5)
        await fetch(client, f"{server.url}/x")
        first = next(iter(client._origins.values())).idle[0]
        await fetch(client, f"{server.url}/x")
        second = next(iter(client._origins.values())).idle[0]
        assert first is not second and first.writer.is_closing()
        await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"SMTP 220 hello\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n X: folded\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length is not a number"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "head is longer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection mid-answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
            "does not end with CRLF",
        ),
        (b"", "IncompleteReadError"),
    ],
)
def test_a_malformed_answer_is_an_http_error(answer: bytes, problem: str) -> None:
    async def main() -> None:
        client = Client(timeout=5)
        async with scripted(replying(answer)) as url:
            with pytest.raises(HTTPError, match=problem):
                await fetch(client, url)
        assert not any(origin.idle for origin in client._origins.values())

    asyncio.run(main())


def test_an_answer_larger_than_the_caller_takes(echoing: Server) -> None:
    server = echoing

    async def main() -> None:
        client = Client(timeout=5)
        with pytest.raises(AnswerTooLarge):
            async with client.request("POST", server.url, body=b"x" * 100) as answer:
                await answer.read(5)
        assert not next(iter(client._origins.values())).idle  # not read to its end
        await client.aclose()

    asyncio.run(main())


def test_a_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_of(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        client = Client(timeout=0.2)
        async with scripted(silent) as url:
            with pytest.raises(HTTPTimeout):
                await fetch(client, url)

    asyncio.run(main())


def test_a_server_that_stops_mid_answer_times_out() -> None:
    """What has arrived is read without a timer; the wait for the rest has one."""

    async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_of(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf ")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        client = Client(timeout=0.2)
        async with (
            scripted(stalling) as url,
            client.request("POST", url, body=b"hej") as response,
        ):
            chunks = response.chunks()
            assert await anext(chunks) == b"half "
            with pytest.raises(HTTPTimeout):
                await anext(chunks)

    asyncio.run(main())


def test_refused_and_misused() -> None:
    async def main() -> None:
        client = Client(timeout=5)
        with pytest.raises(HTTPError, match="ConnectionRefusedError"):
            await fetch(client, "http://127.0.0.1:1/x")
        with pytest.raises(ValueError, match="not an http"):
            await fetch(client, "ftp://127.0.0.1/x")
        with pytest.raises(ValueError, match="line break"):
            async with client.request("GET", "http://127.0.0.1:1/x", headers={"X": "a\r\nY: b"}):
                pass

    asyncio.run(main())
