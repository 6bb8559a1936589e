"""The address book client and cache against the sandbox's API, and e-mail rewriting."""

import re
import ssl
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from sdk_bridge.lab.sandbox.addressbook import AddressBookAPI
from sdk_bridge.lab.sandbox.web import Faults, Server
from sdk_bridge.lab.testpki import TestPKI, make_pki
from sdk_bridge.registry.addressbook import (
    AddressBook,
    FunctionalAddress,
    JsonApiSource,
    Organisation,
)
from sdk_bridge.registry.addresses import AddressMap, aliases, encoded, slug
from sdk_bridge.registry.cache import FileCache
from sdk_bridge.registry.errors import (
    AmbiguousAlias,
    RegistryUnavailable,
    UnknownFunctionalAddress,
    UnknownOrganisation,
)

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

HABO = "0203:habo.se"
ENTRIES = [
    FunctionalAddress("sdk.habo.registrator", "Registrator", HABO, "Habo kommun"),
    FunctionalAddress("habo-soc-ekb", "Socialtjänsten – Ekonomiskt bistånd", HABO, "Habo kommun"),
    FunctionalAddress("habo-bygg-1", "Bygglov", HABO, "Habo kommun"),
    FunctionalAddress("habo-bygg-2", "Byggl ov", HABO, "Habo kommun"),  # slugs differently
    FunctionalAddress("habo-oversikt:1", "Översiktsplan", HABO, "Habo kommun"),
    FunctionalAddress("habo-oversikt:2", "Oversiktsplan", HABO, "Habo kommun"),  # slugs alike
] + [
    FunctionalAddress(f"org{n}.registrator", "Registrator", f"0203:org{n}.se", f"Org {n}")
    for n in range(120)
]


@pytest.fixture(scope="module")
def web_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("web-pki"), key_size=2048)


@pytest.fixture(scope="module")
def api(web_pki: TestPKI) -> Iterator[tuple[AddressBookAPI, Server]]:
    tls = web_pki.issue("addressbook.sandbox", key_usage="sign", hosts=["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_pem, tls.key_pem)
    app = AddressBookAPI(list(ENTRIES))
    server = Server(app, tls=context).start()
    yield app, server
    server.stop()


@pytest.fixture
def http(web_pki: TestPKI, api: tuple[AddressBookAPI, Server]) -> Iterator[httpx.Client]:
    api[0].faults = Faults()
    verify = ssl.create_default_context(cafile=str(web_pki.chain_pem))
    with httpx.Client(verify=verify, timeout=2) as client:
        yield client


def book(http: httpx.Client, api: tuple[AddressBookAPI, Server], cache: Path) -> AddressBook:
    """A book cached in the file `cache`, as `Registry` keeps it under its cache_dir."""
    source = JsonApiSource(http, api[1].url + AddressBookAPI.PATH, page_size=25)
    return AddressBook(source, FileCache(cache.parent), cache.name, max_age=timedelta(hours=1))


def test_whole_book_is_paged_in(http: httpx.Client, api, tmp_path: Path) -> None:
    address_book = book(http, api, tmp_path / "book.json")
    before = api[0].requests
    assert address_book.refresh()
    assert api[0].requests - before == 6  # 126 entries in pages of 25
    habo = address_book.organisation("0203:Habo.se")
    assert habo.name == "Habo kommun" and len(habo.addresses) == 6
    assert (
        address_book.organisation("0203:org119.se").addresses[0].identifier == "org119.registrator"
    )
    assert [o.id for o in address_book.search("habo")] == [HABO]
    assert {o.id for o in address_book.search("org11")} == {
        f"0203:org11{n}.se" for n in range(10)
    } | {"0203:org11.se"}
    with pytest.raises(
        UnknownOrganisation, match=r"0203:nowhere\.se is not in the SDK address book"
    ):
        address_book.organisation("0203:nowhere.se")


def test_cache_survives_restart_and_outage(http: httpx.Client, api, tmp_path: Path) -> None:
    cache = tmp_path / "book.json"
    assert book(http, api, cache).refresh()
    api[0].faults.fail_with = 503
    restarted = book(http, api, cache)  # a new process: reads the cache file
    assert restarted.refresh() is False
    assert restarted.refresh_errors == 1
    assert restarted.organisation(HABO).name == "Habo kommun"  # still answering
    restarted.max_age = timedelta(0)
    assert restarted.stale
    assert restarted.organisation(HABO).name == "Habo kommun"  # stale, with a warning


def test_never_fetched_book_is_a_temporary_failure(http: httpx.Client, api, tmp_path: Path) -> None:
    api[0].faults.silent_seconds = 3
    address_book = book(http, api, tmp_path / "book.json")
    assert address_book.refresh() is False
    with pytest.raises(RegistryUnavailable, match="not been fetched"):
        address_book.organisation(HABO)


def test_unreadable_cache_is_ignored(http: httpx.Client, api, tmp_path: Path) -> None:
    cache = tmp_path / "book.json"
    cache.write_text("{not json")
    address_book = book(http, api, cache)
    assert address_book.refreshed_at is None
    assert address_book.refresh() and address_book.organisation(HABO)


# --- e-mail addresses -------------------------------------------------------------------


@pytest.fixture
def addresses(http: httpx.Client, api, tmp_path: Path) -> AddressMap:
    address_book = book(http, api, tmp_path / "book.json")
    address_book.refresh()
    return AddressMap("sdk.kommun.se", address_book)


def test_slugs_are_predictable() -> None:
    assert slug("Socialtjänsten – Ekonomiskt bistånd") == "socialtjansten-ekonomiskt-bistand"
    assert slug("Överförmyndare, Åre & Älvdalen") == "overformyndare-are-alvdalen"
    assert slug("  ") == ""
    assert encoded("x").startswith("fa-") and len(encoded("x")) == 29


def test_aliases_are_unique_and_stable(addresses: AddressMap) -> None:
    habo = addresses.book.organisation(HABO)
    known = aliases(habo)
    assert len(known) == len(habo.addresses)
    assert known["registrator"].identifier == "sdk.habo.registrator"
    assert known["bygglov"].identifier == "habo-bygg-1"
    assert known["byggl-ov"].identifier == "habo-bygg-2"
    twins = sorted(alias for alias in known if alias.startswith("oversiktsplan-"))
    assert len(twins) == 2
    reordered = type(habo)(habo.id, habo.name, tuple(reversed(habo.addresses)))
    assert aliases(reordered) == known


def test_aliases_are_worked_out_once_per_book(
    addresses: AddressMap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slugging every name of an organisation (and hashing every identifier) is not redone
    for every recipient, but a refreshed book (new Organisation objects) gets it anew."""
    worked_out: list[str] = []

    def counted(organisation: Organisation) -> dict[str, FunctionalAddress]:
        worked_out.append(organisation.id)
        return aliases(organisation)

    monkeypatch.setattr("sdk_bridge.registry.addresses.aliases", counted)
    for _ in range(3):
        assert addresses.resolve("bygglov@habo.se.sdk.kommun.se").address.identifier == (
            "habo-bygg-1"
        )
    assert worked_out == [HABO]
    assert addresses.book.refresh()
    addresses.resolve("bygglov@habo.se.sdk.kommun.se")
    assert worked_out == [HABO, HABO]


@pytest.mark.parametrize(
    ("email", "identifier"),
    [
        ("registrator@habo.se.sdk.kommun.se", "sdk.habo.registrator"),
        ("Registrator@HABO.SE.sdk.kommun.se", "sdk.habo.registrator"),
        ("socialtjansten-ekonomiskt-bistand@habo.se.sdk.kommun.se", "habo-soc-ekb"),
        ("sdk.habo.registrator@habo.se.sdk.kommun.se", "sdk.habo.registrator"),
        ("habo-bygg-2@habo.se.sdk.kommun.se", "habo-bygg-2"),
        (f"{encoded('habo-oversikt:1')}@habo.se.sdk.kommun.se", "habo-oversikt:1"),
    ],
)
def test_email_resolves_to_functional_address(
    addresses: AddressMap, email: str, identifier: str
) -> None:
    recipient = addresses.resolve(email)
    assert recipient.organisation.id == HABO
    assert recipient.address.identifier == identifier


def test_every_form_round_trips(addresses: AddressMap) -> None:
    for address in addresses.book.organisation(HABO).addresses:
        forms = addresses.forms(address)
        assert forms[0] == addresses.email(address)
        for email in forms:
            assert addresses.resolve(email).address == address, email
    colon = addresses.book.organisation(HABO).addresses[4]
    assert all(":" not in f.partition("@")[0] for f in addresses.forms(colon))  # not a local part


@pytest.mark.parametrize(
    ("email", "error", "text"),
    [
        ("registrator@nowhere.se.sdk.kommun.se", UnknownOrganisation, "0203:nowhere.se is not in"),
        ("registrator@habo.se.example.org", UnknownOrganisation, "not under the SDK domain"),
        ("registrator@sdk.kommun.se", UnknownOrganisation, "not under the SDK domain"),
        (
            "ekonomi@habo.se.sdk.kommun.se",
            UnknownFunctionalAddress,
            "Habo kommun (0203:habo.se) has no functional address 'ekonomi'",
        ),
        (
            "oversiktsplan@habo.se.sdk.kommun.se",
            AmbiguousAlias,
            "matches several functional addresses of Habo kommun",
        ),
        ("no-at-sign", UnknownFunctionalAddress, "is not an e-mail address"),
    ],
)
def test_lookup_errors_say_what_was_not_found(
    addresses: AddressMap, email: str, error: type, text: str
) -> None:
    with pytest.raises(error, match=re.escape(text)):
        addresses.resolve(email)


def test_an_empty_answer_does_not_wipe_the_book(http: httpx.Client, api, tmp_path: Path) -> None:
    """A broken service answering "nobody" must not turn everyone into unknown."""
    address_book = book(http, api, tmp_path / "book.json")
    assert address_book.refresh()
    saved = api[0].entries
    api[0].entries = []
    try:
        assert address_book.refresh() is False
        assert address_book.organisation(HABO).name == "Habo kommun"
        restarted = book(http, api, tmp_path / "book.json")
        assert restarted.organisation(HABO).name == "Habo kommun"
    finally:
        api[0].entries = saved


def test_concurrent_refreshes_do_not_collide(http: httpx.Client, api, tmp_path: Path) -> None:
    address_book = book(http, api, tmp_path / "book.json")
    errors: list[BaseException] = []

    def refresh() -> None:
        try:
            address_book.refresh()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=refresh) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert book(http, api, tmp_path / "book.json").organisation(HABO)


def test_an_alias_never_names_another_address() -> None:
    """ "Registrator" must not slug to the identifier of another functional address."""
    organisation = Organisation(
        "0203:x.se",
        "X",
        (
            FunctionalAddress("x-1", "Registrator", "0203:x.se", "X"),
            FunctionalAddress("registrator", "Diariet", "0203:x.se", "X"),
        ),
    )
    known = aliases(organisation)
    assert known["diariet"].identifier == "registrator"
    assert "registrator" not in known
    (alias,) = [a for a, fa in known.items() if fa.identifier == "x-1"]
    assert alias.startswith("registrator-")


def test_nordic_letters_slug_predictably() -> None:
    assert slug("Kø og Ærø") == "ko-og-aero"
    assert slug("Straße") == "strasse"
