"""E-mail addresses for SDK recipients, and back (PRODUCT.md, "Addresses").

The organisation `0203:habo.se` is the subdomain `habo.se.<sdk domain>`. The local part
names one of its functional addresses in one of three forms:
- an alias slugged from the address-book name (`registrator`), stable and unique within
  the organisation: names that slug alike get a short suffix from their identifier;
- the functional address identifier itself, where that is a valid local part;
- an encoded form that always works: `fa-` and a hash of the identifier.
"""

import base64
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from .addressbook import AddressBook, FunctionalAddress, Organisation
from .errors import AmbiguousAlias, UnknownFunctionalAddress, UnknownOrganisation

ENCODED_PREFIX = "fa-"
# The plainest forms of RFC 5321's local part and domain, as regular expressions (no
# groups): what needs no quoting and no parser.
DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
PLAIN_DOMAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_ATOM = re.compile(DOT_ATOM)
_NORDIC = str.maketrans(
    {
        "å": "a",
        "ä": "a",
        "ö": "o",
        "ø": "o",
        "æ": "ae",
        "ß": "ss",
        "Å": "a",
        "Ä": "a",
        "Ö": "o",
        "Ø": "o",
        "Æ": "ae",
    }
)
MAX_LOCAL_PART = 64


def slug(name: str) -> str:
    """`Socialtjänsten – Ekonomiskt bistånd` -> `socialtjansten-ekonomiskt-bistand`."""
    ascii_only = unicodedata.normalize("NFKD", name.translate(_NORDIC))
    ascii_only = ascii_only.encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_only).strip("-")[:48].strip("-")


def encoded(identifier: str) -> str:
    digest = hashlib.sha256(identifier.encode()).digest()
    return ENCODED_PREFIX + base64.b32encode(digest).decode().lower()[:26]


def is_local_part(text: str) -> bool:
    return len(text) <= MAX_LOCAL_PART and bool(_ATOM.fullmatch(text))


def _by_slug(organisation: Organisation) -> dict[str, list[FunctionalAddress]]:
    groups: dict[str, list[FunctionalAddress]] = {}
    for address in organisation.addresses:
        groups.setdefault(slug(address.name) or "adress", []).append(address)
    return groups


def aliases(organisation: Organisation) -> dict[str, FunctionalAddress]:
    """alias -> address; names that slug alike, or that equal another address's identifier,
    are told apart by a suffix from their identifier, so no alias can mean two addresses."""
    taken = {a.identifier.lower() for a in organisation.addresses}
    result: dict[str, FunctionalAddress] = {}
    for name, addresses in _by_slug(organisation).items():
        clashes = name in taken and addresses[0].identifier.lower() != name
        if len(addresses) == 1 and not clashes:
            result[name] = addresses[0]
        else:
            for address in addresses:
                result[f"{name}-{encoded(address.identifier)[3:9]}"] = address
    return result


@dataclass(frozen=True)
class Recipient:
    organisation: Organisation
    address: FunctionalAddress


@dataclass(frozen=True)
class _Names:
    """An organisation's functional addresses by each local part that names them: the
    identifier as it is, its encoded form and the alias in lower case."""

    organisation: Organisation
    by_identifier: dict[str, FunctionalAddress]
    by_encoded: dict[str, FunctionalAddress]
    by_alias: dict[str, FunctionalAddress]


class AddressMap:
    """Rewrites between e-mail addresses under `sdk_domain` and SDK functional addresses."""

    def __init__(self, sdk_domain: str, book: AddressBook) -> None:
        self.sdk_domain = sdk_domain.strip(".").lower()
        self.book = book
        self._names: dict[str, _Names] = {}  # by organisation id

    def organisation_id(self, domain: str) -> str:
        domain = domain.strip(".").lower()
        suffix = "." + self.sdk_domain
        if not domain.endswith(suffix) or domain == suffix[1:]:
            raise UnknownOrganisation(f"{domain} is not under the SDK domain {self.sdk_domain}")
        return "0203:" + domain[: -len(suffix)]

    def resolve(self, email: str) -> Recipient:
        """The functional address an e-mail address names, or a NotFound that says why."""
        local, at, domain = email.strip().strip("<>").rpartition("@")
        if not at or not local:
            raise UnknownFunctionalAddress(f"{email!r} is not an e-mail address")
        organisation = self.book.organisation(self.organisation_id(domain))
        names = self._names_of(organisation)
        found = (
            names.by_identifier.get(local)
            or names.by_encoded.get(local.lower())
            or names.by_alias.get(local.lower())
        )
        if found is not None:
            return Recipient(organisation, found)
        same_name = _by_slug(organisation).get(local.lower(), [])
        if len(same_name) > 1:
            choices = ", ".join(sorted(self.email(a) for a in same_name))
            raise AmbiguousAlias(
                f"{email} matches several functional addresses of {organisation.name}: {choices}"
            )
        raise UnknownFunctionalAddress(
            f"{organisation.name} ({organisation.id}) has no functional address {local!r} "
            "in the SDK address book"
        )

    def email(self, address: FunctionalAddress) -> str:
        """The preferred e-mail address: the alias."""
        organisation = self.book.organisation(address.organisation_id)
        names = self._names_of(organisation)
        alias = next(a for a, fa in names.by_alias.items() if fa == address)
        return f"{alias}@{self.domain(address.organisation_id)}"

    def _names_of(self, organisation: Organisation) -> "_Names":
        """The organisation's names, worked out once for it as the book holds it (a
        refreshed book holds new Organisation objects). Working them out slugs every name
        and hashes every identifier: 2 ms for 500 functional addresses, too much for each
        recipient of each mail."""
        names = self._names.get(organisation.id)
        if names is None or names.organisation is not organisation:
            names = _Names(
                organisation,
                by_identifier={a.identifier: a for a in organisation.addresses},
                by_encoded={encoded(a.identifier): a for a in organisation.addresses},
                by_alias=aliases(organisation),
            )
            self._names[organisation.id] = names
        return names

    def domain(self, organisation_id: str) -> str:
        return f"{organisation_id.removeprefix('0203:').lower()}.{self.sdk_domain}"

    def forms(self, address: FunctionalAddress) -> list[str]:
        """Every e-mail address that reaches `address`: alias, identifier, encoded."""
        domain = self.domain(address.organisation_id)
        local_parts = [self.email(address).partition("@")[0]]
        if is_local_part(address.identifier):
            local_parts.append(address.identifier)
        local_parts.append(encoded(address.identifier))
        return [f"{local}@{domain}" for local in dict.fromkeys(local_parts)]
