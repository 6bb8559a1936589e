"""The Domibus WS plugin connector against the sandbox's access points, over verified HTTPS.

The connector is loaded as the bridge loads it, through the `sdk_bridge.access_points`
entry point, and driven with `asyncio.run` (no pytest-asyncio). One sandbox federation
with two organisations serves the whole module; a few answers no access point gives on
request (a proxy's 502, a corrupt payload) come from handlers behind a local HTTP server.

Fault mapping under test (sdk_bridge_plugins/domibus_ws.py explains why):
duplicate MessageId → DuplicateSubmission; no SMP metadata or a header the P-Mode refuses →
PermanentFailure; 503, an unrecognised EBMS:0004 fault ("the access point is refusing
submissions"), a wrong password, a stopped server, a timeout → TemporaryFailure.
"""

import asyncio
import base64
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from lxml import etree
from support.domibus_xsd import Watch
from support.parties import make_message
from support.sandboxed import ORG_A, ORG_B

from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.lab.sandbox.smp import Registration
from sdk_bridge.lab.sandbox.web import Server
from sdk_bridge.plugin import (
    ACCESS_POINTS,
    DuplicateSubmission,
    PermanentFailure,
    PluginError,
    Submission,
    TemporaryFailure,
    load,
)
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import xhe, xmlsafe
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.sdk.names import DOCUMENT_ID_SCHEME, MESSAGE_ACTION
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_message
from sdk_bridge.sdk.verdict import ACCEPTED
from sdk_bridge.sdk.xmlsafe import parse
from sdk_bridge_plugins import domibus_ws
from sdk_bridge_plugins.domibus_ws import MessageNotFound, UnreadableMessage

STALE_ORG = "0203:stale.sandbox.test"  # the SMP names B's access point, which does not serve it
DIGG_EXAMPLE = Path(
    "/work/shared/sdk-spec/message-v3/sdk-meddelande-v3.1/example/as4_xhe_encrypted.xml"
)

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _switches_off(sandbox: Sandbox) -> Iterator[None]:
    yield
    for ap in sandbox.access_points.values():
        ap.clear_fault_switches()
    sandbox.smp.registrations.pop(STALE_ORG, None)


def settings(sandbox: Sandbox, label: str, **changes: Any) -> dict[str, Any]:
    """The connector's settings from the configuration the sandbox wrote, paths made absolute,
    plus this access point's PartyId."""
    config = yaml.safe_load(sandbox.config_path(label).read_text())["access_point"]
    config["password_file"] = str(sandbox.directory / config["password_file"])
    config["tls_trust"] = str(sandbox.directory / config["tls_trust"])
    config["party_id"] = f"ap-{label}"
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


def run(config: dict[str, Any], use: Callable[[domibus_ws.DomibusWS], Awaitable[T]]) -> T:
    """Load the connector as the bridge does, use it in a fresh event loop, close it."""

    async def main() -> T:
        ap = load(ACCESS_POINTS, "domibus-ws", config)
        assert isinstance(ap, domibus_ws.DomibusWS)
        try:
            return await use(ap)
        finally:
            await ap.close()

    return asyncio.run(main())


def sealed_submission(sandbox: Sandbox, recipient: str = ORG_B) -> Submission:
    """A real SDK envelope from A, encrypted to B's key, its XHE ID as the ebMS MessageId."""
    a, b = sandbox.organisations["a"], sandbox.organisations["b"]
    message = make_message(
        sender=msg.Party(ORG_A, msg.Attention("a.registrator")),
        recipient=msg.Party(recipient, msg.Attention("b.registrator")),
    )
    signer = KeyPair(a.signing[-1].key, a.signing[-1].cert)
    payload = seal_message(message, signer=signer, recipient_cert=b.encryption[-1].cert)
    header = xhe.read_header(parse(payload, max_bytes=64_000_000))
    return Submission(
        message_id=header.id,
        payload=payload,
        action=MESSAGE_ACTION,
        original_sender=ORG_A,
        final_recipient=recipient,
        conversation_id=message.conversation_id,
    )


def submit(config: dict[str, Any], submission: Submission) -> str:
    return run(config, lambda ap: ap.submit(submission))


# --- the round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("interface", ["wsplugin", "backend"])
def test_submit_pending_retrieve_status(sandbox: Sandbox, interface: str) -> None:
    """The whole exchange on either interface, every request and answer valid against
    Domibus's XSD of that interface."""
    watch = Watch()
    for ap in sandbox.access_points.values():
        ap.observer = watch
    submission = sealed_submission(sandbox)
    path = "/services/wsplugin" if interface == "wsplugin" else "/services/backend"
    a, b = (
        settings(sandbox, label, interface=interface, url=sandbox.https.url + f"/ap/{label}{path}")
        for label in "ab"
    )
    try:
        assert submit(a, submission) == submission.message_id
        assert run(a, lambda ap: ap.status(submission.message_id)) == "ACKNOWLEDGED"
        assert run(a, lambda ap: ap.errors(submission.message_id)) == []
        assert submission.message_id in run(b, lambda ap: ap.pending([ORG_B]))

        retrieved = run(b, lambda ap: ap.retrieve(submission.message_id))
        assert retrieved.payload == submission.payload  # byte-identical
        assert retrieved.message_id == submission.message_id
        assert retrieved.action == MESSAGE_ACTION
        assert retrieved.original_sender == ORG_A
        assert retrieved.final_recipient == ORG_B
        assert retrieved.conversation_id == submission.conversation_id
        organisation_a, organisation_b = sandbox.organisations["a"], sandbox.organisations["b"]
        receiver = Receiver(
            decryption_keys=[KeyPair(i.key, i.cert) for i in organisation_b.encryption],
            sender_signing_certs=[i.cert for i in organisation_a.signing],
            trust_anchors=[sandbox.o2o_pki.issuing_ca.cert, sandbox.o2o_pki.root.cert],
            our_parties={ORG_B},
        )
        assert open_envelope(retrieved.payload, receiver).verdict == ACCEPTED

        if interface == "wsplugin":  # kept until marked downloaded, and retrievable again
            assert submission.message_id in run(b, lambda ap: ap.pending([ORG_B]))
            again = run(b, lambda ap: ap.retrieve(submission.message_id))
            assert again.payload == submission.payload
            run(b, lambda ap: ap.acknowledge(submission.message_id))
            run(b, lambda ap: ap.acknowledge(submission.message_id))  # again: no error
        # Digg's P-Mode keeps nothing after download: gone from the list, not retrievable.
        assert submission.message_id not in run(b, lambda ap: ap.pending([ORG_B]))
        assert sandbox.access_points["b"].status(submission.message_id) == "DELETED"
        with pytest.raises(MessageNotFound) as missing:
            run(b, lambda ap: ap.retrieve(submission.message_id))
        assert isinstance(missing.value, PermanentFailure)
        assert submission.message_id in str(missing.value)
    finally:
        for ap in sandbox.access_points.values():
            ap.observer = None
    watch.check()


def test_submission_is_shaped_like_diggs_example(sandbox: Sandbox) -> None:
    """The same elements and attributes as as4_xhe_encrypted.xml, plus a ConversationId."""
    captured: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request.content)
        assert request.headers["content-type"] == "application/soap+xml; charset=UTF-8"
        return soap_response(
            f"<ns2:submitResponse xmlns:ns2='http://org.ecodex.backend/1_1/'>"
            f"<messageID>{submission.message_id}</messageID></ns2:submitResponse>"
        )

    submission = sealed_submission(sandbox)
    assert mocked(sandbox, handler, lambda ap: ap.submit(submission)) == submission.message_id
    ours = parse(captured[0], max_bytes=64_000_000)
    digg = parse(DIGG_EXAMPLE.read_bytes(), max_bytes=1_000_000)

    def shape(root: etree._Element) -> list[tuple[str, tuple[str, ...]]]:
        tree = root.getroottree()
        return [
            (tree.getpath(e).replace("[1]", ""), tuple(sorted(e.attrib)))
            for e in root.iter()
            if etree.QName(e).localname != "ConversationId"
        ]

    assert shape(ours) == shape(digg)
    ns = {"eb": domibus_ws.EBMS_NS}
    for path in (
        "//eb:From/eb:PartyId/@type",
        "//eb:From/eb:Role/text()",
        "//eb:Service/text()",
        "//eb:Service/@type",
        "//eb:Action/text()",
        "//eb:MessageProperties/eb:Property/@name",
        "//eb:MessageProperties/eb:Property/@type",
        "//eb:PartInfo/@href",
        "//eb:PartProperties/eb:Property/text()",
        "//payload/@payloadId",
        "//payload/@contentType",
    ):
        assert ours.xpath(path, namespaces=ns) == digg.xpath(path, namespaces=ns), path
    assert ours.xpath("//eb:From/eb:PartyId/text()", namespaces=ns) == ["ap-a"]
    assert ours.xpath("//eb:ConversationId/text()", namespaces=ns) == [submission.conversation_id]
    (value,) = ours.xpath("//payload/value/text()")
    assert value.encode() == base64.b64encode(submission.payload)


# --- submission outcomes ------------------------------------------------------------------


def test_resubmission_is_a_duplicate_and_delivered_once(sandbox: Sandbox) -> None:
    submission = sealed_submission(sandbox)
    a = settings(sandbox, "a")
    submit(a, submission)
    with pytest.raises(DuplicateSubmission) as duplicate:
        submit(a, submission)
    assert "already exists" in str(duplicate.value)
    pending = run(settings(sandbox, "b"), lambda ap: ap.pending())
    assert pending.count(submission.message_id) == 1


def test_unknown_recipient_is_permanent(sandbox: Sandbox) -> None:
    submission = sealed_submission(sandbox, recipient="0203:unknown.sandbox.test")
    with pytest.raises(PermanentFailure) as refused:
        submit(settings(sandbox, "a"), submission)
    assert not isinstance(refused.value, DuplicateSubmission)
    assert "Could not fetch metadata from SMP" in str(refused.value)
    assert "EBMS:0004" in str(refused.value)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"party_id": "ap-b"}, "EBMS:0010"),  # From must be this access point (P-Mode)
        ({"party_type": "urn:example:other"}, "EBMS:0010"),
    ],
)
def test_header_the_pmode_refuses_is_permanent(
    sandbox: Sandbox, changes: dict[str, str], code: str
) -> None:
    submission = sealed_submission(sandbox)
    with pytest.raises(PermanentFailure) as refused:
        submit(settings(sandbox, "a", **changes), submission)
    assert code in str(refused.value)


def test_action_the_pmode_refuses_is_permanent(sandbox: Sandbox) -> None:
    submission = sealed_submission(sandbox)
    wrong = Submission(**{**submission.__dict__, "action": f"{DOCUMENT_ID_SCHEME}::urn:x"})
    with pytest.raises(PermanentFailure, match="EBMS:0010"):
        submit(settings(sandbox, "a"), wrong)


def test_unavailable_access_point_is_temporary_and_the_retry_goes_through(
    sandbox: Sandbox,
) -> None:
    """503 from a proxy in front of a stopped Domibus: try again; nothing was kept."""
    submission = sealed_submission(sandbox)
    a = settings(sandbox, "a")
    sandbox.access_points["a"].refuse_submissions(how="unavailable", count=1)
    with pytest.raises(TemporaryFailure, match="HTTP 503"):
        submit(a, submission)
    assert submit(a, submission) == submission.message_id


def test_unrecognised_ebms_0004_fault_is_temporary(sandbox: Sandbox) -> None:
    """EBMS:0004 ("Other") is Domibus's catch-all, its internal errors included: without a
    text that refuses this message for good, the message is retried, not bounced."""
    submission = sealed_submission(sandbox)
    a = settings(sandbox, "a")
    sandbox.access_points["a"].refuse_submissions(how="fault", count=1)
    with pytest.raises(TemporaryFailure) as refused:
        submit(a, submission)
    assert "EBMS:0004" in str(refused.value)
    assert "refusing submissions" in str(refused.value)
    assert submit(a, submission) == submission.message_id


def test_wrong_password_is_temporary_with_a_clear_text(sandbox: Sandbox) -> None:
    """Domibus answers a failed plugin-user login with a SOAP fault and HTTP 500."""
    a = settings(sandbox, "a", password_file=None, username="a", password="wrong")
    with pytest.raises(TemporaryFailure) as refused:
        submit(a, sealed_submission(sandbox))
    assert "HTTP 500" in str(refused.value)
    assert "refused our credentials" in str(refused.value)
    with pytest.raises(TemporaryFailure, match="credentials"):
        run(a, lambda ap: ap.pending())


def test_stopped_server_is_temporary(sandbox: Sandbox) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sandbox.tls.cert_pem, sandbox.tls.key_pem)
    server = Server(sandbox.access_points["a"], tls=context).start()
    a = settings(sandbox, "a", url=server.url + "/services/wsplugin")
    assert isinstance(run(a, lambda ap: ap.pending()), list)
    server.stop()
    with pytest.raises(TemporaryFailure, match="cannot reach the access point"):
        submit(a, sealed_submission(sandbox))


def test_timeout_is_temporary_and_the_retry_counts_as_submitted(sandbox: Sandbox) -> None:
    """The answer is lost, the message is not: the retry is refused as a duplicate."""
    submission = sealed_submission(sandbox)
    ap_a = sandbox.access_points["a"]
    ap_a.delay_submissions(1.0, count=1)
    with pytest.raises(TemporaryFailure, match="did not answer within"):
        submit(settings(sandbox, "a", timeout=0.3), submission)
    deadline = time.monotonic() + 5
    while ap_a.status(submission.message_id) != "ACKNOWLEDGED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(DuplicateSubmission):
        submit(settings(sandbox, "a"), submission)


# --- following the transport ------------------------------------------------------------


def test_recipient_not_serviced_ends_in_send_failure(sandbox: Sandbox) -> None:
    """The SMP names B's access point for a participant B does not serve (C3.2.1 §2.5)."""
    b = sandbox.organisations["b"]
    sandbox.smp.registrations[STALE_ORG] = Registration(
        endpoint_url=f"{sandbox.https.url}/ap/b",
        access_point_cert=sandbox.tls.cert,
        signing_certs=[i.cert for i in b.signing],
        encryption_certs=[i.cert for i in b.encryption],
    )
    submission = sealed_submission(sandbox, recipient=STALE_ORG)
    a = settings(sandbox, "a")
    assert submit(a, submission) == submission.message_id  # accepted, then fails in transit
    assert run(a, lambda ap: ap.status(submission.message_id)) == "SEND_FAILURE"
    (error,) = run(a, lambda ap: ap.errors(submission.message_id))
    assert error["errorCode"] == "EBMS_0004"
    assert error["errorDetail"] == "NOT_SERVICED"
    assert error["messageInErrorId"] == submission.message_id
    assert error["mshRole"] == "SENDING"
    assert submission.message_id not in run(settings(sandbox, "b"), lambda ap: ap.pending())


def test_status_and_retrieve_of_unknown_ids(sandbox: Sandbox) -> None:
    b = settings(sandbox, "b")
    assert run(b, lambda ap: ap.status("no-such-id")) == "NOT_FOUND"
    assert run(b, lambda ap: ap.errors("no-such-id")) == []
    with pytest.raises(MessageNotFound, match="no-such-id"):
        run(b, lambda ap: ap.retrieve("no-such-id"))
    with pytest.raises(ValueError, match="MessageId"):
        run(b, lambda ap: ap.retrieve(""))


# --- transport security and settings -------------------------------------------------------


def test_client_certificate(sandbox: Sandbox) -> None:
    """Mutual TLS: an access point that asks for a client certificate gets ours."""
    client = sandbox.tls_pki.issue("bridge-client", key_usage="sign")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=sandbox.tls_pki.chain_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(sandbox.tls.cert_pem, sandbox.tls.key_pem)
    server = Server(sandbox.access_points["b"], tls=context).start()
    try:
        with_cert = settings(
            sandbox,
            "b",
            url=server.url + "/services/wsplugin",
            client_cert=str(client.cert_pem),
            client_key=str(client.key_pem),
        )
        assert isinstance(run(with_cert, lambda ap: ap.pending()), list)
        with pytest.raises(TemporaryFailure, match="cannot reach"):
            b = settings(sandbox, "b", url=server.url + "/services/wsplugin")
            run(b, lambda ap: ap.pending())
    finally:
        server.stop()


def test_untrusted_server_certificate_is_temporary(sandbox: Sandbox) -> None:
    """Default trust is the system's, which does not know the sandbox's TLS CA."""
    b = settings(sandbox, "b", tls_trust=None)
    with pytest.raises(TemporaryFailure, match="cannot reach"):
        run(b, lambda ap: ap.pending())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"party_id": None}, "party_id"),
        ({"password": "x"}, "not both"),
        ({"url": "http://127.0.0.1:1/ap/a"}, "https"),
        ({"timeout": 0}, "timeout"),
        ({"passwort": "x"}, r"unknown setting\(s\) \['passwort'\]"),
        ({"password_file": "/nonexistent/ap.pass"}, "passphrase"),
    ],
)
def test_bad_settings_are_refused_when_loading(
    sandbox: Sandbox, changes: dict[str, Any], problem: str
) -> None:
    config = {**settings(sandbox, "a"), **changes}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(PluginError, match=problem):
        load(ACCESS_POINTS, "domibus-ws", config)


# --- answers the sandbox does not give: from handlers behind a local HTTPS server -----------


def soap_response(body: str, status: int = 200) -> httpx.Response:
    envelope = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<soap:Envelope xmlns:soap='{domibus_ws.SOAP12_NS}'>{body}</soap:Envelope>"
    )
    return httpx.Response(
        status,
        content=envelope.encode(),
        headers={"Content-Type": "application/soap+xml; charset=UTF-8"},
    )


def mocked(
    sandbox: Sandbox,
    handler: Callable[[httpx.Request], httpx.Response],
    use: Callable[[domibus_ws.DomibusWS], Awaitable[T]],
    interface: str = "backend",
) -> T:
    """`use` the connector with `handler` answering (as the deprecated interface, unless
    told: the answers below are written in its namespace)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = httpx.Request(
            environ["REQUEST_METHOD"],
            f"http://{environ['HTTP_HOST']}{environ['PATH_INFO']}",
            headers={"Content-Type": environ.get("CONTENT_TYPE", "")},
            content=environ["wsgi.input"].read(length),
        )
        response = handler(request)
        body = response.read()
        start_response(
            f"{response.status_code} {response.reason_phrase}",
            [("Content-Type", response.headers.get("content-type", "text/plain"))],
        )
        return [body]

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(sandbox.tls.cert_pem, sandbox.tls.key_pem)  # what the connector trusts
    server = Server(app, tls=tls).start()

    async def main() -> T:
        config = settings(sandbox, "a", interface=interface, url=f"{server.url}/ap")
        ap = load(ACCESS_POINTS, "domibus-ws", config)
        assert isinstance(ap, domibus_ws.DomibusWS)
        try:
            return await use(ap)
        finally:
            await ap.close()

    try:
        return asyncio.run(main())
    finally:
        server.stop()


def fault(code: str | None, message: str, value: str = "Receiver", status: int = 500) -> Any:
    detail = (
        f"<soap:Detail><ns2:FaultDetail xmlns:ns2='{domibus_ws.BACKEND_NS}'><code>{code}</code>"
        f"<message>{message}</message></ns2:FaultDetail></soap:Detail>"
        if code
        else ""
    )
    body = (
        f"<soap:Body><soap:Fault><soap:Code><soap:Value>soap:{value}</soap:Value></soap:Code>"
        "<soap:Reason><soap:Text xml:lang='en'>Message submission failed</soap:Text>"
        f"</soap:Reason>{detail}</soap:Fault></soap:Body>"
    )
    return lambda request: soap_response(body, status)


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (lambda r: httpx.Response(502, text="Bad Gateway"), TemporaryFailure),
        (lambda r: httpx.Response(413, text="Too Large"), PermanentFailure),
        (lambda r: httpx.Response(200, text="<html>login</html>"), TemporaryFailure),
        (lambda r: soap_response("<soap:Body><x/></soap:Body>"), TemporaryFailure),
        (lambda r: soap_response("<!DOCTYPE x []><x/>"), TemporaryFailure),
        (fault(None, "", "Receiver"), TemporaryFailure),
        (fault("EBMS:0009", "InvalidHeader detail: bad"), PermanentFailure),
        (fault("EBMS_0004", "Payload missing", "Sender", 400), PermanentFailure),
        (fault("EBMS:0004", "Error submitting the message: database down"), TemporaryFailure),
        (
            fault(
                "EBMS:0004",
                "Could not fetch metadata from SMP for documentId [x] and processId [y]",
            ),
            PermanentFailure,
        ),
        (
            fault("EBMS:0004", "Message with id [x] already exists. Message identifiers must"),
            DuplicateSubmission,
        ),
    ],
)
def test_submit_answer_mapping(sandbox: Sandbox, answer: Any, outcome: type) -> None:
    submission = sealed_submission(sandbox)
    with pytest.raises(Exception) as raised:
        mocked(sandbox, answer, lambda ap: ap.submit(submission))
    assert type(raised.value) is outcome, raised.value


def plain_fault(reason: str, value: str = "Receiver", ns: str | None = None, code: str = "") -> Any:
    """A SOAP fault as Domibus 4.x or 5.x words it: the Reason alone, or with a FaultDetail
    of namespace `ns`."""
    detail = (
        f"<soap:Detail><ns2:FaultDetail xmlns:ns2='{ns}'><code>{code}</code>"
        f"<message>{reason}</message></ns2:FaultDetail></soap:Detail>"
        if ns
        else ""
    )
    body = (
        f"<soap:Body><soap:Fault><soap:Code><soap:Value>soap:{value}</soap:Value></soap:Code>"
        f"<soap:Reason><soap:Text xml:lang='en'>{reason}</soap:Text></soap:Reason>{detail}"
        "</soap:Fault></soap:Body>"
    )
    return lambda request: soap_response(body, 500)


WSPLUGIN = domibus_ws.WSPLUGIN_NS


@pytest.mark.parametrize(
    ("interface", "answer", "outcome", "words"),
    [
        # Domibus 4.x: a dynamic discovery failure in the Reason alone, no FaultDetail.
        (
            "backend",
            plain_fault("Could not fetch metadata from SMP for documentId x"),
            PermanentFailure,
            "metadata",
        ),
        ("backend", plain_fault("Internal server error"), TemporaryFailure, "Internal"),
        # Domibus 5.x: the plugin's own codes, by enum name or with a colon.
        (
            "wsplugin",
            plain_fault("Invalid request", "Receiver", WSPLUGIN, "WS_PLUGIN_0005"),
            PermanentFailure,
            "WS_PLUGIN_0005",
        ),
        (
            "wsplugin",
            plain_fault("Invalid message", "Receiver", WSPLUGIN, "WS_PLUGIN:0007"),
            PermanentFailure,
            "WS_PLUGIN:0007",
        ),
        (
            "wsplugin",
            plain_fault("Generic error", "Receiver", WSPLUGIN, "WS_PLUGIN:0001"),
            TemporaryFailure,
            "0001",
        ),
        (
            "wsplugin",
            plain_fault("Message with id [x] already exists.", "Receiver", WSPLUGIN, "EBMS:0004"),
            DuplicateSubmission,
            "already exists",
        ),
        # A refused login is a SOAP fault with HTTP 500 on both, never a bounce.
        ("wsplugin", plain_fault("[DOM_002]:Bad credentials"), TemporaryFailure, "credentials"),
        (
            "backend",
            plain_fault("AuthenticationExtException: Bad credentials", "Sender"),
            TemporaryFailure,
            "credentials",
        ),
        # The url serves the other interface: said so, and mail waits.
        (
            "wsplugin",
            plain_fault(
                "Unexpected wrapper element {http://eu.domibus.wsplugin/}submitRequest found."
                "   Expected {http://org.ecodex.backend/1_1/}submitRequest.",
                "Sender",
            ),
            TemporaryFailure,
            "access_point.interface: backend",
        ),
        (
            "backend",
            plain_fault(
                "Unexpected wrapper element {http://org.ecodex.backend/1_1/}submitRequest found."
                "   Expected {http://eu.domibus.wsplugin/}submitRequest.",
                "Sender",
            ),
            TemporaryFailure,
            "access_point.interface: wsplugin",
        ),
        # As CXF words it when the body element is not in the WSDL served there.
        (
            "wsplugin",
            plain_fault(
                "Message part {http://eu.domibus.wsplugin/}submitRequest was not recognized."
                "  (Does it exist in service WSDL?)",
                "Sender",
            ),
            TemporaryFailure,
            "access_point.interface: backend",
        ),
        # A plugin user with another organisation as originalUser: configuration, not a bounce.
        (
            "wsplugin",
            plain_fault(
                "You are not allowed to handle this message. You are authorized as [0203:x]"
            ),
            TemporaryFailure,
            "originalUser",
        ),
    ],
)
def test_fault_shapes_of_both_generations(
    sandbox: Sandbox, interface: str, answer: Any, outcome: type, words: str
) -> None:
    submission = sealed_submission(sandbox)
    with pytest.raises(Exception) as raised:
        mocked(sandbox, answer, lambda ap: ap.submit(submission), interface=interface)
    assert type(raised.value) is outcome, raised.value
    assert words in str(raised.value)


def retrieve_answer(value: str, sender: str = "s") -> str:
    """A retrieveMessage answer for MessageId m1 with `value` as its payload's base64."""
    header = (
        f"<soap:Header><eb:Messaging xmlns:eb='{domibus_ws.EBMS_NS}'><eb:UserMessage>"
        "<eb:MessageInfo><eb:MessageId>m1</eb:MessageId></eb:MessageInfo>"
        "<eb:CollaborationInfo><eb:Action>a</eb:Action></eb:CollaborationInfo>"
        f"<eb:MessageProperties><eb:Property name='originalSender'>{sender}</eb:Property>"
        "<eb:Property name='finalRecipient'>r</eb:Property></eb:MessageProperties>"
        "<eb:PayloadInfo><eb:PartInfo href='cid:message'/></eb:PayloadInfo>"
        "</eb:UserMessage></eb:Messaging></soap:Header>"
    )
    body = (
        f"<soap:Body><ns2:retrieveMessageResponse xmlns:ns2='{domibus_ws.BACKEND_NS}'>"
        f"<payload payloadId='cid:message'><value>{value}</value></payload>"
        "</ns2:retrieveMessageResponse></soap:Body>"
    )
    return header + body


def test_unreadable_retrieved_message_keeps_the_raw_answer(sandbox: Sandbox) -> None:
    """The access point has deleted it by now; the caller gets the answer to keep."""
    bad = retrieve_answer("not base64!")
    with pytest.raises(UnreadableMessage, match="not base64") as raised:
        mocked(sandbox, lambda r: soap_response(bad), lambda ap: ap.retrieve("m1"))
    assert b"not base64!" in raised.value.raw
    good = retrieve_answer("PGEvPg==")
    retrieved = mocked(sandbox, lambda r: soap_response(good), lambda ap: ap.retrieve("m1"))
    assert (retrieved.payload, retrieved.conversation_id) == (b"<a/>", None)
    with pytest.raises(UnreadableMessage, match="MessageId"):
        mocked(sandbox, lambda r: soap_response(good), lambda ap: ap.retrieve("m2"))


@pytest.mark.parametrize(
    "encode",
    [
        lambda payload: base64.b64encode(payload).decode(),  # one line, as Domibus writes
        lambda payload: base64.encodebytes(payload).decode(),  # lines of 76
        lambda payload: f"\n  {base64.b64encode(payload).decode()}\n",
    ],
)
def test_a_long_payload_is_read_from_the_answer_as_it_was_from_the_tree(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, encode: Callable[[bytes], str]
) -> None:
    """A payload/value of APART_CHARS or more is decoded from the answer's bytes; the
    Retrieved is the one parsing the whole answer gives."""
    payload = random.Random(3).randbytes(3_000_000)
    answer = retrieve_answer(encode(payload))
    taken_apart = []

    def parse_apart(*args: Any, **kwargs: Any) -> Any:
        root, apart = xmlsafe.parse_apart(*args, **kwargs)
        taken_apart.append(apart is not None)
        return root, apart

    monkeypatch.setattr(domibus_ws, "parse_apart", parse_apart)
    got = mocked(sandbox, lambda r: soap_response(answer), lambda ap: ap.retrieve("m1"))
    monkeypatch.setattr(domibus_ws, "APART_CHARS", 10**9)
    expected = mocked(sandbox, lambda r: soap_response(answer), lambda ap: ap.retrieve("m1"))
    assert taken_apart == [True, False]
    assert got == expected
    assert (got.payload, got.original_sender) == (payload, "s")


@pytest.mark.parametrize(
    "value",
    [
        "QUJD" * 100 + "QQ",  # truncated: no whole quantum at the end
        "QUJD" * 100 + "Q",
        "QUJD" * 50 + "QQ==" + "QUJD" * 50,  # data after the padding
        "QUJD" * 100 + "Q===",
        "QUJD" * 100 + "QUJ*",  # not base64 at all: the answer is parsed whole
    ],
)
def test_a_long_payload_that_is_not_base64_is_unreadable(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setattr(domibus_ws, "APART_CHARS", 100)
    answer = soap_response(retrieve_answer(value))
    with pytest.raises(UnreadableMessage, match="not base64") as raised:
        mocked(sandbox, lambda r: answer, lambda ap: ap.retrieve("m1"))
    assert raised.value.raw == answer.content


def test_a_long_text_elsewhere_in_the_answer_is_read_as_it_is(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The longest text taken apart is not the payload's: the answer is parsed whole, and
    every field read is the answer's own."""
    monkeypatch.setattr(domibus_ws, "APART_CHARS", 100)
    sender = "c2VuZGVy" * 100
    answer = soap_response(retrieve_answer("PGEvPg==", sender=sender))
    retrieved = mocked(sandbox, lambda r: answer, lambda ap: ap.retrieve("m1"))
    assert (retrieved.original_sender, retrieved.payload) == (sender, b"<a/>")


def test_oversized_answer_is_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domibus_ws, "MAX_RESPONSE_BYTES", 100)
    big = soap_response("<soap:Body>" + "<x/>" * 50 + "</soap:Body>")
    with pytest.raises(TemporaryFailure, match="larger than"):
        mocked(sandbox, lambda r: big, lambda ap: ap.pending())


def test_uuid_message_ids_pass_the_local_check() -> None:
    domibus_ws._check_message_id(str(uuid.uuid4()))
    with pytest.raises(ValueError):
        domibus_ws._check_message_id("å")


@pytest.mark.parametrize(("interface", "other"), [("wsplugin", "backend"), ("backend", "wsplugin")])
def test_a_url_of_the_other_interface_makes_mail_wait_with_the_fix_named(
    sandbox: Sandbox, interface: str, other: str
) -> None:
    """The configured interface spoken at the other one's url, as Domibus (CXF) answers it."""
    path = "/services/backend" if other == "backend" else "/services/wsplugin"
    a = settings(sandbox, "a", interface=interface, url=f"{sandbox.https.url}/ap/a{path}")
    with pytest.raises(TemporaryFailure, match=f"access_point.interface: {other}"):
        submit(a, sealed_submission(sandbox))
    with pytest.raises(TemporaryFailure, match=f"access_point.interface: {other}"):
        run(a, lambda ap: ap.pending([ORG_A]))
