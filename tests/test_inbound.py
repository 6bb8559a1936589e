"""B's inbound stage against the sandbox: envelopes sent as A (well made, tampered, forged,
misaddressed, repeated, unencrypted, infected, undecryptable, broken) arrive at B's access
point; B's stage judges them, and A's access point receives the kvittens B sends, or none."""

import dataclasses
import email.policy
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import yaml
from lxml import etree
from support import inbound_harness
from support.clamd import EICAR, Clamd
from support.inbound_harness import MAILBOX_B, ORG_A, ORG_B, Harness, message, rejected

from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.plugin import SCANNERS, TemporaryFailure, load
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import xhe, xmldsig, xmlenc
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.sdk.names import MESSAGE_ACTION
from sdk_bridge.sdk.sealing import seal_kvittens
from sdk_bridge.sdk.verdict import ACCEPTED
from sdk_bridge.spool import InboxState, Received

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

harness = inbound_harness.harness


def test_a_valid_message_is_accepted_stored_and_answered(harness: Harness) -> None:
    business = message()
    ebms_id = harness.send(harness.seal(business))
    harness.process()
    assert harness.states() == {ebms_id: "accepted"}
    (kvittens,) = harness.kvittens_at_a()
    assert kvittens.accepted and kvittens.refers_to == business.message_id
    assert (kvittens.sender, kvittens.receiver) == (ORG_B, ORG_A)
    assert harness.handling_service_ids == ["b.registrator"]
    (stored,) = harness.spool.inbox()
    assert stored.state is InboxState.DELIVERING
    assert stored.mail_message_id == f"{business.message_id}@sdk.b.sandbox.test"
    assert stored.reply_references == (("dnr", "A 2026/3", None),)
    assert stored.our_references == (("dnr", "B 2026/7", None),)
    mail = BytesParser(policy=email.policy.default).parsebytes(
        harness.spool.inbound_mail(business.message_id)
    )
    assert isinstance(mail, EmailMessage)
    assert mail["To"] == MAILBOX_B
    assert mail["From"].addresses[0].addr_spec == "registrator@a.sandbox.test.sdk.b.sandbox.test"
    assert mail["From"].addresses[0].display_name == "Sandbox kommun A – Registrator (SDK)"
    assert mail["X-SDK-Sender-Reference"] == "dnr=A 2026/3"
    assert mail["X-SDK-Reference"] == "dnr=B 2026/7"


def test_the_same_envelope_retrieved_again_is_one_message(harness: Harness) -> None:
    """After a crash with retention at the access point, the same ebMS message comes again:
    it is recognised as already stored, and answered once."""
    sealed = harness.seal(message())
    ebms_id = harness.send(sealed)
    harness.process()
    assert not harness.spool.store_received(
        Received(ebms_id, MESSAGE_ACTION, ORG_A, ORG_B, ebms_id, sealed)
    )
    harness.process()
    assert len(harness.kvittens_at_a()) == 1
    assert len(harness.spool.inbox()) == 1


def test_a_duplicate_messageid_is_rejected_and_not_delivered_again(harness: Harness) -> None:
    business = message()
    sealed = harness.seal(business)
    harness.send(sealed)
    harness.process()
    again = harness.send(sealed)  # the same SDK message under a new ebMS MessageId
    harness.process()
    found = harness.kvittens_at_a()
    assert [k.accepted for k in found] == [True, False]
    assert rejected(found[1:], business.message_id) == (
        "BV duplicate: messageId has been received before"
    )
    assert harness.states()[again] == "rejected"
    assert len(harness.spool.inbox()) == 1


def test_two_copies_judged_at_once_are_one_message(harness: Harness) -> None:
    """Judged in the same round, concurrently: the spool lets one in, the other is a
    duplicate."""
    business = message()
    sealed = harness.seal(business)
    harness.send(sealed)
    harness.send(sealed)
    harness.process()
    found = sorted(harness.kvittens_at_a(), key=lambda k: not k.accepted)
    assert [k.accepted for k in found] == [True, False]
    assert rejected(found[1:], business.message_id).startswith("BV duplicate")
    (stored,) = harness.spool.inbox()
    assert harness.spool.inbound_mail(stored.sdk_message_id).startswith(b"From: ")
    assert list((harness.spool.directory / "inbox").iterdir()) == []  # in its row; no orphan


def test_a_tampered_signature_is_rejected(harness: Harness) -> None:
    business = message()
    sealed = harness.seal(business)
    tampered = sealed.replace(b">b.registrator<", b">b.socialtj\xc3\xa4nsten<", 1)
    assert tampered != sealed
    harness.send(tampered)
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id).startswith("SIG security:")
    assert harness.spool.inbox() == []


def test_a_signer_that_is_not_the_senders_certpub_certificate(
    harness: Harness, sandbox: Sandbox
) -> None:
    """Signed by a certificate from the right CA, but not one A publishes."""
    other = sandbox.o2o_pki.issued("not-a") or sandbox.o2o_pki.issue("not-a", key_usage="sign")
    business = message()
    harness.send(harness.seal(business, KeyPair(other.key, other.cert)))
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "SIG security: the signing certificate is not one the sender publishes in CertPub"
    )
    assert harness.spool.inbox() == []


def test_a_functional_address_we_do_not_have(harness: Harness) -> None:
    business = message(recipient=msg.Party(ORG_B, msg.Attention("b.finns-inte")))
    harness.send(harness.seal(business))
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "BV not-found: Wrong or unknown xha:HandlingServiceID"
    )


def test_a_sender_address_missing_from_the_address_book(harness: Harness) -> None:
    business = message(sender=msg.Party(ORG_A, msg.Attention("a.finns-inte")))
    harness.send(harness.seal(business))
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "BV not-found: the sender's functional address is not in the SDK address book"
    )


def test_an_unencrypted_payload_is_rejected(harness: Harness) -> None:
    business = message()
    header = dataclasses.replace(xhe.message_header(business), encrypted=False)
    root = xhe.build(header, msg.to_element(business))
    xmldsig.sign(root, harness.a.signing.key, harness.a.signing.cert)
    harness.send(etree.tostring(root))
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "SIG security: the message payload is not encrypted"
    )


def test_a_refused_attachment_type(harness: Harness) -> None:
    files = (msg.ContentFile("run.exe", "application/x-msdownload", b"MZ..."),)
    business = message(documents=(msg.Document("SDK-Meddelande", ("Hej",), files),))
    harness.send(harness.seal(business))
    harness.process(forbidden_types=frozenset({"application/x-msdownload", "application/pdf"}))
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "BV not-supported: the receiving organisation does not accept this attachment's file type"
    )


def test_pdf_is_always_accepted(harness: Harness) -> None:
    harness.send(harness.seal(message()))  # carries a PDF
    harness.process(forbidden_types=frozenset({"application/pdf"}))
    (kvittens,) = harness.kvittens_at_a()
    assert kvittens.accepted


def test_malware_is_rejected_as_forbidden(
    sandbox: Sandbox, tmp_path: Path, clamd_server: Clamd
) -> None:
    scanner = load(SCANNERS, "clamav", {"host": "127.0.0.1", "port": clamd_server.port})
    harness = Harness(sandbox, tmp_path, scanner)
    files = (msg.ContentFile("eicar.com", "application/octet-stream", EICAR),)
    business = message(documents=(msg.Document("SDK-Meddelande", ("Se bilaga",), files),))
    harness.send(harness.seal(business))
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "BV forbidden: an attachment was found to contain malware"
    )
    assert harness.spool.inbox() == []


@pytest.mark.parametrize("case", ["wrong key", "not well-formed"])
def test_no_kvittens_quarantined(harness: Harness, sandbox: Sandbox, case: str) -> None:
    business = message()
    if case == "wrong key":  # encrypted to A's own certificate: B cannot decrypt it
        payload = xmlenc.encrypt(
            etree.tostring(msg.to_element(business)),
            sandbox.organisations["a"].encryption[-1].cert,
        )
        root = xhe.build(xhe.message_header(business), payload)
        xmldsig.sign(root, harness.a.signing.key, harness.a.signing.cert)
        ebms_id = harness.send(etree.tostring(root))
    else:  # no access point forwards this, so it is put where one would have
        ebms_id = str(uuid.uuid4())
        broken = harness.seal(business)[:-40]
        harness.spool.store_received(
            Received(ebms_id, MESSAGE_ACTION, ORG_A, ORG_B, ebms_id, broken)
        )
    harness.process()
    assert harness.states() == {ebms_id: "quarantined"}
    assert harness.kvittens_at_a() == []
    assert harness.spool.inbox() == []


def test_another_document_type_is_quarantined(harness: Harness) -> None:
    other = Received("other-1", "busdox-docid-qns::urn:other", ORG_A, ORG_B, None, b"<x/>")
    harness.spool.store_received(other)
    harness.process()
    assert harness.states() == {"other-1": "quarantined"}
    assert harness.kvittens_at_a() == []


def config_for(harness: Harness, sandbox: Sandbox) -> Path:
    """B's configuration with the harness's spool, for the admin commands."""
    settings = yaml.safe_load(sandbox.config_path("b").read_text())
    settings["spool"] = str(harness.spool.directory)
    config_file = sandbox.directory / "b-admin.yaml"  # beside org-b.yaml: its relative paths
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    return config_file


def sdk_bridge(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sdk_bridge.cli", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_quarantine_as_an_administrator_sees_it(harness: Harness, sandbox: Sandbox) -> None:
    business = message()
    payload = xmlenc.encrypt(
        etree.tostring(msg.to_element(business)), sandbox.organisations["a"].encryption[-1].cert
    )
    root = xhe.build(xhe.message_header(business), payload)
    xmldsig.sign(root, harness.a.signing.key, harness.a.signing.cert)
    ebms_id = harness.send(etree.tostring(root))
    harness.process()
    config_file = str(config_for(harness, sandbox))
    listed = sdk_bridge("quarantine", "list", "-c", config_file, "--json")
    (held,) = json.loads(listed.stdout)
    assert (held["id"], held["state"]) == (ebms_id, "quarantined")
    assert held["note"].startswith("payload cannot be decrypted")
    shown = sdk_bridge("quarantine", "show", "-c", config_file, ebms_id).stdout
    assert f"XHE message {business.message_id} from {ORG_A} to {ORG_B}" in shown
    assert "Hej" not in shown  # never the content
    assert sdk_bridge("quarantine", "release", "-c", config_file, ebms_id).returncode == 0
    assert harness.states() == {ebms_id: "new"}
    harness.process()  # still not decryptable
    assert harness.states() == {ebms_id: "quarantined"}
    assert sdk_bridge("quarantine", "delete", "-c", config_file, ebms_id).returncode == 0
    assert json.loads(sdk_bridge("quarantine", "list", "-c", config_file, "--json").stdout) == []
    missing = sdk_bridge("quarantine", "show", "-c", config_file, ebms_id)
    assert missing.returncode == 1 and "no such envelope" in missing.stderr
    assert harness.kvittens_at_a() == []


def test_a_lost_message_recovered_by_the_administrator(
    harness: Harness, sandbox: Sandbox, tmp_path: Path
) -> None:
    """B died between retrieve and store: the access point will not give the message out
    again, so B recorded it as lost. The administrator downloads it from the access point's
    retention and imports it; B then judges and answers it as any other."""
    business = message()
    sealed = harness.seal(business)
    ebms_id = harness.send(sealed)
    assert [payload for _, payload in harness._drain("b")] == [sealed]  # taken, never stored
    harness.spool.lost_retrieving(ebms_id, "the access point no longer gives it out")
    config_file = config_for(harness, sandbox)
    (tmp_path / "recovered.xml").write_bytes(sealed)
    command = [sys.executable, "-m", "sdk_bridge.cli", "inbound", "import"]
    command += ["-c", str(config_file), "--ebms-id", ebms_id]
    result = subprocess.run(
        [*command, str(tmp_path / "recovered.xml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "stored" in result.stdout
    harness.process()
    assert harness.states() == {ebms_id: "accepted"}
    (kvittens,) = harness.kvittens_at_a()
    assert kvittens.accepted and kvittens.refers_to == business.message_id
    again = subprocess.run(
        [*command, str(tmp_path / "recovered.xml")], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "already has it" in again.stdout


def test_a_message_rejected_before_is_a_duplicate_when_sent_again(harness: Harness) -> None:
    files = (msg.ContentFile("run.exe", "application/x-msdownload", b"MZ..."),)
    business = message(documents=(msg.Document("SDK-Meddelande", ("Hej",), files),))
    sealed = harness.seal(business)
    harness.send(sealed)
    harness.process(forbidden_types=frozenset({"application/x-msdownload"}))
    harness.send(sealed)
    harness.process()  # now the type would pass, but the messageId was judged already
    first, second = harness.kvittens_at_a()
    assert first.lines[0].detail == "not-supported"
    assert rejected([second], business.message_id).startswith("BV duplicate")
    assert harness.spool.inbox() == []


def test_a_reply_to_a_rejected_message_is_rejected(harness: Harness) -> None:
    """B1.3.3 §5.3 row 11."""
    files = (msg.ContentFile("run.exe", "application/x-msdownload", b"MZ..."),)
    refused = message(documents=(msg.Document("SDK-Meddelande", ("Hej",), files),))
    harness.send(harness.seal(refused))
    harness.process(forbidden_types=frozenset({"application/x-msdownload"}))
    follow_up = message(ref_to_message_id=refused.message_id)
    harness.send(harness.seal(follow_up))
    harness.process()
    _, second = harness.kvittens_at_a()
    assert rejected([second], follow_up.message_id) == (
        "BV not-supported: refToMessageId refers to a message marked as rejected"
    )


def test_a_kvittens_sent_as_a_business_message_is_quarantined(harness: Harness) -> None:
    """Our access point checks Action against the XHE (C3.4.6 §3.1.6), so this one is put
    where an access point that does not would have."""
    answer = kv.Kvittens.answering(
        ACCEPTED, refers_to=str(uuid.uuid4()), sender=ORG_A, receiver=ORG_B
    )
    sealed = seal_kvittens(answer, signer=harness.a.signing, handling_service_id="b.registrator")
    harness.spool.store_received(Received("k-1", MESSAGE_ACTION, ORG_A, ORG_B, None, sealed))
    harness.process()
    assert harness.states() == {"k-1": "quarantined"}
    assert harness.kvittens_at_a() == []


class Unavailable:
    """A scanner that cannot answer now."""

    async def scan(self, data: bytes) -> str | None:
        raise TemporaryFailure("clamd: connection refused")


def test_a_message_that_cannot_be_scanned_now_waits(sandbox: Sandbox, tmp_path: Path) -> None:
    harness = Harness(sandbox, tmp_path, Unavailable())
    ebms_id = harness.send(harness.seal(message()))
    harness.process()
    assert harness.states() == {ebms_id: "new"}
    assert harness.kvittens_at_a() == []
    assert harness.spool.received("new") == []  # not due again at once
    harness.scanner = None
    harness.spool.postpone_received(ebms_id, datetime.now(UTC))  # its pause is over
    harness.process()
    assert harness.states() == {ebms_id: "accepted"}


def test_a_sender_not_in_smp_gets_no_kvittens(harness: Harness, sandbox: Sandbox) -> None:
    ebms_id = harness.send(harness.seal(message()))
    registration = sandbox.smp.registrations.pop(ORG_A)
    try:
        harness.process()
    finally:
        sandbox.smp.registrations[ORG_A] = registration
    assert harness.states() == {ebms_id: "quarantined"}
    assert harness.kvittens_at_a() == []


def test_a_revoked_signing_certificate_is_rejected(harness: Harness, sandbox: Sandbox) -> None:
    """Last in this module: the revocation stays."""
    business = message()
    harness.send(harness.seal(business))
    sandbox.revoke("a", "signing")
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "SIG security: the signing certificate is not one the sender publishes in CertPub"
    )


@pytest.mark.parametrize("mtom", [False, True], ids=["soap", "mtom"])
def test_a_message_too_large_to_take_is_answered_rejected_too_long(
    harness: Harness, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, mtom: bool
) -> None:
    """An answer past the connector's limit (made small here): B reads only its beginning,
    learns who sent it, and answers REJECTED BV too-long (B1.3.3 §5.3); the message is
    marked downloaded at the access point, not recorded lost, and judged once."""
    from sdk_bridge_plugins import domibus_ws

    monkeypatch.setattr(domibus_ws, "MAX_RESPONSE_BYTES", 20_000)
    monkeypatch.setattr(domibus_ws, "HEAD_BYTES", 8_192)
    monkeypatch.setattr(sandbox.access_points["b"], "mtom", mtom)
    business = message(
        documents=(
            msg.Document(
                "SDK-Meddelande",
                ("Stor",),
                (msg.ContentFile("stor.pdf", "application/pdf", b"%PDF" * 9000),),
            ),
        )
    )
    ebms_id = harness.send(harness.seal(business))
    harness.process()
    assert rejected(harness.kvittens_at_a(), business.message_id) == (
        "BV too-long: the message is larger than the 30 MB an SDK message may be; it was not taken"
    )
    assert harness.states() == {ebms_id: "rejected"}
    assert sandbox.access_points["b"].pending() == []  # answered, so marked downloaded
    harness.process()  # nothing more to do: judged once
    assert len(harness.kvittens_at_a()) == 0
