"""Revocation checks (OCSP, then CRL) against the sandbox's revocation server on loopback."""

import base64
import dataclasses
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from sdk_bridge.lab.sandbox.revocation import RevocationApp, revocation_urls
from sdk_bridge.lab.sandbox.web import Server
from sdk_bridge.lab.testpki import Identity, TestPKI, load_pki, make_pki
from sdk_bridge.registry.cache import FileCache
from sdk_bridge.registry.revocation import (
    RevocationChecker,
    RevocationPolicy,
    RevocationUnknown,
    Revoked,
)


class Tamper:
    """Middleware that rewrites a service's response bodies, as an attacker on the path
    or a broken CA would."""

    def __init__(self, app: RevocationApp) -> None:
        self.app = app
        self.rewrite: dict[str, Callable[[bytes], bytes]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        rewrite = self.rewrite.get(environ["PATH_INFO"].strip("/").split("/")[0])
        if rewrite is None:
            return self.app(environ, start_response)
        seen: dict[str, Any] = {}
        body = rewrite(b"".join(self.app(environ, lambda s, h, *_: seen.update(s=s, h=h))))
        headers = [(k, v) for k, v in seen["h"] if k.lower() != "content-length"]
        start_response(seen["s"], [*headers, ("Content-Length", str(len(body)))])
        return [body]


@dataclasses.dataclass
class Sandbox:
    app: RevocationApp
    tamper: Tamper
    pki: TestPKI
    good: Identity
    revoked: Identity
    https_url: str
    https_verify: ssl.SSLContext


@pytest.fixture(scope="module")
def sandbox_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    app = RevocationApp()
    tamper = Tamper(app)
    server = Server(tamper).start()
    # The certificates name the server, so the PKI comes after the server is bound.
    pki = make_pki(tmp_path_factory.mktemp("pki"), 2048, **revocation_urls(server.url))
    app.pki = pki
    good, revoked = pki.issue("good.example.se"), pki.issue("revoked.example.se")
    pki.revoke(revoked.cert, x509.ReasonFlags.key_compromise)
    tls_identity = pki.issue("revocation.test", hosts=["127.0.0.1"])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tls_identity.cert_pem, tls_identity.key_pem)
    https = Server(tamper, tls=tls).start()
    verify = ssl.create_default_context(cafile=str(pki.chain_pem))
    yield Sandbox(app, tamper, pki, good, revoked, https.url, verify)
    https.stop()
    server.stop()


@pytest.fixture
def sandbox(sandbox_module: Sandbox) -> Iterator[Sandbox]:
    s = sandbox_module
    s.app.requests.clear()
    yield s
    s.tamper.rewrite.clear()
    s.app.delegated = False
    for service in ("crl", "ocsp"):
        s.app.fail(service, None)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(verify=sandbox.https_verify) as c:
        yield c


def checker(cache: Path, client: httpx.Client, **policy: Any) -> RevocationChecker:
    """A checker keeping its answers in files under `cache`."""
    return RevocationChecker(FileCache(cache), "", RevocationPolicy(timeout=0.5, **policy), client)


def issuer(sandbox: Sandbox) -> x509.Certificate:
    return sandbox.pki.issuing_ca.cert


def test_certificates_point_at_the_sandbox_like_siths_ones(sandbox: Sandbox) -> None:
    cdp = sandbox.good.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    aia = sandbox.good.cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert [n.value for n in cdp.value[0].full_name or []] == [
        f"{sandbox.pki.crl_url}/issuing-ca.crl"
    ]
    assert [d.access_location.value for d in aia.value] == [sandbox.pki.ocsp_url]
    ca = sandbox.pki.issuing_ca.cert.extensions
    assert ca.get_extension_for_class(x509.AuthorityInformationAccess)


def test_good_certificate_passes_by_ocsp(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    checker(tmp_path, client).check(sandbox.good.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 1}


def test_revoked_certificate_refused_by_ocsp(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    with pytest.raises(Revoked) as e:
        checker(tmp_path, client).check(sandbox.revoked.cert, issuer(sandbox))
    assert e.value.reason == x509.ReasonFlags.key_compromise
    assert abs(e.value.when - datetime.now(UTC)) < timedelta(minutes=5)
    assert "revoked.example.se" in str(e.value)
    assert sandbox.app.requests == {"ocsp": 1}


def test_revoked_certificate_refused_by_crl_when_ocsp_is_down(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    sandbox.app.fail("ocsp", "error")
    with pytest.raises(Revoked) as e:
        checker(tmp_path, client).check(sandbox.revoked.cert, issuer(sandbox))
    assert e.value.reason == x509.ReasonFlags.key_compromise
    assert sandbox.app.requests == {"ocsp": 1, "crl": 1}


def test_silent_responder_costs_one_timeout_then_the_crl_answers(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    sandbox.app.silence = 5
    sandbox.app.fail("ocsp", "silent")
    started = time.monotonic()
    checker(tmp_path, client).check(sandbox.good.cert, issuer(sandbox))
    assert time.monotonic() - started < 2
    assert sandbox.app.requests == {"ocsp": 1, "crl": 1}


def test_nothing_answers_is_unknown_when_hard_fail_and_accepted_when_soft_fail(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    sandbox.app.fail("ocsp", "error")
    sandbox.app.fail("crl", "error")
    with pytest.raises(RevocationUnknown) as e:
        checker(tmp_path / "hard", client).check(sandbox.good.cert, issuer(sandbox))
    assert "OCSP" in e.value.text and "CRL" in e.value.text and "HTTP 503" in e.value.text
    checker(tmp_path / "soft", client, soft_fail=True).check(sandbox.revoked.cert, issuer(sandbox))


def test_unknown_is_also_a_temporary_registry_failure(tmp_path: Path) -> None:
    from sdk_bridge.registry.errors import RegistryUnavailable
    from sdk_bridge.sdk.certs import CertificateProblem

    assert issubclass(RevocationUnknown, RegistryUnavailable)
    assert issubclass(Revoked, CertificateProblem)


def test_second_check_and_a_restart_use_the_cache(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    first = checker(tmp_path, client)
    first.check(sandbox.good.cert, issuer(sandbox))
    with pytest.raises(Revoked):
        first.check(sandbox.revoked.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 2}
    first.check(sandbox.good.cert, issuer(sandbox))
    with pytest.raises(Revoked):
        first.check(sandbox.revoked.cert, issuer(sandbox))
    restarted = checker(tmp_path, client)
    restarted.check(sandbox.good.cert, issuer(sandbox))
    with pytest.raises(Revoked):
        restarted.check(sandbox.revoked.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 2}


def test_cached_crl_serves_while_sources_are_down(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    sandbox.app.fail("ocsp", "error")
    checker(tmp_path, client).check(sandbox.good.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 1, "crl": 1}
    # A restart finds the CRL on disk: no request at all, for any certificate of the CA.
    with pytest.raises(Revoked):
        checker(tmp_path, client).check(sandbox.revoked.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 1, "crl": 1}
    # Past its refresh time the CRL is asked for again; down, the cached one (still within
    # nextUpdate) keeps answering.
    sandbox.app.fail("crl", "error")
    eager = checker(tmp_path, client, crl_refresh=timedelta(0))
    with pytest.raises(Revoked):
        eager.check(sandbox.revoked.cert, issuer(sandbox))
    eager.check(sandbox.good.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 3, "crl": 3}


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Another PKI with the same CA names, as a forger would make."""
    return make_pki(tmp_path_factory.mktemp("impostor"), 2048)


def test_crl_signed_by_another_key_is_refused(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path, impostor: TestPKI
) -> None:
    assert impostor.issuing_ca.cert.subject == issuer(sandbox).subject
    sandbox.app.fail("ocsp", "error")
    sandbox.tamper.rewrite["crl"] = lambda _: impostor.crl()
    with pytest.raises(RevocationUnknown, match="signature does not verify"):
        checker(tmp_path, client).check(sandbox.revoked.cert, issuer(sandbox))


def test_ocsp_signed_by_a_responder_the_issuer_did_not_delegate_to_is_refused(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path, impostor: TestPKI
) -> None:
    responder = impostor._ocsp_signer()  # id-kp-OCSPSigning, issued by the look-alike CA
    request = ocsp.load_der_ocsp_request(_ocsp_request(sandbox.revoked.cert, issuer(sandbox)))
    now = datetime.now(UTC)
    forged = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.serial_number,
            hashes.SHA1(),
            ocsp.OCSPCertStatus.GOOD,
            now,
            now + timedelta(hours=1),
            None,
            None,
        )
        .certificates([responder.cert])
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder.cert)
        .sign(responder.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    sandbox.app.fail("crl", "error")
    sandbox.tamper.rewrite["ocsp"] = lambda _: forged
    with pytest.raises(RevocationUnknown, match="not issued by the issuer"):
        checker(tmp_path, client).check(sandbox.revoked.cert, issuer(sandbox))


def test_expired_crl_is_not_trusted(sandbox: Sandbox, client: httpx.Client, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    stale = sandbox.pki.crl(
        this_update=now - timedelta(days=2), next_update=now - timedelta(hours=1)
    )
    sandbox.app.fail("ocsp", "error")
    sandbox.tamper.rewrite["crl"] = lambda _: stale
    with pytest.raises(RevocationUnknown, match="CRL expired"):
        checker(tmp_path, client).check(sandbox.good.cert, issuer(sandbox))


def test_tampered_ocsp_response_is_refused(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    def extend_validity(der: bytes) -> bytes:
        """Push nextUpdate ten years on: still well-formed, no longer what was signed."""
        next_update = ocsp.load_der_ocsp_response(der).next_update_utc
        assert next_update is not None
        stamp = next_update.strftime("%Y%m%d%H%M%SZ").encode()
        assert der.count(stamp) == 1
        return der.replace(stamp, str(next_update.year + 10).encode() + stamp[4:])

    sandbox.app.fail("crl", "error")
    sandbox.tamper.rewrite["ocsp"] = extend_validity
    with pytest.raises(RevocationUnknown, match="signature does not verify"):
        checker(tmp_path, client).check(sandbox.good.cert, issuer(sandbox))
    assert not tmp_path.joinpath("ocsp").exists()  # nothing cached


def test_response_for_another_certificate_is_refused(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    good = httpx.post(
        f"{sandbox.pki.ocsp_url}",
        content=_ocsp_request(sandbox.good.cert, issuer(sandbox)),
        headers={"Content-Type": "application/ocsp-request"},
    ).content
    sandbox.app.fail("crl", "error")
    sandbox.tamper.rewrite["ocsp"] = lambda _: good  # replayed for the revoked certificate
    with pytest.raises(RevocationUnknown, match="does not cover this certificate"):
        checker(tmp_path, client).check(sandbox.revoked.cert, issuer(sandbox))


def test_delegated_ocsp_responder(sandbox: Sandbox, client: httpx.Client, tmp_path: Path) -> None:
    sandbox.app.delegated = True
    check = checker(tmp_path, client)
    check.check(sandbox.good.cert, issuer(sandbox))
    with pytest.raises(Revoked):
        check.check(sandbox.revoked.cert, issuer(sandbox))
    assert sandbox.app.requests == {"ocsp": 2}


def test_issuing_ca_checked_against_the_root(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    checker(tmp_path, client).check(sandbox.pki.issuing_ca.cert, sandbox.pki.root.cert)
    sandbox.app.fail("ocsp", "error")
    checker(tmp_path / "crl", client).check(sandbox.pki.issuing_ca.cert, sandbox.pki.root.cert)
    assert sandbox.app.requests == {"ocsp": 2, "crl": 1}


def test_certificate_without_pointers(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    bare = dataclasses.replace(sandbox.pki, crl_url=None, ocsp_url=None).issue(
        "bare", key_size=1024
    )
    with pytest.raises(RevocationUnknown, match="neither an OCSP responder nor a CRL"):
        checker(tmp_path, client).check(bare.cert, issuer(sandbox))
    checker(tmp_path, client, accept_without_pointers=True).check(bare.cert, issuer(sandbox))
    assert not sandbox.app.requests


def test_https_sources_with_verification(
    sandbox: Sandbox, client: httpx.Client, tmp_path: Path
) -> None:
    urls = revocation_urls(sandbox.https_url)
    pki = dataclasses.replace(sandbox.pki, crl_url=urls["crl_url"], ocsp_url=urls["ocsp_url"])
    leaf = pki.issue("over-https.example.se", key_size=1024)
    checker(tmp_path / "ocsp", client).check(leaf.cert, issuer(sandbox))
    sandbox.app.fail("ocsp", "error")
    pki.revoke(leaf.cert)
    with pytest.raises(Revoked) as e:
        checker(tmp_path / "crl", client).check(leaf.cert, issuer(sandbox))
    assert e.value.reason is None  # unspecified: no reason code in the CRL entry
    with httpx.Client() as unverified, pytest.raises(RevocationUnknown, match="CERTIFICATE"):
        checker(tmp_path / "x", unverified).check(leaf.cert, issuer(sandbox))


def test_ocsp_by_get_and_unknown_serials(sandbox: Sandbox) -> None:
    """RFC 6960 A.1 GET; a serial the CA never issued is "unknown", not "good"."""
    request = _ocsp_request(sandbox.good.cert, issuer(sandbox))
    path = base64.b64encode(request).decode().replace("/", "%2F").replace("+", "%2B")
    answer = ocsp.load_der_ocsp_response(httpx.get(f"{sandbox.pki.ocsp_url}/{path}").content)
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    unknown = ocsp.load_der_ocsp_response(
        sandbox.pki.ocsp_response(_request_by_hash(answer, 12345))
    )
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    # Base64 may end in "/": the responder must not take it for a path separator.
    slashed = next(
        der
        for serial in range(1, 5000)
        if (der := _request_by_hash(answer, serial)) and base64.b64encode(der).endswith(b"/")
    )
    url = f"{sandbox.pki.ocsp_url}/{quote(base64.b64encode(slashed).decode(), safe='')}"
    by_get = ocsp.load_der_ocsp_response(httpx.get(url).content)
    assert by_get.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert by_get.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def _request_by_hash(answer: ocsp.OCSPResponse, serial: int) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        answer.issuer_name_hash, answer.issuer_key_hash, serial, hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_revocations_survive_reopening_the_pki(sandbox: Sandbox) -> None:
    reopened = load_pki(sandbox.pki.directory)
    crl = x509.load_der_x509_crl(reopened.crl())
    assert crl.get_revoked_certificate_by_serial_number(sandbox.revoked.cert.serial_number)
    assert crl.get_revoked_certificate_by_serial_number(sandbox.good.cert.serial_number) is None
    assert reopened.crl_url == sandbox.pki.crl_url


def _ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)
