"""The SDK address book: which organisations and functional addresses can receive.

Digg's address book is a read-only JSON:API whose exact JSON is not public, so it sits
behind one small adapter (`JsonApiSource`) that the sandbox implements too. `AddressBook`
keeps the whole book in the registry cache, which survives restarts (and on a shared spool
serves every instance), and keeps serving it, stale and with a warning, while the service
is down; only when it has never had the book does a lookup fail, and then as a temporary
failure, never as "unknown".
"""

import json
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import httpx
import structlog

from .cache import Cache
from .errors import RegistryUnavailable, UnknownOrganisation

log = structlog.get_logger(__name__)

MAX_PAGES = 10_000


@dataclass(frozen=True)
class FunctionalAddress:
    identifier: str  # the address book's id: the XHE HandlingServiceID
    name: str  # e.g. "Registrator"
    organisation_id: str  # "0203:<domain>"
    organisation_name: str  # e.g. "Habo kommun"


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    addresses: tuple[FunctionalAddress, ...]


class JsonApiSource:
    """Reads every entry of a JSON:API `addresses` collection, following `links.next`."""

    def __init__(self, http: httpx.Client, url: str, page_size: int = 200) -> None:
        self._http = http
        self._url = url
        self._page_size = page_size

    def fetch_all(self) -> list[FunctionalAddress]:
        entries: list[FunctionalAddress] = []
        url: str | None = self._url
        params: dict[str, int] | None = {"page[size]": self._page_size, "page[number]": 1}
        for _ in range(MAX_PAGES):
            if url is None:
                return entries
            try:
                response = self._http.get(url, params=params)
                response.raise_for_status()
                document = response.json()
                entries.extend(self._entry(item) for item in document["data"])
                url = (document.get("links") or {}).get("next")
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                raise RegistryUnavailable(f"address book at {self._url}: {e}") from None
            params = None  # the next link carries them
        raise RegistryUnavailable(f"address book at {self._url}: more than {MAX_PAGES} pages")

    @staticmethod
    def _entry(item: dict) -> FunctionalAddress:
        attributes = item["attributes"]
        organisation = attributes["organization"]
        return FunctionalAddress(
            identifier=str(item["id"]),
            name=str(attributes["name"]),
            organisation_id=str(organisation["identifier"]),
            organisation_name=str(organisation["name"]),
        )


class AddressBook:
    """The whole book, kept in `cache` under `name` and refreshed in the background."""

    def __init__(self, source: JsonApiSource, cache: Cache, name: str, max_age: timedelta) -> None:
        self._source = source
        self._cache = cache
        self._name = name
        self.max_age = max_age
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._organisations: dict[str, Organisation] = {}
        self.refreshed_at: datetime | None = None  # when the book last came from the service
        self.refresh_errors = 0  # a counter for metrics
        self._load()

    @property
    def stale(self) -> bool:
        return self.refreshed_at is None or datetime.now(UTC) - self.refreshed_at > self.max_age

    def _load(self) -> None:
        try:
            stored = self._cache.get(self._name)
            if stored is None:
                return
            cached = json.loads(stored[0].decode("utf-8"))
            entries = [FunctionalAddress(**entry) for entry in cached["entries"]]
            refreshed_at = datetime.fromisoformat(cached["refreshed_at"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("address book cache unreadable, ignored", name=self._name, error=str(e))
            return
        self._install(entries, refreshed_at)

    def _install(self, entries: list[FunctionalAddress], refreshed_at: datetime) -> None:
        grouped: dict[str, list[FunctionalAddress]] = {}
        for entry in entries:
            grouped.setdefault(entry.organisation_id.lower(), []).append(entry)
        organisations = {
            key: Organisation(items[0].organisation_id, items[0].organisation_name, tuple(items))
            for key, items in grouped.items()
        }
        with self._lock:
            self._organisations = organisations
            self.refreshed_at = refreshed_at

    def refresh(self) -> bool:
        """Fetch the whole book; on failure keep serving the old one. True when refreshed."""
        with self._refreshing:  # one refresh at a time
            try:
                entries = self._source.fetch_all()
                if not entries:  # the SDK book is never empty: a broken answer, not news
                    raise RegistryUnavailable("the address book answered with no entries")
            except RegistryUnavailable as e:
                self.refresh_errors += 1
                log.warning(
                    "address book refresh failed; serving the cached book",
                    error=str(e),
                    cached_at=self.refreshed_at.isoformat() if self.refreshed_at else None,
                )
                return False
            now = datetime.now(UTC)
            self._install(entries, now)
            self._write_cache(entries, now)
            log.info("address book refreshed", addresses=len(entries))
            return True

    def _write_cache(self, entries: list[FunctionalAddress], refreshed_at: datetime) -> None:
        data = {"refreshed_at": refreshed_at.isoformat(), "entries": [asdict(e) for e in entries]}
        try:
            self._cache.put(self._name, json.dumps(data, ensure_ascii=False).encode())
        except OSError as e:  # the book in memory still serves; a restart refetches it
            log.warning("address book cache not written", name=self._name, error=str(e))

    def refresh_if_due(self) -> None:
        if self.stale:
            self.refresh()

    def run_refresher(self, stop: threading.Event, interval: float) -> None:
        """Refresh every `interval` seconds until `stop` is set (run it in a thread)."""
        while not stop.wait(interval):
            self.refresh()

    def _require_book(self) -> dict[str, Organisation]:
        if self.refreshed_at is None and not self.refresh():  # first use, no cache yet
            raise RegistryUnavailable("the address book has not been fetched yet")
        with self._lock:
            organisations = self._organisations
        if self.stale:
            log.warning(
                "answering from a stale address book",
                cached_at=self.refreshed_at.isoformat() if self.refreshed_at else None,
            )
        return organisations

    def organisations(self) -> list[Organisation]:
        """Every organisation in the book."""
        return list(self._require_book().values())

    def organisation(self, organisation_id: str) -> Organisation:
        organisation = self._require_book().get(organisation_id.lower())
        if organisation is None:
            raise UnknownOrganisation(f"{organisation_id} is not in the SDK address book")
        return organisation

    def search(self, word: str) -> list[Organisation]:
        """Organisations whose name, id or functional addresses mention `word`."""
        needle = word.casefold()
        return [
            organisation
            for organisation in self._require_book().values()
            if needle in organisation.name.casefold()
            or needle in organisation.id.casefold()
            or any(
                needle in a.name.casefold() or needle in a.identifier.casefold()
                for a in organisation.addresses
            )
        ]
