"""ClamAV content scanner: each message is streamed to clamd with its INSTREAM command.

Why INSTREAM: the bytes travel over clamd's socket, so the bridge writes no temporary
files for clamd to read (no mail content left on disk, no shared directory or file
permissions between the bridge's user and clamd's), and clamd may run in another
container. Unix socket (`socket: /run/clamav/clamd.ctl`) or TCP (`host`, `port`); clamd's
TCP socket has neither authentication nor encryption, so keep it on loopback.

Settings: `socket` or `host` + `port`; `timeout` in seconds for one whole scan (default
30); `max_bytes` (default 64 MiB), the largest message scanned, which must not exceed
clamd's StreamMaxLength (Debian's clamd.conf sets 25M).

clamd.conf must say `AlertExceedsMax yes`. With clamd's default (and Debian's) `no`, a file
nested deeper than MaxRecursion (17 containers), or beyond MaxFiles or MaxScanSize, is
answered `stream: OK` unscanned; with `yes` it is answered
`Heuristics.Limits.Exceeded.* FOUND` and refused like malware.

Whenever clamd cannot give a clear answer (unreachable, too slow, an ERROR reply, anything
unexpected, a message over max_bytes) scan() raises TemporaryFailure: a message is never
reported clean unless clamd said `stream: OK` after receiving all of it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from typing import Any

from sdk_bridge.plugin import TemporaryFailure
from sdk_bridge.plugin.settings import only, positive
from sdk_bridge.plugin.settings import port as check_port

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
CHUNK = 1024 * 1024  # bytes per INSTREAM chunk
REPLY_LIMIT = 64 * 1024  # longest reply accepted from clamd
SETTINGS = {"socket", "host", "port", "timeout", "max_bytes"}


class ClamAV:
    """A `sdk_bridge.plugin.Scanner` backed by clamd."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        only(settings, SETTINGS)
        path, host, port = settings.get("socket"), settings.get("host"), settings.get("port")
        if (path is None) == (host is None and port is None):
            raise ValueError("set either `socket` (clamd's LocalSocket) or `host` and `port`")
        if path is not None and not (isinstance(path, str) and path):
            raise ValueError(f"`socket` must be a path, not {path!r}")
        if path is None:
            if not (isinstance(host, str) and host):
                raise ValueError("`host` and `port` go together (clamd's TCPAddr and TCPSocket)")
            port = check_port(port)
        self.socket: str | None = path
        self.host: str | None = host
        self.port: int | None = port
        self.timeout = positive(settings, "timeout", DEFAULT_TIMEOUT)
        self.max_bytes = int(positive(settings, "max_bytes", DEFAULT_MAX_BYTES, whole=True))

    def __repr__(self) -> str:
        return f"ClamAV({self._where})"

    @property
    def _where(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"tcp:{self.host}:{self.port}"

    async def scan(self, data: bytes) -> str | None:
        """The signature name clamd found in `data`, or None when clamd says it is clean."""
        if len(data) > self.max_bytes:
            raise TemporaryFailure(
                f"message of {len(data)} bytes is larger than the ClamAV plugin's max_bytes "
                f"({self.max_bytes}); keep the SMTP size limit below it"
            )
        try:
            async with asyncio.timeout(self.timeout):
                reply, sent, terminated = await self._instream(data)
        except TimeoutError:
            raise TemporaryFailure(
                f"clamd at {self._where} did not answer within {self.timeout} s"
            ) from None
        except OSError as e:
            raise TemporaryFailure(f"clamd at {self._where} unreachable: {e}") from e
        return self._verdict(reply, sent, terminated, len(data))

    async def _instream(self, data: bytes) -> tuple[bytes, bool, bool]:
        """Send `data`; return clamd's reply, whether all of `data` was sent, and whether
        the reply ended with its NUL terminator (it was not cut short).

        Plain non-blocking sockets rather than asyncio streams: when clamd refuses more
        data (StreamMaxLength) it answers and hangs up, our next send fails, and only a
        socket we still own lets us read the answer that explains why.
        """
        loop = asyncio.get_running_loop()
        with await self._connect(loop) as sock:
            sent = True
            try:
                await loop.sock_sendall(sock, b"zINSTREAM\0")
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    chunk = view[start : start + CHUNK]
                    await loop.sock_sendall(sock, struct.pack(">I", len(chunk)))
                    await loop.sock_sendall(sock, chunk)
                await loop.sock_sendall(sock, struct.pack(">I", 0))
            except ConnectionError:
                sent = False
            reply = b""
            try:
                while len(reply) < REPLY_LIMIT:
                    received = await loop.sock_recv(sock, 4096)
                    if not received:
                        break
                    reply += received
                    if b"\0" in received:
                        return reply[: reply.index(b"\0")], sent, True
            except ConnectionError:
                if sent:
                    raise
            return reply, sent, False

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        address: Any
        if self.socket:
            sock, address = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), self.socket
        else:
            found = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = found[0]
            sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    def _verdict(self, raw: bytes, sent: bool, terminated: bool, size: int) -> str | None:
        reply = raw.decode("utf-8", "replace").strip()
        where = f"clamd at {self._where}"
        if "size limit exceeded" in reply.lower():
            raise TemporaryFailure(
                f"{where}: {reply} ({size} bytes): clamd's StreamMaxLength is smaller than "
                f"this message; max_bytes ({self.max_bytes}) must not exceed StreamMaxLength"
            )
        if reply.endswith("ERROR"):
            raise TemporaryFailure(f"{where} could not scan the message: {reply}")
        if not sent:
            raise TemporaryFailure(
                f"{where} closed the connection before it had the whole message ({size} bytes)"
                + (f"; it said {reply!r}" if reply else "")
                + f"; is max_bytes ({self.max_bytes}) above clamd's StreamMaxLength?"
            )
        if not terminated:
            raise TemporaryFailure(f"{where} closed the connection without a complete answer")
        if reply.startswith("stream: "):
            body = reply.removeprefix("stream: ")
            name = body.removesuffix(" FOUND").strip()
            if body == "OK":
                return None
            if body.endswith(" FOUND") and name:
                return name
        raise TemporaryFailure(f"unexpected answer from {where}: {reply[:200]!r}")
