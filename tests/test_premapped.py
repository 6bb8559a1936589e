"""Mail mapped once: ingress keeps its mapping for the outbound worker, bounded, and the
worker's SDK message is the same whether it takes it from there or maps the spooled
mail again."""

import dataclasses
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

from support.sandboxed import ORG_A, ORG_B

from sdk_bridge.mapping.premapped import Premapped
from sdk_bridge.mapping.to_sdk import MappedMail, map_mail, parse_mail
from sdk_bridge.outbound.worker import OutboundSettings, Worker
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.spool import Envelope, RecipientRecord, SQLiteSpool

TO_B = RecipientRecord("registrator@b.sandbox.test.sdk.a.sandbox.test", ORG_B, "b.registrator")
TO_B2 = RecipientRecord("social@b.sandbox.test.sdk.a.sandbox.test", ORG_B, "b.social")


def mail_bytes(text: str = "Hej B, se bilagan.") -> bytes:
    mail = EmailMessage()
    mail["From"] = "Anna Andersson <anna@kommun-a.se>"
    mail["To"] = "registrator@b.sandbox.test.sdk.a.sandbox.test"
    mail["Subject"] = "Ansökan [sekretess]"
    mail["Message-ID"] = "<m1@kommun-a.se>"
    mail["In-Reply-To"] = "<earlier@kommun-b.se>"
    mail["X-SDK-Reference"] = "dnr=KS 2026/14"
    mail.set_content(text)
    mail.add_attachment(b"%PDF-1.4 x", maintype="application", subtype="pdf", filename="a.pdf")
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


def mapped_of(data: bytes) -> MappedMail:
    return map_mail(parse_mail(data), raw=data)


def test_a_mapping_is_taken_once_per_delivery() -> None:
    premapped, mapped = Premapped(), mapped_of(mail_bytes())
    premapped.keep("m1", mapped, uses=2)
    assert premapped.take("m1") is mapped
    assert premapped.take("m1") is mapped
    assert premapped.take("m1") is None
    assert premapped.take("unknown") is None


def test_large_mail_is_not_kept_and_old_entries_make_room() -> None:
    mapped = mapped_of(mail_bytes("x" * 2000))
    premapped = Premapped(max_bytes=4000, max_entry_bytes=3000)  # about 2000 an entry
    premapped.keep("big", mapped_of(mail_bytes("x" * 4000)), uses=1)
    assert premapped.take("big") is None  # larger than an entry may be
    premapped.keep("first", mapped, uses=1)
    premapped.keep("second", mapped, uses=1)  # over the bound: the first goes
    assert premapped.take("first") is None
    assert premapped.take("second") is mapped


def test_a_mapping_is_not_held_longer_than_its_age() -> None:
    premapped, mapped = Premapped(max_age=0.0), mapped_of(mail_bytes())
    premapped.keep("m1", mapped, uses=1)  # its delivery was claimed before it was kept
    premapped.expire()
    assert premapped.take("m1") is None
    kept = Premapped(max_age=60.0)
    kept.keep("m1", mapped, uses=1)
    kept.expire()
    assert kept.take("m1") is mapped


def test_the_worker_maps_the_same_from_memory_as_from_the_spool(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path / "spool")
    data = mail_bytes()
    envelope = Envelope(mail_from="anna@kommun-a.se", sender_address="a.registrator")
    message_id = spool.accept(envelope, [TO_B, TO_B2], data)
    premapped = Premapped()
    premapped.keep(message_id, mapped_of(data), uses=2)
    settings = OutboundSettings(ORG_A, shared_mailboxes=frozenset({"registrator@kommun-a.se"}))
    unused: Any = None  # _map asks neither the registry nor the access point
    signer = cast(KeyPair, unused)
    with_memory = Worker(settings, spool, unused, unused, signer, premapped=premapped)
    from_spool = Worker(settings, spool, unused, unused, signer)
    for delivery in spool.claim_due(10):
        remembered = with_memory._map(delivery)
        mapped_again = from_spool._map(delivery)
        assert remembered == dataclasses.replace(mapped_again, created=remembered.created)
        assert remembered.confidential and remembered.label == "Ansökan"
    assert premapped.take(message_id) is None  # both deliveries took it
    spool.close()
