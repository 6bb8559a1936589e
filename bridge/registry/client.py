"""The registry as the rest of the bridge sees it: one object built from the configuration.

It answers the two questions the bridge asks: who is behind an e-mail address and which
certificate to encrypt to (outbound), and which certificates a sender may sign with
(inbound). `lookup` also serves the `sdk-bridge lookup` command.
"""

import ssl
from dataclasses import dataclass
from datetime import timedelta

import httpx
from cryptography import x509

from ..config import Config
from ..sdk.names import MESSAGE_DOCUMENT_ID, ORGANISATION_ID
from .addressbook import AddressBook, JsonApiSource, Organisation
from .addresses import AddressMap
from .certpub import CertPub
from .errors import NotFound, RegistryError, RegistryUnavailable, UnknownOrganisation
from .revocation import RevocationChecker, RevocationPolicy
from .smp import Endpoint, Locator, SMPClient

HTTP_TIMEOUT = 10.0
ADDRESS_BOOK_MAX_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class Found:
    """What `lookup` knows about one organisation; registry problems are kept as text."""

    organisation: Organisation
    emails: dict[str, list[str]]  # functional address identifier -> its e-mail forms
    endpoints: tuple[Endpoint, ...]
    encryption_certificates: tuple[x509.Certificate, ...]
    signing_certificates: tuple[x509.Certificate, ...]
    problems: tuple[str, ...]


class Registry:
    def __init__(self, config: Config) -> None:
        if config.registry is None:
            raise ValueError("the configuration has no registry section")
        settings = config.registry
        verify: ssl.SSLContext | bool = True
        if settings.tls_trust is not None:
            verify = ssl.create_default_context(cafile=str(settings.tls_trust))
        self._http = httpx.Client(verify=verify, timeout=HTTP_TIMEOUT)
        self.book = AddressBook(
            JsonApiSource(self._http, settings.address_book_url),
            settings.cache_dir / "addressbook.json",
            ADDRESS_BOOK_MAX_AGE,
        )
        self.addresses = AddressMap(config.sdk_domain, self.book) if config.sdk_domain else None
        hosts, ports = _nameservers(settings.sml_nameservers)
        locator = Locator(
            base_url=settings.smp_url,
            sml_zone=settings.sml_zone,
            name_form=settings.sml_name_form,
            nameservers=hosts,
            port=ports,
        )
        self.revocation = RevocationChecker(
            settings.cache_dir / "revocation",
            RevocationPolicy(soft_fail=settings.revocation_soft_fail),
            client=httpx.Client(verify=verify, timeout=HTTP_TIMEOUT, follow_redirects=True),
        )
        self.smp = SMPClient(self._http, locator, settings.smp_trust_anchors, self.revocation)
        self.certpub = CertPub(self.smp, config.trust_anchors, self.revocation)

    def close(self) -> None:
        self.revocation.close()
        self._http.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def lookup(self, query: str) -> list[Found]:
        """An e-mail address, an organisation id or a search word -> what is known."""
        self.book.refresh_if_due()
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
        problems: list[str] = []
        endpoints: tuple[Endpoint, ...] = ()
        encryption: tuple[x509.Certificate, ...] = ()
        signing: tuple[x509.Certificate, ...] = ()
        try:
            endpoints = self.smp.service_metadata(organisation.id, MESSAGE_DOCUMENT_ID).endpoints
            encryption = self.certpub.encryption_certificates(organisation.id)
            signing = self.certpub.signing_certificates(organisation.id)
        except (NotFound, RegistryError) as e:
            problems.append(str(e))
        emails = {
            a.identifier: self.addresses.forms(a) if self.addresses else []
            for a in organisation.addresses
        }
        return Found(organisation, emails, endpoints, encryption, signing, tuple(problems))


def _nameservers(entries: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """("127.0.0.1:5353", …) -> hosts and their one port (DNS servers share a port here)."""
    hosts, ports = [], set()
    for entry in entries:
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "53")
        hosts.append(host)
        ports.add(int(port))
    if len(ports) > 1:
        raise ValueError("all sml_nameservers must use the same port")
    return tuple(hosts), ports.pop() if ports else 53
