"""The address book as contacts, so users pick SDK recipients by name in Outlook.

`sdk-bridge export-contacts` writes one contact per functional address, with its reply-able
e-mail alias under our SDK domain, in three forms:

- **csv** for an Exchange administrator: columns ready for `New-MailContact`
  (`Import-Csv sdk.csv | % { New-MailContact -Name $_.Name -DisplayName $_.DisplayName
  -ExternalEmailAddress $_.ExternalEmailAddress -Alias $_.Alias }`), UTF-8 with a byte
  order mark so Windows PowerShell reads the Swedish letters right. Exchange wants Name
  and Alias unique and at most 64 characters: both are made so.
- **vcard** (3.0) for Outlook and Thunderbird users to import directly.
- **ldif** (RFC 2849) for a directory the mail clients search (inetOrgPerson entries).
"""

import base64
import csv
import fnmatch
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .addressbook import Organisation
from .addresses import AddressMap, slug

FORMATS = ("csv", "vcard", "ldif")
MAX_EXCHANGE_NAME = 64  # New-MailContact -Name and -Alias
CSV_COLUMNS = (
    "Name", "DisplayName", "ExternalEmailAddress", "Alias", "Company", "Department", "Notes",
)  # fmt: skip
LDIF_BASE = "ou=SDK"
# RFC 2849 SAFE-STRING: ASCII without NUL, CR, LF, not starting with space, ":" or "<".
_LDIF_SAFE = re.compile(
    r"[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*"
)


@dataclass(frozen=True)
class Contact:
    name: str  # unique, at most 64 characters (Exchange's Name)
    display_name: str  # "Habo kommun – Registrator (SDK)", as inbound mail shows it
    email: str  # the alias under our SDK domain: mail to it goes through the bridge
    alias: str  # unique, letters, digits and hyphens (Exchange's Alias)
    organisation: str
    function: str
    identifier: str  # the functional address in the SDK address book
    organisation_id: str


def matching(organisations: Iterable[Organisation], pattern: str | None) -> list[Organisation]:
    """Those whose name or id matches `pattern` (a glob with * and ?, else a part of it;
    case does not matter); all when there is no pattern."""
    if not pattern:
        return list(organisations)
    wanted = pattern.casefold()
    glob = any(c in wanted for c in "*?[")

    def fits(text: str) -> bool:
        text = text.casefold()
        return fnmatch.fnmatchcase(text, wanted) if glob else wanted in text

    return [o for o in organisations if fits(o.name) or fits(o.id)]


def contacts(organisations: Iterable[Organisation], addresses: AddressMap) -> list[Contact]:
    found: list[Contact] = []
    names: set[str] = set()
    aliases: set[str] = set()
    for organisation in sorted(organisations, key=lambda o: (o.name.casefold(), o.id)):
        for address in sorted(organisation.addresses, key=lambda a: a.name.casefold()):
            display = f"{organisation.name} – {address.name} (SDK)"
            email = addresses.email(address)
            found.append(
                Contact(
                    name=_unique(display, names),
                    display_name=display,
                    email=email,
                    alias=_unique(slug(f"sdk {email.partition('@')[2]} {address.name}"), aliases),
                    organisation=organisation.name,
                    function=address.name,
                    identifier=address.identifier,
                    organisation_id=organisation.id,
                )
            )
    return found


def _unique(wanted: str, taken: set[str]) -> str:
    """`wanted` cut to Exchange's 64 characters, with a number added where it is taken."""
    candidate, number = wanted[:MAX_EXCHANGE_NAME], 1
    while candidate.casefold() in taken:
        number += 1
        suffix = f" {number}" if " " in wanted else f"-{number}"
        candidate = wanted[: MAX_EXCHANGE_NAME - len(suffix)] + suffix
    taken.add(candidate.casefold())
    return candidate


def render(found: list[Contact], form: str) -> bytes:
    if form == "csv":
        return to_csv(found).encode("utf-8-sig")
    if form == "vcard":
        return to_vcard(found).encode()
    if form == "ldif":
        return to_ldif(found).encode()
    raise ValueError(f"unknown format {form!r} (choose {', '.join(FORMATS)})")


def to_csv(found: list[Contact]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for c in found:
        note = f"SDK functional address {c.identifier} of {c.organisation_id}"
        writer.writerow(
            (c.name, c.display_name, c.email, c.alias, c.organisation, c.function, note)
        )
    return out.getvalue()


def to_vcard(found: list[Contact]) -> str:
    cards = []
    for c in found:
        lines = [
            "BEGIN:VCARD",
            "VERSION:3.0",
            f"FN:{_vcard_text(c.display_name)}",
            f"N:{_vcard_text(c.display_name)};;;;",
            f"ORG:{_vcard_text(c.organisation)};{_vcard_text(c.function)}",
            f"EMAIL;TYPE=INTERNET,PREF:{_vcard_text(c.email)}",
            f"NOTE:{_vcard_text(f'SDK functional address {c.identifier} of {c.organisation_id}')}",
            "END:VCARD",
        ]
        cards.append("".join(_fold(line) + "\r\n" for line in lines))
    return "".join(cards)


def _vcard_text(value: str) -> str:
    """RFC 2426 escaping of a text value."""
    return (
        value.replace("\\", "\\\\")
        .replace(",", "\\,")
        .replace(";", "\\;")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
    )


def _fold(line: str, limit: int = 75) -> str:
    """Lines longer than 75 octets continue on the next line after a space (never inside
    a UTF-8 sequence)."""
    parts: list[str] = []
    current = ""
    for char in line:
        room = limit if not parts else limit - 1
        if len((current + char).encode()) > room:
            parts.append(current)
            current = ""
        current += char
    parts.append(current)
    return "\r\n ".join(parts)


def to_ldif(found: list[Contact], base: str = LDIF_BASE) -> str:
    entries = []
    for c in found:
        attributes = [
            ("dn", f"cn={_dn_value(c.name)},{base}"),
            ("objectClass", "top"),
            ("objectClass", "person"),
            ("objectClass", "organizationalPerson"),
            ("objectClass", "inetOrgPerson"),
            ("cn", c.name),
            ("sn", c.function),
            ("displayName", c.display_name),
            ("mail", c.email),
            ("o", c.organisation),
            ("ou", c.function),
            ("description", f"SDK functional address {c.identifier} of {c.organisation_id}"),
        ]
        entries.append("".join(_ldif_line(name, value) for name, value in attributes))
    return "version: 1\n" + "\n".join(entries)


def _ldif_line(name: str, value: str) -> str:
    if _LDIF_SAFE.fullmatch(value) and not value.endswith(" "):
        line = f"{name}: {value}"
    else:  # not plain ASCII (åäö, –) or starting oddly: base64, as RFC 2849 asks
        line = f"{name}:: {base64.b64encode(value.encode()).decode()}"
    return "\n ".join(line[i : i + 76] for i in range(0, len(line), 76)) + "\n"


def _dn_value(value: str) -> str:
    """RFC 4514 escaping of an attribute value in a DN."""
    escaped = re.sub(r'([,+"\\<>;=])', r"\\\1", value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" "):
        escaped = escaped[:-1] + "\\ "
    return escaped
