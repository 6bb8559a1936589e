"""The registry's persistent cache: `FileCache` keeps the layout earlier versions wrote, and
the address book and the revocation checks work on any `Cache`, such as one in the shared
spool's database (stood in for here by a dict)."""

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from support.registries import MemoryCache

from sdk_bridge.lab.sandbox.addressbook import AddressBookAPI
from sdk_bridge.lab.sandbox.revocation import RevocationApp, revocation_urls
from sdk_bridge.lab.testpki import Identity, TestPKI, make_pki
from sdk_bridge.registry.addressbook import AddressBook, FunctionalAddress, JsonApiSource
from sdk_bridge.registry.cache import Cache, FileCache
from sdk_bridge.registry.client import ADDRESS_BOOK_NAME, REVOCATION_PREFIX
from sdk_bridge.registry.revocation import (
    RevocationChecker,
    RevocationPolicy,
    RevocationUnknown,
    Revoked,
)

HABO = "0203:habo.se"
ENTRIES = [FunctionalAddress("sdk.habo.registrator", "Registrator", HABO, "Habo kommun")]
BOOK_URL = "http://addressbook.test" + AddressBookAPI.PATH


@dataclass
class Services:
    """The address book and a CA's revocation services, reached in-process."""

    book_api: AddressBookAPI
    revocation: RevocationApp
    http: httpx.Client
    pki: TestPKI
    good: Identity
    revoked: Identity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(
        tmp_path_factory.mktemp("pki"), 2048, **revocation_urls("http://revocation.test")
    )


@pytest.fixture
def services(pki: TestPKI) -> Iterator[Services]:
    good, revoked = pki.issue("good.example.se"), pki.issue("revoked.example.se")
    pki.revoke(revoked.cert, x509.ReasonFlags.key_compromise)
    book_api, revocation = AddressBookAPI(list(ENTRIES)), RevocationApp(pki)

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        app = book_api if environ["HTTP_HOST"] == "addressbook.test" else revocation
        return app(environ, start_response)

    with httpx.Client(transport=httpx.WSGITransport(app=route)) as http:
        yield Services(book_api, revocation, http, pki, good, revoked)


def instance(cache: Cache, services: Services) -> tuple[AddressBook, RevocationChecker]:
    """What one bridge builds on the cache, named as `Registry` names it."""
    book = AddressBook(
        JsonApiSource(services.http, BOOK_URL), cache, ADDRESS_BOOK_NAME, timedelta(hours=1)
    )
    policy = RevocationPolicy(timeout=1.0)
    return book, RevocationChecker(cache, REVOCATION_PREFIX, policy, services.http)


def all_down(services: Services) -> None:
    services.book_api.faults.fail_with = 503
    services.revocation.fail("ocsp", "error")
    services.revocation.fail("crl", "error")


# --- FileCache ---------------------------------------------------------------------------


def test_file_cache_round_trip(tmp_path: Path) -> None:
    cache = FileCache(tmp_path)
    assert cache.get("ocsp/key.der") is None
    cache.put("ocsp/key.der", b"first")
    cache.put("ocsp/key.der", b"second")
    stored = cache.get("ocsp/key.der")
    assert stored is not None
    data, stored_at = stored
    assert data == b"second" and (tmp_path / "ocsp" / "key.der").read_bytes() == b"second"
    assert stored_at.tzinfo is not None
    assert abs(datetime.now(UTC) - stored_at) < timedelta(minutes=1)
    assert [p.name for p in (tmp_path / "ocsp").iterdir()] == ["key.der"]  # no leftovers


def test_file_cache_stored_at_is_the_file_mtime(tmp_path: Path) -> None:
    cache = FileCache(tmp_path)
    cache.put("addressbook.json", b"{}")
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    os.utime(tmp_path / "addressbook.json", (when.timestamp(), when.timestamp()))
    assert cache.get("addressbook.json") == (b"{}", when)


@pytest.mark.parametrize(
    "name", ["", "/etc/passwd", "../outside", "crl/../../outside", "crl//x", "./x", "crl/", "a\0"]
)
def test_file_cache_refuses_names_that_leave_its_directory(tmp_path: Path, name: str) -> None:
    cache = FileCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="not a cache name"):
        cache.put(name, b"x")
    with pytest.raises(ValueError, match="not a cache name"):
        cache.get(name)
    assert list(tmp_path.iterdir()) == []


def test_file_cache_read_errors_other_than_missing_are_raised(tmp_path: Path) -> None:
    (tmp_path / "crl").mkdir()
    with pytest.raises(OSError):
        FileCache(tmp_path).get("crl")


def test_cache_dir_written_by_an_earlier_version_is_read(
    services: Services, tmp_path: Path
) -> None:
    """The files as the version before `Cache` wrote them, under `registry.cache_dir`:
    after an upgrade they serve with every service down, and nothing is asked."""
    issuer = services.pki.issuing_ca.cert
    book = {
        "refreshed_at": datetime.now(UTC).isoformat(),
        "entries": [
            {
                "identifier": "sdk.habo.registrator",
                "name": "Registrator",
                "organisation_id": HABO,
                "organisation_name": "Habo kommun",
            }
        ],
    }
    (tmp_path / "addressbook.json").write_text(json.dumps(book))
    request = ocsp.OCSPRequestBuilder().add_certificate(services.good.cert, issuer, hashes.SHA1())
    key = f"{request.build().issuer_key_hash.hex()}-{services.good.cert.serial_number:x}"
    answer = services.pki.ocsp_response(request.build().public_bytes(serialization.Encoding.DER))
    (tmp_path / "revocation" / "ocsp").mkdir(parents=True)
    (tmp_path / "revocation" / "ocsp" / f"{key}.der").write_bytes(answer)
    crl_url = f"{services.pki.crl_url}/issuing-ca.crl"
    crl_file = hashlib.sha256(crl_url.encode()).hexdigest()[:32] + ".crl"
    (tmp_path / "revocation" / "crl").mkdir()
    (tmp_path / "revocation" / "crl" / crl_file).write_bytes(services.pki.crl())
    all_down(services)

    book_, checker = instance(FileCache(tmp_path), services)
    assert book_.organisation(HABO).name == "Habo kommun"
    checker.check(services.good.cert, issuer)
    with pytest.raises(Revoked):
        checker.check(services.revoked.cert, issuer)
    assert not services.revocation.requests


# --- any Cache ---------------------------------------------------------------------------


def test_address_book_and_revocation_shared_through_an_in_memory_cache(
    services: Services,
) -> None:
    """What one instance fetched serves another, with the services down; entries that
    do not verify or parse are ignored, as a tampered cache file is."""
    cache, issuer = MemoryCache(), services.pki.issuing_ca.cert
    book, checker = instance(cache, services)
    assert book.refresh()
    checker.check(services.good.cert, issuer)  # by OCSP
    services.revocation.fail("ocsp", "error")
    with pytest.raises(Revoked):
        checker.check(services.revoked.cert, issuer)  # by the CRL
    assert services.revocation.requests == {"ocsp": 2, "crl": 1}
    book_name, crl_name, ocsp_name = sorted(cache.blobs)  # the names files had before
    assert book_name == "addressbook.json"
    assert re.fullmatch(r"revocation/crl/[0-9a-f]{32}\.crl", crl_name)
    assert re.fullmatch(r"revocation/ocsp/[0-9a-f]{40}-[0-9a-f]+\.der", ocsp_name)

    all_down(services)
    other_book, other_checker = instance(cache, services)
    assert other_book.organisation(HABO).name == "Habo kommun"
    other_checker.check(services.good.cert, issuer)
    with pytest.raises(Revoked):
        other_checker.check(services.revoked.cert, issuer)
    assert services.revocation.requests == {"ocsp": 2, "crl": 1}  # nothing asked

    for name, (data, stored_at) in cache.blobs.items():
        cache.blobs[name] = (data[:-1] + bytes([data[-1] ^ 1]), stored_at)
    tampered_book, tampered_checker = instance(cache, services)
    assert tampered_book.refreshed_at is None
    with pytest.raises(RevocationUnknown):
        tampered_checker.check(services.good.cert, issuer)
