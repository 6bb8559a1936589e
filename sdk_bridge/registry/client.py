"""The registry as the rest of the bridge sees it: one object built from the configuration.

It answers the two questions the bridge asks: who is behind an e-mail address and which
certificate to encrypt to (outbound), and which certificates a sender may sign with
(inbound). `lookup` also serves the `sdk-bridge lookup` command.

What must survive a restart goes into a `Cache`: files under `registry.cache_dir` unless
the caller passes another (the shared spool's database, when several bridges run).
"""

import ssl
import threading
from dataclasses import dataclass
from datetime import timedelta

import httpx
from cryptography import x509

from ..sdk.names import MESSAGE_DOCUMENT_ID, ORGANISATION_ID
from .addressbook import AddressBook, JsonApiSource, Organisation
from .addresses import AddressMap
from .cache import Cache, FileCache
from .certpub import CertPub
from .errors import RegistryError, RegistryUnavailable, UnknownOrganisation
from .revocation import RevocationChecker, RevocationPolicy
from .settings import RegistryConfig
from .smp import Endpoint, Locator, SMPClient

HTTP_TIMEOUT = 10.0
ADDRESS_BOOK_MAX_AGE = timedelta(hours=1)
REFRESH_INTERVAL = 15 * 60.0  # seconds between address book refreshes
# Names in the cache: as files under cache_dir, the layout earlier versions wrote.
ADDRESS_BOOK_NAME = "addressbook.json"
REVOCATION_PREFIX = "revocation/"  # then ocsp/<key>.der and crl/<hash of URL>.crl


@dataclass(frozen=True)
class Found:
    """What `lookup` knows about one organisation; registry problems are kept as text."""

    organisation: Organisation
    emails: dict[str, list[str]]  # functional address identifier -> its e-mail forms
    endpoints: tuple[Endpoint, ...]
    encryption_certificates: tuple[x509.Certificate, ...]
    signing_certificates: tuple[x509.Certificate, ...]
    problems: tuple[RegistryError, ...]  # why it cannot receive, or could not be checked


class Registry:
    def __init__(
        self,
        settings: RegistryConfig,
        trust_anchors: list[x509.Certificate],
        sdk_domain: str | None,
        cache: Cache | None = None,
    ) -> None:
        """`trust_anchors`: the federation's roots, for CertPub's certificates;
        `sdk_domain`: our SDK mail domain, to map e-mail addresses (None: no mapping)."""
        if cache is None:
            cache = FileCache(settings.cache_dir)
        verify: ssl.SSLContext | bool = True
        if settings.tls_trust is not None:
            verify = ssl.create_default_context(cafile=str(settings.tls_trust))
        self._http = httpx.Client(verify=verify, timeout=HTTP_TIMEOUT)
        self.book = AddressBook(
            JsonApiSource(self._http, settings.address_book_url),
            cache,
            ADDRESS_BOOK_NAME,
            ADDRESS_BOOK_MAX_AGE,
        )
        self.addresses = AddressMap(sdk_domain, self.book) if sdk_domain else None
        locator = Locator(
            base_url=settings.smp_url,
            sml_zone=settings.sml_zone,
            name_form=settings.sml_name_form,
            nameservers=settings.sml_nameservers,
            port=settings.sml_port,
        )
        self._revocation_http = httpx.Client(
            verify=verify, timeout=HTTP_TIMEOUT, follow_redirects=True
        )
        self.revocation = RevocationChecker(
            cache,
            REVOCATION_PREFIX,
            RevocationPolicy(soft_fail=settings.revocation_soft_fail),
            client=self._revocation_http,
        )
        self.smp = SMPClient(self._http, locator, settings.smp_trust_anchors, self.revocation)
        self.certpub = CertPub(self.smp, trust_anchors, self.revocation)

        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def start_background_refresh(self, interval: float = REFRESH_INTERVAL) -> None:
        """Keep the address book fresh from a thread, so lookups only read the cache."""
        self._refresher = threading.Thread(
            target=self.book.run_refresher,
            args=(self._stop, interval),
            name="address-book-refresh",
            daemon=True,
        )
        self._refresher.start()

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=HTTP_TIMEOUT * 2)
        self._revocation_http.close()
        self._http.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def lookup(self, query: str) -> list[Found]:
        """An e-mail address, an organisation id or a search word -> what is known."""
        if "@" in query:
            if self.addresses is None:
                raise RegistryUnavailable("organisation.sdk_domain is not configured")
            organisations = [self.addresses.resolve(query).organisation]
        elif ORGANISATION_ID.fullmatch(query):
            organisations = [self.book.organisation(query)]
        else:
            organisations = self.book.search(query)
            if not organisations:
                raise UnknownOrganisation(f"nothing in the SDK address book matches {query!r}")
        return [self._describe(organisation) for organisation in organisations]

    def _describe(self, organisation: Organisation) -> Found:
        problems: list[RegistryError] = []
        endpoints: tuple[Endpoint, ...] = ()
        encryption: tuple[x509.Certificate, ...] = ()
        signing: tuple[x509.Certificate, ...] = ()
        try:
            endpoints = self.smp.service_metadata(organisation.id, MESSAGE_DOCUMENT_ID).endpoints
            encryption = self.certpub.encryption_certificates(organisation.id)
            signing = self.certpub.signing_certificates(organisation.id)
        except RegistryError as e:
            problems.append(e)
        emails = {
            a.identifier: self.addresses.forms(a) if self.addresses else []
            for a in organisation.addresses
        }
        return Found(organisation, emails, endpoints, encryption, signing, tuple(problems))
