"""The sandbox access point against the Domibus WS plugin interface, over verified HTTPS.

Two access points (A for organisation A, B for organisation B) run behind module-wide HTTPS
servers; each test gets fresh ones in its own directory. A small SOAP 1.2 client below sends
what Digg's example `as4_xhe_encrypted.xml` sends, with a real sealed SDK envelope inside.
"""

import dataclasses
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree
from support.domibus_xsd import Watch
from support.parties import ADDRESS_B, ORG_A, ORG_B, keypair, make_message
from support.wsplugin import (
    PARTY_A,
    PARTY_B,
    STALE_ORG,
    Client,
    SoapFault,
    request_envelope,
    submit_envelope,
)

from sdk_bridge.lab.sandbox import accesspoint
from sdk_bridge.lab.sandbox.accesspoint import (
    BACKEND_NS,
    EBMS_NS,
    MAX_DELAY_SECONDS,
    SOAP12_NS,
    WSPLUGIN_NS,
    AccessPoint,
    PluginUser,
    Status,
)
from sdk_bridge.lab.sandbox.web import Server
from sdk_bridge.lab.testpki import Identity, make_pki
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk.names import (
    DOCUMENT_ID_SCHEME,
    KVITTENS_ACTION,
    MESSAGE_ACTION,
    PARTY_SCHEME,
    PROCESS_ID,
    q,
)
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_kvittens, seal_message
from sdk_bridge.sdk.verdict import ACCEPTED, Outcome
from sdk_bridge_plugins.domibus_xop import resolve, unpack

# Fixtures: module-wide HTTPS servers, fresh access points per test.


class Slot:
    """Lets a module-wide server serve whichever access point the current test built."""

    app: AccessPoint | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context that trusts only the test CA)."""
    pki = make_pki(tmp_path_factory.mktemp("tls"), key_size=2048)
    server = pki.issue("ap.sandbox.test", key_usage="sign", hosts=["127.0.0.1", "localhost"])
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server.cert_pem, server.key_pem)
    return server_context, ssl.create_default_context(cafile=str(pki.chain_pem))


@pytest.fixture(scope="module")
def servers(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[dict[str, tuple[Slot, Server]]]:
    slots = {"a": Slot(), "b": Slot()}
    running = {name: (slot, Server(slot, tls=tls[0]).start()) for name, slot in slots.items()}
    yield running
    for _, server in running.values():
        server.stop()


@dataclasses.dataclass
class Federation:
    root: Path
    servers: dict[str, tuple[Slot, Server]]
    verify: ssl.SSLContext
    routes: dict[str, AccessPoint] = dataclasses.field(default_factory=dict)
    aps: dict[str, AccessPoint] = dataclasses.field(default_factory=dict)

    def build(self, name: str, **options: Any) -> AccessPoint:
        """(Re)create access point `name` on its directory, as a restarted sandbox does."""
        party, org = {"a": (PARTY_A, ORG_A), "b": (PARTY_B, ORG_B)}[name]
        options.setdefault("users", {f"user-{name}": PluginUser(f"secret-{name}", org)})
        ap = AccessPoint(self.root / name, party, {org}, route=self.routes.get, **options)
        if name in self.aps:  # a test watching the wire goes on watching
            ap.observer = self.aps[name].observer
        self.aps[name] = ap
        self.servers[name][0].app = ap
        self.routes[org] = ap
        if name == "b":
            self.routes[STALE_ORG] = ap
        return ap

    def client(
        self,
        name: str,
        password: str | None = None,
        *,
        user: str | None = None,
        ns: str = BACKEND_NS,
    ) -> Client:
        url = self.servers[name][1].url
        password = password or f"secret-{name}"
        return Client(url, self.verify, user or f"user-{name}", password, ns=ns)

    @property
    def a(self) -> AccessPoint:
        return self.aps["a"]

    @property
    def b(self) -> AccessPoint:
        return self.aps["b"]


@pytest.fixture
def fed(
    servers: dict[str, tuple[Slot, Server]],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    tmp_path: Path,
) -> Federation:
    federation = Federation(tmp_path, servers, tls[1])
    federation.build("a")
    federation.build("b")
    return federation


@pytest.fixture
def sealed(alice: Identity, bob: Identity) -> bytes:
    """A real SDK envelope from A to B: encrypted to B, signed by A."""
    return seal_message(make_message(), signer=keypair(alice), recipient_cert=bob.cert)


def seal_to(alice: Identity, bob: Identity, organisation: str) -> bytes:
    recipient = msg.Party(organisation, msg.Attention(ADDRESS_B, "Registrator"))
    message = make_message(recipient=recipient)
    return seal_message(message, signer=keypair(alice), recipient_cert=bob.cert)


# The round trip.


def test_submit_list_retrieve_open(fed: Federation, sealed: bytes, receiver_b: Receiver) -> None:
    a, b = fed.client("a"), fed.client("b")
    message_id, conversation_id = f"{uuid.uuid4()}@sdk-bridge.test", str(uuid.uuid4())
    assert a.submit(sealed, message_id=message_id, conversation_id=conversation_id) == message_id
    assert a.status(message_id) == Status.ACKNOWLEDGED
    assert b.pending() == [message_id]
    assert b.status(message_id) == Status.RECEIVED

    user, payload = b.retrieve(message_id)
    assert payload == sealed  # byte-identical
    opened = open_envelope(payload, receiver_b)
    assert opened.verdict.outcome is Outcome.ACCEPTED, opened.verdict.line()

    def text(path: str) -> str | None:
        return user.findtext("/".join(q(EBMS_NS, step) for step in path.split("/")))

    assert text("MessageInfo/MessageId") == message_id
    assert text("PartyInfo/From/PartyId") == PARTY_A
    assert text("PartyInfo/To/PartyId") == PARTY_B
    assert text("CollaborationInfo/Service") == PROCESS_ID
    assert text("CollaborationInfo/Action") == MESSAGE_ACTION
    assert text("CollaborationInfo/ConversationId") == conversation_id
    properties = {
        p.get("name"): (p.text, p.get("type"))
        for p in user.iter(q(EBMS_NS, "Property"))
        if p.get("name") != "MimeType"
    }
    assert properties == {
        "originalSender": (ORG_A, PARTY_SCHEME),
        "finalRecipient": (ORG_B, PARTY_SCHEME),
    }

    # Digg's P-Mode: retention_downloaded=0, so the message is gone at once.
    assert b.pending() == []
    assert b.status(message_id) == Status.DELETED
    with pytest.raises(SoapFault) as fault:
        b.retrieve(message_id)
    assert fault.value.http_status == 500
    assert fault.value.reason == f"Message not found, id [{message_id}]"
    assert fault.value.code == "EBMS:0004"
    assert not list((fed.root / "b" / "payloads").glob("received-*"))


def test_retention_keeps_a_downloaded_message_until_it_runs_out(
    fed: Federation, sealed: bytes
) -> None:
    now = [datetime.now(UTC)]
    fed.build("b", retention_downloaded_minutes=5, clock=lambda: now[0])
    b = fed.client("b")
    message_id = fed.client("a").submit(sealed)
    assert b.retrieve(message_id)[1] == sealed
    with pytest.raises(SoapFault) as fault:  # given out once, as Domibus does
        b.retrieve(message_id)
    assert fault.value.text is not None
    assert "already downloaded" in fault.value.text
    assert b.status(message_id) == Status.DOWNLOADED
    assert b.pending() == []
    access_point = fed.aps["b"]
    assert access_point.retained_payload(message_id) == sealed  # the console still has it
    now[0] += timedelta(minutes=5)
    assert b.status(message_id) == Status.DELETED
    assert access_point.retained_payload(message_id) is None


def test_message_id_is_generated_when_absent(fed: Federation, sealed: bytes) -> None:
    message_id = fed.client("a").submit(sealed, message_id=None)
    local, _, party = message_id.partition("@")
    assert uuid.UUID(local) and party == PARTY_A
    assert fed.client("b").pending() == [message_id]


def test_duplicate_message_id_is_refused(fed: Federation, sealed: bytes) -> None:
    a = fed.client("a")
    message_id = a.submit(sealed)
    with pytest.raises(SoapFault) as fault:
        a.submit(sealed, message_id=message_id)
    assert fault.value.reason == "Message submission failed"
    assert fault.value.code == "EBMS:0004"
    assert fault.value.text == (
        f"Message with id [{message_id}] already exists. Message identifiers must be unique"
    )
    assert fed.client("b").pending() == [message_id]  # delivered once


def test_unknown_recipient_is_refused_at_submission(
    fed: Federation, alice: Identity, bob: Identity
) -> None:
    """No SMP metadata: Domibus's dynamic discovery fails inside submitMessage."""
    a = fed.client("a")
    message_id = str(uuid.uuid4())
    unknown = "0203:unknown.example.se"
    with pytest.raises(SoapFault) as fault:
        a.submit(seal_to(alice, bob, unknown), message_id=message_id, final_recipient=unknown)
    assert fault.value.code == "EBMS:0004"
    assert (fault.value.text or "").startswith("Could not fetch metadata from SMP")
    assert a.status(message_id) == Status.NOT_FOUND
    assert [e["errorCode"] for e in a.errors(message_id)] == ["EBMS_0004"]


def test_recipient_not_serviced_ends_in_send_failure(
    fed: Federation, alice: Identity, bob: Identity
) -> None:
    """The SMP names B, but B does not serve the recipient: EBMS:0004 NOT_SERVICED (C3.2.1 §2.5)."""
    a = fed.client("a")
    message_id = a.submit(seal_to(alice, bob, STALE_ORG), final_recipient=STALE_ORG)
    assert a.status(message_id) == Status.SEND_FAILURE
    (error,) = a.errors(message_id)
    assert error["errorCode"] == "EBMS_0004"
    assert error["errorDetail"] == "NOT_SERVICED"
    assert error["messageInErrorId"] == message_id
    assert error["mshRole"] == "SENDING"
    assert fed.client("b").pending() == []
    assert a.errors("no-such-id") == []


def test_authentication_and_transport(fed: Federation, sealed: bytes) -> None:
    envelope = request_envelope("listPendingMessagesRequest")
    # Domibus's plugin-user interceptor: a failed login is a SOAP fault with HTTP 500.
    with pytest.raises(SoapFault) as fault:
        fed.client("a", password="wrong").call(envelope)
    assert (fault.value.http_status, fault.value.reason) == (500, accesspoint.LOGIN_FAILED)
    anonymous = httpx.post(
        fed.servers["a"][1].url + "/services/backend", content=envelope, verify=fed.verify
    )
    assert anonymous.status_code == 500
    assert (
        httpx.post(fed.servers["a"][1].url, content=envelope, verify=fed.verify).status_code == 404
    )
    assert fed.client("b").post(envelope, content_type="text/xml").status_code == 415
    soap11 = envelope.replace(SOAP12_NS.encode(), b"http://schemas.xmlsoap.org/soap/envelope/")
    with pytest.raises(SoapFault) as fault:
        fed.client("a").call(soap11)
    assert fault.value.value == "soap:VersionMismatch"
    with pytest.raises(SoapFault):
        fed.client("a").call(b"<not-xml")
    with pytest.raises(SoapFault) as fault:
        fed.client("a").call(request_envelope("statusRequest", ""))
    assert (fault.value.reason, fault.value.code) == ("Message ID is empty", "EBMS:0004")
    assert fed.client("a").status("unknown-id") == Status.NOT_FOUND


BAD_SUBMISSIONS: dict[str, tuple[dict[str, Any], str]] = {
    "wrong Service": ({"service": "bdx:otherprocess"}, "EBMS:0010"),
    "wrong Service type": ({"service_type": "urn:example:process"}, "EBMS:0010"),
    "wrong Action": ({"action": f"{DOCUMENT_ID_SCHEME}::urn:example:doc"}, "EBMS:0010"),
    "kvittens Action on a message": ({"action": KVITTENS_ACTION}, "EBMS:0004"),
    "missing finalRecipient": ({"final_recipient": None}, "EBMS:0010"),
    "missing originalSender": ({"original_sender": None}, "EBMS:0010"),
    "property not in the P-Mode": ({"extra_properties": (("trackingId", "1"),)}, "EBMS:0010"),
    "property type not iso6523": ({"property_type": "urn:example"}, "EBMS:0004"),
    "originalSender not served here": ({"original_sender": ORG_B}, "EBMS:0004"),
    "finalRecipient is not the XHE ToParty": ({"final_recipient": ORG_A}, "EBMS:0004"),
    "no ConversationId": ({"conversation_id": None}, "EBMS:0004"),
    "From is another access point": ({"from_party": "AP-X"}, "EBMS:0010"),
    "payload is XML but not an XHE": ({"payload": b"<a/>"}, "EBMS:0004"),
    "payload is not XML": ({"payload": b"%PDF-1.7"}, "EBMS:0004"),
    "PartInfo without its payload": ({"payload_id": "cid:other"}, "EBMS_0004"),
    "part other than cid:message": ({"href": "cid:x", "payload_id": "cid:x"}, "EBMS:0010"),
    "MimeType not text/xml": ({"mime_type": "application/pdf"}, "EBMS:0010"),
    "MessageId too long": ({"message_id": "x" * 256}, "EBMS:0003"),
}


@pytest.mark.parametrize("case", BAD_SUBMISSIONS)
def test_bad_submissions_are_refused_with_faults(fed: Federation, sealed: bytes, case: str) -> None:
    fields, code = BAD_SUBMISSIONS[case]
    fields = {"message_id": str(uuid.uuid4()), "payload": sealed, **fields}
    a = fed.client("a")
    with pytest.raises(SoapFault) as fault:
        a.submit(**fields)
    assert fault.value.http_status == 500
    assert fault.value.value == "soap:Receiver"
    assert fault.value.code == code, fault.value.text
    assert fault.value.text
    assert a.status(fields["message_id"][:255]) == Status.NOT_FOUND
    assert fed.client("b").pending() == []


def test_kvittens_travels_back(fed: Federation, bob: Identity) -> None:
    kvittens = kv.Kvittens.answering(
        ACCEPTED, refers_to=str(uuid.uuid4()), sender=ORG_B, receiver=ORG_A
    )
    sealed = seal_kvittens(kvittens, signer=keypair(bob), handling_service_id=ADDRESS_B)
    message_id = fed.client("b").submit(
        sealed,
        action=KVITTENS_ACTION,
        from_party=PARTY_B,
        original_sender=ORG_B,
        final_recipient=ORG_A,
    )
    user, payload = fed.client("a").retrieve(message_id)
    assert payload == sealed
    assert user.findtext(f".//{q(EBMS_NS, 'Action')}") == KVITTENS_ACTION
    with pytest.raises(SoapFault):  # a kvittens envelope under the message Action
        fed.client("b").submit(
            sealed, from_party=PARTY_B, original_sender=ORG_B, final_recipient=ORG_A
        )


def test_oversized_request_is_refused(
    fed: Federation, sealed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesspoint, "MAX_REQUEST_BYTES", 1000)
    body = submit_envelope(sealed, message_id=str(uuid.uuid4()), conversation_id="c")
    assert fed.client("a").post(body).status_code == 413


def test_payload_value_that_is_not_base64(fed: Federation, sealed: bytes) -> None:
    with pytest.raises(SoapFault) as fault:
        fed.client("a").submit(sealed, value="not base64!")
    assert fault.value.value == "soap:Sender"


def test_refused_submission_can_be_corrected_and_resent(fed: Federation, sealed: bytes) -> None:
    """A refused submission leaves nothing behind that would make it a duplicate."""
    a = fed.client("a")
    message_id = str(uuid.uuid4())
    with pytest.raises(SoapFault):
        a.submit(sealed, message_id=message_id, service="bdx:wrong")
    assert a.errors(message_id)[0]["errorCode"] == "EBMS_0010"  # Domibus logs it
    assert a.submit(sealed, message_id=message_id) == message_id


def test_conversation_id_rules(fed: Federation, alice: Identity, bob: Identity) -> None:
    message = make_message(conversation_id=str(uuid.uuid4()))
    sealed = seal_message(message, signer=keypair(alice), recipient_cert=bob.cert)
    a = fed.client("a")
    fed.build("a", conversation_id_rule="envelope")  # C3.2.1 §2.7: the XHE Header ID
    with pytest.raises(SoapFault):
        a.submit(sealed, conversation_id=message.conversation_id)
    a.submit(sealed, message_id=str(uuid.uuid4()), conversation_id=message.message_id)
    fed.build("a", conversation_id_rule="optional")  # Domibus makes one up
    message_id = a.submit(sealed, conversation_id=None)
    user, _ = fed.client("b").retrieve(message_id)
    assert user.findtext(f".//{q(EBMS_NS, 'ConversationId')}")
    with pytest.raises(ValueError):
        fed.build("a", conversation_id_rule="sometimes")


def test_refuse_and_delay_switches(fed: Federation, sealed: bytes) -> None:
    a = fed.client("a")
    fed.a.refuse_submissions("fault", count=1)
    with pytest.raises(SoapFault) as fault:
        a.submit(sealed)
    assert fault.value.code == "EBMS:0004"
    a.submit(sealed)  # the refusal was for one submission

    fed.a.refuse_submissions("unavailable")
    body = submit_envelope(sealed, message_id=str(uuid.uuid4()), conversation_id="c")
    assert a.post(body).status_code == 503
    assert a.post(body).status_code == 503
    assert a.pending() == []  # other operations still answer
    fed.a.clear_fault_switches()
    assert a.post(body).status_code == 200

    fed.a.delay_submissions(0.5, count=1)
    started = time.monotonic()
    a.submit(sealed)
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    a.submit(sealed)
    assert time.monotonic() - started < 0.5
    with pytest.raises(ValueError):
        fed.a.delay_submissions(MAX_DELAY_SECONDS + 1)
    with pytest.raises(ValueError):
        fed.a.refuse_submissions("silently")  # type: ignore[arg-type]


def test_state_survives_a_restart(fed: Federation, sealed: bytes) -> None:
    a = fed.client("a")
    delivered, kept = a.submit(sealed), a.submit(sealed)
    fed.client("b").retrieve(delivered)
    fed.build("a")
    fed.build("b")
    b = fed.client("b")
    assert b.pending() == [kept]
    assert b.status(delivered) == Status.DELETED
    assert b.retrieve(kept)[1] == sealed
    assert a.status(kept) == Status.ACKNOWLEDGED
    with pytest.raises(SoapFault) as fault:
        a.submit(sealed, message_id=kept)
    assert "already exists" in (fault.value.text or "")


def test_both_directions_at_once(fed: Federation, alice: Identity, bob: Identity) -> None:
    """Concurrent submissions A→B and B→A: no deadlock, nothing lost."""
    to_b = [seal_message(make_message(), signer=keypair(alice), recipient_cert=bob.cert)] * 4
    to_a = []
    for _ in range(4):
        message = make_message()
        message = dataclasses.replace(message, sender=message.recipient, recipient=message.sender)
        to_a.append(seal_message(message, signer=keypair(bob), recipient_cert=alice.cert))
    sent: list[str] = []

    def send(name: str, payload: bytes, sender: str, recipient: str) -> None:
        party = {"a": PARTY_A, "b": PARTY_B}[name]
        client = fed.client(name)
        sent.append(
            client.submit(
                payload, original_sender=sender, final_recipient=recipient, from_party=party
            )
        )

    threads = [threading.Thread(target=send, args=("a", p, ORG_A, ORG_B)) for p in to_b]
    threads += [threading.Thread(target=send, args=("b", p, ORG_B, ORG_A)) for p in to_a]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(sent) == 8
    assert len(fed.client("a").pending()) == 4
    assert len(fed.client("b").pending()) == 4


# Domibus 5.2's current interface, plugin users and the other switches.


@pytest.fixture
def watched(fed: Federation) -> Iterator[Watch]:
    """Every request and answer of the test checked against Domibus's XSDs."""
    watch = Watch()
    for ap in fed.aps.values():
        ap.observer = watch
    yield watch
    watch.check()


def test_current_interface_keeps_a_message_until_marked_downloaded(
    fed: Federation, sealed: bytes, watched: Watch
) -> None:
    a, b = fed.client("a", ns=WSPLUGIN_NS), fed.client("b", ns=WSPLUGIN_NS)
    message_id = a.submit(sealed)
    assert a.status(message_id, "SENDING") == Status.ACKNOWLEDGED
    assert b.status(message_id, "RECEIVING") == Status.RECEIVED
    assert b.pending(finalRecipient=ORG_B) == [message_id]
    assert b.pending(finalRecipient=ORG_A) == [message_id]  # a ROLE_USER's filter is its own
    for _ in range(2):  # not marked: still pending, and given out again
        _, payload = b.retrieve(message_id, mark=False)
        assert payload == sealed
        assert b.pending() == [message_id]
    b.mark(message_id)
    assert b.pending() == []
    assert fed.b.status(message_id) == Status.DELETED
    with pytest.raises(SoapFault) as fault:
        b.mark(message_id)
    assert (fault.value.code, fault.value.text) == (
        "WS_PLUGIN:0009",
        f"No message with id [{message_id}] found",
    )
    with pytest.raises(SoapFault) as fault:
        b.retrieve(message_id, mark=False)
    assert fault.value.code == "WS_PLUGIN:0009"
    assert b.errors(message_id) == []


def test_plugin_users_see_their_organisation_or_all(
    fed: Federation, sealed: bytes, alice: Identity, bob: Identity, watched: Watch
) -> None:
    ap = fed.build(
        "b",
        users={
            "user-b": PluginUser("secret-b", ORG_B),
            "admin": PluginUser("secret-admin"),
            "other": PluginUser("secret-other", STALE_ORG),
        },
    )
    ap.organisations = frozenset({ORG_B, STALE_ORG})  # one access point, two organisations
    a = fed.client("a", ns=WSPLUGIN_NS)
    ours = a.submit(sealed)
    theirs = a.submit(seal_to(alice, bob, STALE_ORG), final_recipient=STALE_ORG)
    user = fed.client("b", ns=WSPLUGIN_NS)
    admin = fed.client("b", "secret-admin", user="admin", ns=WSPLUGIN_NS)
    other = fed.client("b", "secret-other", user="other", ns=WSPLUGIN_NS)
    assert user.pending() == [ours]
    assert other.pending(finalRecipient=ORG_B) == [theirs]  # overridden by its originalUser
    assert admin.pending() == [ours, theirs]
    # As Domibus 5.2: the filter is the user's originalUser, none for an administrator...
    assert admin.pending(finalRecipient=ORG_B) == [ours, theirs]
    ap.unsecure_login = True  # ...unless unsecure login is allowed
    assert admin.pending(finalRecipient=ORG_B) == [ours]
    ap.unsecure_login = False
    assert admin.pending(messageId=theirs, originalSender=ORG_A) == [theirs]
    with pytest.raises(SoapFault, match="not allowed to handle this message"):
        other.retrieve(ours, mark=False)
    with pytest.raises(SoapFault, match="not allowed to handle this message"):
        other.mark(ours)
    assert user.pending() == [ours]
    admin.retrieve(theirs, mark=False)  # an administrator may
    # The deprecated interface has no filter: a ROLE_USER still sees only its own.
    assert fed.client("b", "secret-other", user="other").pending() == [theirs]


def test_intermediate_statuses_come_before_the_final_one(
    fed: Federation, sealed: bytes, watched: Watch
) -> None:
    fed.a.intermediate_statuses()
    a = fed.client("a", ns=WSPLUGIN_NS)
    message_id = a.submit(sealed)
    seen = [a.status(message_id, "SENDING") for _ in range(5)]
    assert seen == [*accesspoint.INTERMEDIATE, Status.ACKNOWLEDGED, Status.ACKNOWLEDGED]


def test_a_message_between_two_organisations_of_one_access_point_has_two_roles(
    fed: Federation, alice: Identity, bob: Identity, watched: Watch
) -> None:
    """Sent and received by one access point: getStatus without a role is ambiguous."""
    fed.routes[ORG_B] = fed.a
    fed.a.organisations = frozenset({ORG_A, ORG_B})
    fed.a.users["user-a"] = PluginUser("secret-a")  # an administrator
    a = fed.client("a", ns=WSPLUGIN_NS)
    message_id = a.submit(seal_to(alice, bob, ORG_B))
    assert a.status(message_id, "SENDING") == Status.ACKNOWLEDGED
    assert a.status(message_id, "RECEIVING") == Status.RECEIVED
    with pytest.raises(SoapFault) as fault:
        a.status(message_id)
    assert fault.value.code == "WS_PLUGIN:0007"
    with pytest.raises(SoapFault) as fault:
        a.errors(message_id)
    assert fault.value.code == "WS_PLUGIN:00010"
    with pytest.raises(SoapFault) as fault:
        a.errors("no-such-id")
    assert fault.value.code == "WS_PLUGIN:0009"


def test_domibus_4_serves_only_the_deprecated_interface(fed: Federation, sealed: bytes) -> None:
    fed.build("a", domibus="4")
    with pytest.raises(AssertionError):  # 404, not SOAP
        fed.client("a", ns=WSPLUGIN_NS).call(request_envelope("listPendingMessagesRequest"))
    assert fed.client("a", ns=WSPLUGIN_NS).post(b"").status_code == 404
    assert fed.client("a").pending() == []


@pytest.mark.parametrize(("path", "ns"), [("wsplugin", WSPLUGIN_NS), ("backend", BACKEND_NS)])
def test_each_interface_has_a_wsdl(fed: Federation, path: str, ns: str) -> None:
    response = httpx.get(f"{fed.servers['a'][1].url}/services/{path}?wsdl", verify=fed.verify)
    assert response.status_code == 200
    assert etree.fromstring(response.content).get("targetNamespace") == ns


def test_mtom_answer_carries_the_payload_as_a_part(
    fed: Federation, sealed: bytes, watched: Watch
) -> None:
    fed.build("b", mtom=True)
    message_id = fed.client("a", ns=WSPLUGIN_NS).submit(sealed)
    envelope = request_envelope(
        "retrieveMessageRequest",
        message_id,
        ns=WSPLUGIN_NS,
        attributes={"markAsDownloaded": "false"},
    )
    response = fed.client("b", ns=WSPLUGIN_NS).post(envelope)
    assert response.headers["content-type"].startswith("multipart/related")
    unpacked = unpack(response.headers["content-type"], response.content)
    root = etree.fromstring(unpacked.root)
    (value,) = root.iter("value")
    assert bytes(resolve(root, unpacked)[value]) == sealed
