"""The sandbox's CRL distribution point and OCSP responder for a test PKI.

GET  /crl/<authority>.crl   the authority's DER CRL (application/pkix-crl)
POST /ocsp                  an OCSP request (application/ocsp-request), RFC 6960
GET  /ocsp/<base64>         the same request in the path, RFC 6960 appendix A.1

Fault switches make a service answer 503 or go silent for a bounded time, so tests can
watch clients fall back from OCSP to the CRL, keep serving a cached CRL, or give up.
"""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..testpki import ISSUING_CA, ROOT, TestPKI
from .web import read_body, respond

SERVICES = ("crl", "ocsp")
FAULTS = ("error", "silent")
_MAX_REQUEST = 64 * 1024


def revocation_urls(base_url: str) -> dict[str, str]:
    """The make_pki() keyword arguments for a RevocationApp served at `base_url`."""
    base = base_url.rstrip("/")
    return {"crl_url": f"{base}/crl", "ocsp_url": f"{base}/ocsp"}


class RevocationApp:
    """WSGI app publishing `pki`'s CRLs and answering OCSP for it.

    `pki` may be set after the server is bound, since the PKI's certificates need the
    server's URL (port 0 gives it only then); until then every request gets 503.
    `requests` counts requests per service, faults included.
    """

    def __init__(
        self,
        pki: TestPKI | None = None,
        *,
        crl_lifetime: timedelta = timedelta(days=1),
        ocsp_lifetime: timedelta = timedelta(hours=1),
        delegated: bool = False,
        silence: float = 10.0,
    ) -> None:
        self.pki = pki
        self.crl_lifetime = crl_lifetime
        self.ocsp_lifetime = ocsp_lifetime
        self.delegated = delegated  # OCSP signed by a delegated responder, not the CA
        self.silence = silence  # seconds a "silent" service holds a request before 503
        self.requests: Counter[str] = Counter()
        self._faults: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def fail(self, service: str, fault: str | None) -> None:
        """Make `service` ("crl" or "ocsp") answer 503 ("error"), hang ("silent"), or
        work again (None). Changing a fault releases requests held by "silent"."""
        if service not in SERVICES or (fault is not None and fault not in FAULTS):
            raise ValueError(f"service must be in {SERVICES}, fault in {FAULTS} or None")
        with self._lock:
            if fault is None:
                self._faults.pop(service, None)
            else:
                self._faults[service] = fault
            self._wake.set()
            self._wake = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        service = path.strip("/").split("/", 1)[0]
        if service not in SERVICES:
            return respond(start_response, 404, b"not found\n")
        with self._lock:
            self.requests[service] += 1
            fault, wake = self._faults.get(service), self._wake
        if fault == "silent":
            wake.wait(self.silence)
        if fault is not None or self.pki is None:
            return respond(start_response, 503, b"service unavailable\n")
        if service == "crl":
            return self._crl(self.pki, method, path, start_response)
        return self._ocsp(self.pki, method, path, environ, start_response)

    def _crl(
        self, pki: TestPKI, method: str, path: str, start_response: Callable[..., Any]
    ) -> list[bytes]:
        if method != "GET":
            return respond(start_response, 405, b"GET only\n", headers=[("Allow", "GET")])
        name = path.rsplit("/", 1)[-1].removesuffix(".crl")
        if name not in (ROOT, ISSUING_CA):
            return respond(start_response, 404, b"no such CRL\n")
        now = datetime.now(UTC)
        crl = pki.crl(name, this_update=now, next_update=now + self.crl_lifetime)
        return respond(start_response, 200, crl, "application/pkix-crl")

    def _ocsp(
        self,
        pki: TestPKI,
        method: str,
        path: str,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
    ) -> list[bytes]:
        if method == "POST":
            if environ.get("CONTENT_TYPE", "").split(";")[0].strip() != "application/ocsp-request":
                return respond(start_response, 400, b"expected application/ocsp-request\n")
            try:
                request = read_body(environ, _MAX_REQUEST)
            except ValueError as e:
                return respond(start_response, 413, f"{e}\n".encode())
        elif method == "GET":
            # RFC 6960 A.1: url-encoding of base64 of the DER request, after the base URL.
            # PATH_INFO arrives percent-decoded; base64 may itself begin or end with "/".
            encoded = path.removeprefix("/").partition("/")[2]
            try:
                request = base64.b64decode(encoded, validate=True)
            except ValueError:
                request = b""  # answered as malformed by the PKI, like any bad request
        else:
            return respond(start_response, 405, b"GET or POST\n", headers=[("Allow", "GET, POST")])
        answer = pki.ocsp_response(request, lifetime=self.ocsp_lifetime, delegated=self.delegated)
        return respond(start_response, 200, answer, "application/ocsp-response")
