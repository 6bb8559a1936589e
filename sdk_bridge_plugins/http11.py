"""A small HTTP/1.1 client for the access point connector: kept-alive connections, bodies
streamed both ways, nothing else.

Why not a general client: every message costs the connector three or four SOAP calls, and a
general asyncio client spent 1.8-2 ms of CPU on each (pool scans, a dozen layers, ~33
system calls); this one spends about 0.4 ms, most of it TLS (issue 18). It does what the
connector needs and refuses the rest: no redirects (a redirect would resend the message
elsewhere), no proxies, no cookies, no content coding (it asks for `identity`).

A timer (`asyncio.timeout`: a timer handle, scheduled and cancelled) is set only around
what can wait: a read is not timed when what it reads has arrived already, a write not when
the transport took it all, a free connection not when one is free. An answer of a few KB
then costs one timer, for its head, not five.

A connection is used again only when its answer was read to the end and neither side asked
to close it, and only while it has been idle for less than IDLE_SECONDS: a server that
closes idle connections (Tomcat after 20 s, Apache httpd after 5) would otherwise meet our
next request with a reset. What still goes wrong on a kept-alive connection is an
HTTPError like any other; the connector retries those (its message ids make retries safe).
"""

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

IDLE_SECONDS: Final = 4.0  # below the shortest keep-alive of common servers (5 s)
MAX_CONNECTIONS: Final = 16  # per origin; callers beyond wait for one, within the timeout
MAX_HEAD_BYTES: Final = 64 * 1024  # status line and headers of an answer
MAX_CHUNK_LINE: Final = 1024  # a chunk's size line, extensions included
_READ: Final = 64 * 1024
_HEX: Final = b"0123456789abcdefABCDEF"


class HTTPError(Exception):
    """The server could not be asked or its answer could not be read."""


class AnswerTooLarge(HTTPError):
    """The answer's body is longer than the caller takes."""


class HTTPTimeout(HTTPError):
    """Connecting, sending or waiting for the next bytes took longer than the timeout."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    used: int = 0  # requests answered on it

    def fresh(self) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and time.monotonic() - self.idle_since < IDLE_SECONDS
        )

    def close(self) -> None:
        self.writer.transport.abort()  # no TLS close_notify wait on a peer that may be gone


@dataclass
class _Origin:
    scheme: str
    host: str
    port: int
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_CONNECTIONS))
    idle: list[_Connection] = field(default_factory=list)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """An answer whose head has been read; its body is read with `chunks()` (once)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: "_Body") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # names in lower case; repeated ones joined with ", "
        self._body = body

    def chunks(self) -> AsyncIterator[bytes]:
        return self._body.chunks()

    async def read(self, limit: int) -> bytes:
        """The whole body; AnswerTooLarge past `limit` bytes."""
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
        return bytes(data)


class Client:
    """Requests to any number of origins, each with its pool of kept-alive connections.
    One per event loop; `aclose` ends the idle connections."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        """`timeout`: for connecting, for a free connection, for each write and for each
        wait for more of the answer (not for the whole exchange: a large body may take
        longer)."""
        self.tls = tls
        self.timeout = timeout
        self._authorization = (
            None
            if auth is None
            else "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        )
        self._origins: dict[tuple[str, str, int], _Origin] = {}

    async def aclose(self) -> None:
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | AsyncIterator[bytes] = b"",
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Response]:
        """The answer to one request, its body to be read within the `async with`.

        A streamed `body` needs its `size` (sent as Content-Length, which every server
        takes, where chunked uploads are not). The connection goes back to the pool only
        if the answer was read to its end.
        """
        if not isinstance(body, bytes | bytearray):
            if size is None:
                raise ValueError("a streamed body needs its size")
        else:
            size = len(body)
        origin, target = self._origin(url)
        head = self._head(method, origin, target, size, headers or {})
        try:
            if origin.limit.locked():
                async with asyncio.timeout(self.timeout):
                    await origin.limit.acquire()
            else:
                await origin.limit.acquire()  # free: it does not wait
        except TimeoutError:
            raise HTTPTimeout(f"no free connection to {origin.authority}") from None
        connection: _Connection | None = None
        try:
            connection = await self._connection(origin)
            response = await self._exchange(connection, head, body, method)
            yield response
            if response._body.reusable and response._body.done:
                connection.idle_since = time.monotonic()
                connection.used += 1
                origin.idle.append(connection)
                connection = None
        finally:
            if connection is not None:
                connection.close()
            origin.limit.release()

    # --- the parts of an exchange ---------------------------------------------------------

    def _origin(self, url: str) -> tuple[_Origin, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return origin, target

    def _head(
        self, method: str, origin: _Origin, target: str, size: int, headers: Mapping[str, str]
    ) -> bytes:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {origin.authority}",
            "User-Agent: sdk-bridge",
            "Accept-Encoding: identity",
        ]
        if self._authorization:
            lines.append(f"Authorization: {self._authorization}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if size or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {size}")
        if any(c in line for line in lines for c in "\r\n\0"):
            raise ValueError("a header holds a line break")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connection(self, origin: _Origin) -> _Connection:
        while origin.idle:
            connection = origin.idle.pop()
            if connection.fresh():
                return connection
            connection.close()
        if origin.scheme == "https" and self.tls is None:
            self.tls = ssl.create_default_context()  # the system's trust, made once
        tls = self.tls if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, ssl=tls, limit=MAX_HEAD_BYTES
                )
        except TimeoutError:
            raise HTTPTimeout(f"connecting to {origin.authority} took too long") from None
        except OSError as e:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            raise HTTPError(_cause(e)) from e
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        head: bytes,
        body: bytes | bytearray | AsyncIterator[bytes],
        method: str,
    ) -> Response:
        writer = connection.writer
        try:
            if isinstance(body, bytes | bytearray):
                if len(body) < _READ:
                    writer.write(head + body)  # one segment for a small request
                else:
                    writer.write(head)  # a large body is not copied to be joined
                    writer.write(body)
                if writer.transport.get_write_buffer_size():  # else sent: nothing to wait for
                    async with asyncio.timeout(self.timeout):
                        await writer.drain()
            else:
                writer.write(head)
                async for chunk in body:
                    writer.write(chunk)
                    async with asyncio.timeout(self.timeout):
                        await writer.drain()
            while True:
                status, reason, headers, version = await self._read_head(connection)
                if not 100 <= status < 200:
                    break
        except TimeoutError:
            raise HTTPTimeout("the server did not answer in time") from None
        except (OSError, asyncio.IncompleteReadError) as e:
            said = _cause(e)
            if connection.used:
                said += " (on a kept-alive connection)"
            raise HTTPError(said) from e
        body_reader = _Body(connection, headers, version, method, status, self.timeout)
        return Response(status, reason, headers, body_reader)

    async def _read_head(self, connection: _Connection) -> tuple[int, str, dict[str, str], str]:
        reader = connection.reader
        try:
            if b"\r\n\r\n" in _buffered(reader):  # a second head, after a 100 Continue
                raw = await reader.readuntil(b"\r\n\r\n")
            else:
                async with asyncio.timeout(self.timeout):
                    raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HTTPError(f"the answer's head is longer than {MAX_HEAD_BYTES} bytes") from None
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not (code.isdigit() and len(code) == 3):
            raise HTTPError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HTTPError(f"a malformed header line in the answer: {line[:80]!r}")
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return int(code), reason, headers, version


class _Body:
    """Reads an answer's body as its head says: by length, in chunks, or to the end."""

    def __init__(
        self,
        connection: _Connection,
        headers: dict[str, str],
        version: str,
        method: str,
        status: int,
        timeout: float,
    ) -> None:
        self._reader = connection.reader
        self._timeout = timeout
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self.chunked = headers.get("transfer-encoding", "").lower().endswith("chunked")
        length = headers.get("content-length")
        if method == "HEAD" or status in (204, 304):
            self.left: int | None = 0
        elif self.chunked:
            self.left = None
        elif length is not None:
            if not length.isdigit():
                raise HTTPError(f"the answer's Content-Length is not a number: {length[:40]!r}")
            self.left = int(length)
        else:
            self.left = None  # to the end of the connection
        self.reusable = (
            "close" not in tokens
            and version == "HTTP/1.1"
            and (self.chunked or self.left is not None)
        )
        self.done = self.left == 0 and not self.chunked

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self.chunked:
                async for piece in self._chunked():
                    yield piece
            elif self.left is None:
                while data := await self._read_some(_READ):
                    yield data
            else:
                while self.left:
                    data = await self._read_some(min(self.left, _READ))
                    if not data:
                        raise HTTPError("the server closed the connection mid-answer")
                    self.left -= len(data)
                    yield data
            self.done = True
        except TimeoutError:
            raise HTTPTimeout("the server stopped sending its answer") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            raise HTTPError(f"reading the answer: {_cause(e)}") from e

    async def _chunked(self) -> AsyncIterator[bytes]:
        reader = self._reader
        while True:
            line = await self._read(reader.readuntil(b"\r\n"))
            size_text = line.split(b";")[0].strip()
            if len(line) > MAX_CHUNK_LINE or not size_text or size_text.strip(_HEX):
                raise HTTPError(f"a malformed chunk size line: {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                while await self._read(reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers, ignored
                return
            while size:
                data = await self._read_some(min(size, _READ))
                if not data:
                    raise HTTPError("the server closed the connection mid-answer")
                size -= len(data)
                yield data
            if await self._read(reader.readexactly(2)) != b"\r\n":
                raise HTTPError("a chunk does not end with CRLF")

    async def _read_some(self, most: int) -> bytes:
        """Up to `most` bytes: at once, untimed, when some have arrived already."""
        if _buffered(self._reader) or self._reader.at_eof():
            return await self._reader.read(most)
        return await self._read(self._reader.read(most))

    async def _read(self, operation: Awaitable[bytes]) -> bytes:
        async with asyncio.timeout(self._timeout):
            return await operation


def _buffered(reader: asyncio.StreamReader) -> bytearray:
    """What `reader` holds already. StreamReader has no public way to ask; asyncio's own
    readers (readuntil, readexactly) look at the same buffer."""
    return reader._buffer  # type: ignore[attr-defined]


def _cause(error: BaseException) -> str:
    """An exception as one line for an HTTPError: its type, and its text where it has one."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
