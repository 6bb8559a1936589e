"""Serving the sandbox's WSGI applications on loopback, over HTTPS, one thread each.

The standard library's WSGI server is enough for a test federation: it keeps the
applications plain WSGI callables that any test can also call directly. It is taught
HTTP/1.1 keep-alive, as every real access point and SMP server speaks it: without it each
SOAP call costs a TLS handshake on both sides, which dominated the benchmark.
"""

import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import IO, Any, cast
from wsgiref.headers import Headers
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


CONNECTION_TIMEOUT = 30.0  # seconds a client may stay silent, handshake included
MAX_SILENCE_SECONDS = 30.0
MAX_REQUESTS_PER_CONNECTION = 1000
MAX_LEFTOVER_BODY = 1 << 20  # bytes of an unread request body drained to keep the connection


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up or fails its TLS handshake is its own problem


class _Handler11(ServerHandler):
    http_version = "1.1"
    length_known = False  # only a response with a length lets the connection carry on
    headers: Headers  # the response's, set by start_response
    request_handler: "_QuietHandler"  # the connection it answers on

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        self.length_known = "Content-Length" in self.headers

    def log_exception(self, exc_info: Any) -> None:
        if not isinstance(exc_info[1], OSError):  # a client gone mid-answer is its own problem
            super().log_exception(exc_info)


class _BodyReader:
    """The request body and nothing more, so the next request on the connection starts
    where this one ends, whatever the application read."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream, self.left = stream, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self._stream.read(size) if size else b""
        self.left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self._stream.readline(size) if size else b""
        self.left -= len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        """wsgiref answers one request per connection; this answers requests until the
        client closes, a response has no length, or a body was left too large to drain."""
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                return
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():
                return
            environ = self.get_environ()
            body = _BodyReader(self.rfile, int(environ.get("CONTENT_LENGTH") or 0))
            handler = _Handler11(
                body, cast(IO[bytes], self.wfile), self.get_stderr(), environ, multithread=True
            )
            handler.request_handler = self
            handler.run(self.server.get_app())  # type: ignore[attr-defined]
            if (
                self.close_connection
                or not handler.length_known
                or body.left > MAX_LEFTOVER_BODY
                or "Transfer-Encoding" in self.headers  # a chunked body is not followed
            ):
                return
            while body.left and body.read(65536):
                pass

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            # In this request's own thread, so a silent client cannot stall accept().
            self.connection.do_handshake()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the sandbox logs what matters itself

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["HTTPS"] = "on"  # wsgiref derives wsgi.url_scheme from it
        return environ


class Server:
    """One WSGI app on `host:port` (port 0: any free port), HTTPS when given a context."""

    def __init__(
        self,
        app: WSGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._server = make_server(host, port, app, _ThreadingServer, _QuietHandler)
        if tls is not None:
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls else "http"
        self.host = host
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"sandbox:{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> "Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


class Router:
    """Sends `/name/rest` to routes["name"] with `/rest` as its path (SCRIPT_NAME grows)."""

    def __init__(self, routes: dict[str, WSGIApp] | None = None) -> None:
        self.routes = routes if routes is not None else {}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        name, _, rest = environ.get("PATH_INFO", "").lstrip("/").partition("/")
        app = self.routes.get(name)
        if app is None:
            return respond(start_response, 404, b"no such service")
        inner = dict(environ)
        inner["SCRIPT_NAME"] = f"{environ.get('SCRIPT_NAME', '')}/{name}"
        inner["PATH_INFO"] = f"/{rest}"
        return app(inner, start_response)


@dataclass
class Faults:
    """Switches that make a sandbox service fail, so tests can watch clients cope."""

    fail_with: int | None = None  # answer every request with this HTTP status
    silent_seconds: float = 0.0  # wait this long before answering (bounded)

    def answer(self, start_response: Callable[..., Any], service: str) -> list[bytes] | None:
        """The faulty answer, if a switch is on; None lets the service answer."""
        if self.silent_seconds:
            time.sleep(min(self.silent_seconds, MAX_SILENCE_SECONDS))
        if self.fail_with:
            return respond(start_response, self.fail_with, f"sandbox: {service} fault".encode())
        return None


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > limit:
        raise ValueError(f"request body larger than {limit} bytes")
    return environ["wsgi.input"].read(length) if length else b""


def respond(
    start_response: Callable[..., Any],
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """Finish a WSGI response in one call."""
    reason = _REASONS.get(status, "Status")
    start_response(
        f"{status} {reason}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
