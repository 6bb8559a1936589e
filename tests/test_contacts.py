"""`sdk-bridge export-contacts`: the sandbox's address book written as CSV, vCard and LDIF,
each read back with an independent parser (csv, vobject, ldif)."""

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import ldif
import vobject

from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.registry import contacts
from sdk_bridge.registry.addressbook import FunctionalAddress, Organisation
from sdk_bridge.registry.addresses import AddressMap

EXPECTED = {
    "Sandbox kommun A – Registrator (SDK)": "registrator@a.sandbox.test.sdk.a.sandbox.test",
    "Sandbox kommun A – Socialtjänsten (SDK)": "socialtjansten@a.sandbox.test.sdk.a.sandbox.test",
    "Sandbox kommun B – Registrator (SDK)": "registrator@b.sandbox.test.sdk.a.sandbox.test",
    "Sandbox kommun B – Socialtjänsten (SDK)": "socialtjansten@b.sandbox.test.sdk.a.sandbox.test",
}


def export(sandbox: Sandbox, tmp_path: Path, form: str, *more: str) -> bytes:
    out = tmp_path / f"contacts.{form}"
    command = [sys.executable, "-m", "sdk_bridge.cli", "export-contacts"]
    command += ["-c", str(sandbox.config_path("a")), "--format", form, "-o", str(out), *more]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


def test_csv_for_new_mailcontact(sandbox: Sandbox, tmp_path: Path) -> None:
    data = export(sandbox, tmp_path, "csv")
    assert data.startswith(b"\xef\xbb\xbf")  # the BOM Windows PowerShell needs for åäö
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert {r["DisplayName"]: r["ExternalEmailAddress"] for r in rows} == EXPECTED
    assert all(re.fullmatch(r"[a-z0-9-]{1,64}", r["Alias"]) for r in rows)
    assert len({r["Alias"] for r in rows}) == len({r["Name"] for r in rows}) == 4
    registrator = next(r for r in rows if r["DisplayName"].startswith("Sandbox kommun B – R"))
    assert registrator["Company"] == "Sandbox kommun B"
    assert "b.registrator" in registrator["Notes"]


def test_only_some_organisations(sandbox: Sandbox, tmp_path: Path) -> None:
    data = export(sandbox, tmp_path, "csv", "--org", "*kommun b")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert {r["Company"] for r in rows} == {"Sandbox kommun B"}
    assert len(rows) == 2


def test_vcard_for_outlook_and_thunderbird(sandbox: Sandbox, tmp_path: Path) -> None:
    cards = list(vobject.readComponents(export(sandbox, tmp_path, "vcard").decode()))
    assert {card.fn.value: card.email.value for card in cards} == EXPECTED
    assert {tuple(card.org.value) for card in cards} >= {("Sandbox kommun A", "Socialtjänsten")}


def test_ldif_for_a_directory(sandbox: Sandbox, tmp_path: Path) -> None:
    parser = ldif.LDIFParser(io.BytesIO(export(sandbox, tmp_path, "ldif")))
    entries = list(parser.parse())
    assert {e["displayName"][0]: e["mail"][0] for _, e in entries} == EXPECTED
    assert all("inetOrgPerson" in e["objectClass"] for _, e in entries)
    dns = [dn for dn, _ in entries]
    assert len(set(dns)) == 4 and all(dn.endswith(",ou=SDK") for dn in dns)


class Book:
    def __init__(self, organisations: list[Organisation]) -> None:
        self.by_id = {o.id: o for o in organisations}

    def organisation(self, organisation_id: str) -> Organisation:
        return self.by_id[organisation_id]


def test_names_and_aliases_stay_unique_and_short() -> None:
    """Exchange refuses a Name or Alias longer than 64 or already taken."""
    long_name = "Regionen med det mycket långa namnet, för vård; och omsorg " * 2
    organisations = [
        Organisation(
            f"0203:{label}.se",
            long_name,
            tuple(
                FunctionalAddress(f"{label}.{n}", f"Funktion {n}", f"0203:{label}.se", long_name)
                for n in range(3)
            ),
        )
        for label in ("x", "y")
    ]
    addresses = AddressMap("sdk.example.se", Book(organisations))  # type: ignore[arg-type]
    found = contacts.contacts(organisations, addresses)
    assert len({c.name.casefold() for c in found}) == len(found) == 6
    assert all(len(c.name) <= 64 and len(c.alias) <= 64 for c in found)
    assert len({c.alias for c in found}) == 6
    entries = list(ldif.LDIFParser(io.BytesIO(contacts.to_ldif(found).encode())).parse())
    assert [e["cn"][0] for _, e in entries] == [c.name for c in found]
    cards = list(vobject.readComponents(contacts.to_vcard(found)))
    assert [card.fn.value for card in cards] == [c.display_name for c in found]
