"""The attack catalogue: each attack made as A, handed to the sandbox's access point, and
judged by B's real inbound stage, with its exact defined outcome asserted.

Unit tests (test_xmlsafe, test_sealing, test_receipts, test_clamav) show each defence on
its own; this module shows that the same attacks, sent through the path a real one takes
(A's access point, AS4 routing, B's retrieval, spool, opening, judging, kvittens), end as
Digg defines: a REJECTED kvittens with its reason and detail, or quarantine with no
kvittens; never a mail for B's mailbox, never an internal error.

Where the sandbox's access point refuses an attack at submission (it checks the XHE, as
Digg asks of an SDK access point), that refusal is asserted and the envelope is then put
into B's spool where an access point that does not check would have put it: B must hold
on its own.

Entity attacks read a canary file (standing in for /etc/passwd: its content is known, so
a leak can be looked for) and an external DTD served on loopback that counts requests.
The counts of cases tried and handled appear in the test summary (support.hostile.HOSTILE_CASES).
"""

import asyncio
import base64
import contextlib
import copy
import gzip
import hashlib
import io
import tarfile
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from support import inbound_harness
from support.clamd import EICAR, Clamd
from support.hostile import HOSTILE_CASES
from support.inbound_harness import ORG_A, ORG_B, Harness, message, rejected
from support.registries import registry_for

from sdk_bridge.lab.sandbox.federation import Sandbox
from sdk_bridge.outbound.receipts import Receipts
from sdk_bridge.plugin import SCANNERS, PermanentFailure, TemporaryFailure, load
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import xhe, xmldsig, xmlenc
from sdk_bridge.sdk.keys import KeyPair
from sdk_bridge.sdk.names import (
    C14N,
    DS_NS,
    EXC_C14N,
    KVITTENS_ACTION,
    MESSAGE_ACTION,
    RSA_SHA256,
    XHA_NS,
    XHB_NS,
    q,
)
from sdk_bridge.sdk.sealing import seal_kvittens
from sdk_bridge.sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Verdict
from sdk_bridge.spool import Received

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

harness = inbound_harness.harness

GROUP = "attack catalogue, end to end: "
XML = GROUP + "XML entities (XXE, entity expansion, XInclude)"
WRAPPING = GROUP + "signature wrapping"
SIGNERS = GROUP + "signers other than the sender's CertPub certificate"
REPLAY = GROUP + "replayed envelope"
STRAY = GROUP + "kvittens for a message never sent"
MALWARE = GROUP + "hidden malware (EICAR)"
REVOKED = GROUP + "revoked signing certificate"
FORMS = GROUP + "signatures the sender made, in forms outside the XHE profile"

PLACEHOLDER = "PLACEHOLDER-LABEL"  # the label text an entity reference replaces
NOT_XHE = "payload [cid:message] is not an XHE envelope: "
NO_DTD = "document type declarations (DTD, entities) are not accepted"
NOT_PUBLISHED = "SIG security: the signing certificate is not one the sender publishes in CertPub"
MALWARE_FOUND = "REJECTED BV forbidden: an attachment was found to contain malware"


@contextlib.contextmanager
def counted(group: str) -> Iterator[None]:
    """One catalogue case: tried on entry, handled only if every assertion held."""
    HOSTILE_CASES[group]["tried"] += 1
    yield
    HOSTILE_CASES[group]["handled"] += 1


# --- loopback helpers: a canary file and a DTD server that counts its requests -------------


@dataclass(frozen=True)
class Canary:
    path: Path
    secret: str


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    secret = f"CANARY-{uuid.uuid4()}"
    path = tmp_path / "passwd"
    path.write_text(f"root:x:0:0:{secret}:/root:/bin/sh\n")
    return Canary(path, secret)


@dataclass(frozen=True)
class DTDServer:
    url: str
    requests: list[str]


@pytest.fixture(scope="module")
def dtd_server() -> Iterator[DTDServer]:
    """An HTTP server on 127.0.0.1 that serves a DTD and records every request: any fetch
    means a parser followed an external reference."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = b'<!ENTITY leak "fetched from the network">'
            self.send_response(200)
            self.send_header("Content-Type", "application/xml-dtd")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield DTDServer(f"http://127.0.0.1:{server.server_port}", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# --- A's side: envelopes as an attacker would make them --------------------------------------


@dataclass
class Kit:
    """What a case builds its envelope from."""

    harness: Harness
    sandbox: Sandbox
    canary: Canary
    dtd_url: str
    business: msg.BusinessMessage
    header_id: str = ""  # the XHE Header ID the envelope shows; the messageId unless forged

    def __post_init__(self) -> None:
        self.header_id = self.header_id or self.business.message_id

    def sealed(self) -> bytes:
        return self.harness.seal(self.business)

    def plaintext(self) -> bytes:
        element = msg.to_element(self.business)
        return etree.tostring(element, xml_declaration=True, encoding="UTF-8")

    def envelope_around(self, plaintext: bytes) -> bytes:
        """`plaintext` as the payload, encrypted to B and signed by A: a well-made envelope
        around whatever A chose to encrypt."""
        encrypted = xmlenc.encrypt(plaintext, self.sandbox.organisations["b"].encryption[-1].cert)
        root = xhe.build(xhe.message_header(self.business), encrypted)
        xmldsig.sign(root, self.harness.a.signing.key, self.harness.a.signing.cert)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def with_doctype(document: bytes, doctype: str, target: bytes, replacement: str) -> bytes:
    """`document` with `doctype` after its XML declaration and `target` (one element's
    whole text, with its brackets) replaced."""
    declaration, _, rest = document.partition(b"?>")
    assert target in rest, target
    rest = rest.replace(target, b">" + replacement.encode() + b"<", 1)
    return declaration + b"?>\n" + doctype.encode() + rest


def xxe(root: str, path: Path) -> str:
    return f'<!DOCTYPE {root} [<!ENTITY xxe SYSTEM "file://{path}">]>'


def external_dtd(root: str, url: str) -> str:
    return f'<!DOCTYPE {root} [<!ENTITY % remote SYSTEM "{url}/evil.dtd"> %remote;]>'


def laughs(root: str) -> str:
    """Billion laughs: ten levels of ten references, 10^9 "lol" once expanded."""
    levels = ['<!ENTITY lol0 "lol">']
    levels += [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    return f"<!DOCTYPE {root} [{''.join(levels)}]>"


HANDLING = b">b.registrator<"  # HandlingServiceID in the envelope, in the clear
LABEL = f">{PLACEHOLDER}<".encode()  # the label in the business message


def envelope_xxe(kit: Kit) -> bytes:
    return with_doctype(kit.sealed(), xxe("xhe:XHE", kit.canary.path), HANDLING, "&xxe;")


def envelope_external_dtd(kit: Kit) -> bytes:
    return with_doctype(kit.sealed(), external_dtd("xhe:XHE", kit.dtd_url), HANDLING, "&leak;")


def envelope_laughs(kit: Kit) -> bytes:
    return with_doctype(kit.sealed(), laughs("xhe:XHE"), HANDLING, "&lol9;")


def payload_xxe(kit: Kit) -> bytes:
    doctype = xxe("messagePayload", kit.canary.path)
    return kit.envelope_around(with_doctype(kit.plaintext(), doctype, LABEL, "&xxe;"))


def payload_external_dtd(kit: Kit) -> bytes:
    doctype = f'<!DOCTYPE messagePayload SYSTEM "{kit.dtd_url}/evil.dtd">'
    return kit.envelope_around(with_doctype(kit.plaintext(), doctype, LABEL, "&leak;"))


def payload_laughs(kit: Kit) -> bytes:
    return kit.envelope_around(
        with_doctype(kit.plaintext(), laughs("messagePayload"), LABEL, "&lol9;")
    )


def payload_doctype_behind_bom_and_comment(kit: Kit) -> bytes:
    """No XML declaration; a BOM and a comment first, where a naive prolog check stops."""
    _, _, body = kit.plaintext().partition(b"?>")
    doctype = xxe("messagePayload", kit.canary.path).encode()
    body = body.replace(LABEL, b">&xxe;<", 1)
    return kit.envelope_around(b"\xef\xbb\xbf<!-- harmless -->\n" + doctype + body)


def payload_utf16_xxe(kit: Kit) -> bytes:
    """The same XXE in UTF-16, where a check that looks for b"<!DOCTYPE" finds nothing."""
    document = with_doctype(kit.plaintext(), xxe("messagePayload", kit.canary.path), LABEL, "&xxe;")
    assert document.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    text = document.decode().replace("encoding='UTF-8'", "encoding='UTF-16'", 1)
    return kit.envelope_around(text.encode("utf-16"))


def payload_xinclude(kit: Kit) -> bytes:
    """No DTD at all: an XInclude of the canary, which a processor that runs XInclude
    would paste into the label."""
    include = (
        f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
        f'href="file://{kit.canary.path}" parse="text"/>'
    )
    plaintext = kit.plaintext().replace(LABEL, f">{include}<".encode(), 1)
    return kit.envelope_around(plaintext)


_XHE = {"xha": XHA_NS, "xhb": XHB_NS, "ds": DS_NS}


def _tree(kit: Kit) -> etree._Element:
    return etree.fromstring(kit.sealed())


def _forged_header(kit: Kit, root: etree._Element) -> tuple[etree._Element, etree._Element]:
    """(the signed Header, a copy with a fresh ID): a fresh ID would get a replay past the
    duplicate check, if the copy were believed."""
    signed = root.find("xha:Header", _XHE)
    forged = copy.deepcopy(signed)
    kit.header_id = forged.find("xhb:ID", _XHE).text = str(uuid.uuid4())
    return signed, forged


def wrapped_signed_header_moved(kit: Kit) -> bytes:
    """The signed Header moved into a ds:Object in the Signature, a forged one in its place."""
    root = _tree(kit)
    signed, forged = _forged_header(kit, root)
    signed.addprevious(forged)
    etree.SubElement(root.find("ds:Signature", _XHE), q(DS_NS, "Object")).append(signed)
    return etree.tostring(root)


def wrapped_second_header(kit: Kit) -> bytes:
    """A forged Header before the signed one: a reader that takes the first takes it."""
    root = _tree(kit)
    signed, forged = _forged_header(kit, root)
    signed.addprevious(forged)
    return etree.tostring(root)


def wrapped_extra_signature(kit: Kit) -> bytes:
    """The Header changed and signed again by someone else, A's signature kept beside it."""
    root = _tree(kit)
    kit.header_id = root.find("xha:Header/xhb:ID", _XHE).text = str(uuid.uuid4())
    mallory = outsider(kit.sandbox)
    xmldsig.sign(root, mallory.key, mallory.cert)
    return etree.tostring(root)


def wrapped_signature_in_header(kit: Kit) -> bytes:
    """A's Signature moved off the root, into the Header it would seem to vouch for."""
    root = _tree(kit)
    root.find("xha:Header", _XHE).append(root.find("ds:Signature", _XHE))
    return etree.tostring(root)


def signature_stripped(kit: Kit) -> bytes:
    root = _tree(kit)
    root.remove(root.find("ds:Signature", _XHE))
    return etree.tostring(root)


def outsider(sandbox: Sandbox) -> KeyPair:
    """A certificate from the federation's own O2O CA that no organisation publishes."""
    pki = sandbox.o2o_pki
    issued = pki.issued("mallory-attacks") or pki.issue("mallory-attacks", key_usage="sign")
    return KeyPair(issued.key, issued.cert)


def signed_by(kit: Kit, signer: KeyPair) -> bytes:
    return kit.harness.seal(kit.business, signer)


def signed_by_outsider(kit: Kit) -> bytes:
    return signed_by(kit, outsider(kit.sandbox))


def signed_by_another_organisation(kit: Kit) -> bytes:
    return signed_by(kit, kit.harness.b.signing)  # B's own, published for B, not for A


def signed_with_senders_encryption_key(kit: Kit) -> bytes:
    """A's own certificate, published in CertPub, but as its encryption certificate."""
    identity = kit.sandbox.organisations["a"].encryption[-1]
    return signed_by(kit, KeyPair(identity.key, identity.cert))


def signed_self_signed_as_sender(kit: Kit) -> bytes:
    """A self-signed certificate that copies A's signing certificate's subject."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = kit.harness.a.signing.cert.subject
    now = datetime.now(UTC)
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return signed_by(kit, KeyPair(key, cert))


# A's own signature, in forms XMLDSig knows and the XHE profile (C3.2.2 §3.5.2) does not allow.


def resigned(
    kit: Kit,
    change: Callable[[etree._Element], None],
    *,
    exclusive: bool = False,
    digest: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A's envelope with its SignedInfo changed by `change`, then signed again with A's
    key (hashing with `digest`, SHA-256 if None): a signature A really made, which an
    implementation that takes every XMLDSig form would verify. `exclusive`: the Reference's
    digest and SignedInfo are made with exclusive c14n."""
    root = _tree(kit)
    signature = root.find("ds:Signature", _XHE)
    signed_info = signature.find("ds:SignedInfo", _XHE)
    change(signed_info)
    if exclusive:
        unsigned = copy.deepcopy(root)
        unsigned.remove(unsigned.find("ds:Signature", _XHE))
        canonical = etree.tostring(unsigned, method="c14n", exclusive=True)
        digest_value = base64.b64encode(hashlib.sha256(canonical).digest()).decode()
        signed_info.find("ds:Reference/ds:DigestValue", _XHE).text = digest_value
    canonical = etree.tostring(signed_info, method="c14n", exclusive=exclusive)
    key = kit.harness.a.signing.key
    value = key.sign(canonical, padding.PKCS1v15(), digest or hashes.SHA256())
    signature.find("ds:SignatureValue", _XHE).text = base64.b64encode(value).decode()
    return etree.tostring(root)


def _algorithm(signed_info: etree._Element, path: str, algorithm: str) -> etree._Element:
    element = signed_info.find(path, _XHE)
    element.set("Algorithm", algorithm)
    return element


def signed_with_rsa_sha1(kit: Kit) -> bytes:
    def change(signed_info: etree._Element) -> None:
        _algorithm(signed_info, "ds:SignatureMethod", f"{DS_NS}rsa-sha1")

    return resigned(kit, change, digest=hashes.SHA1())


def signed_with_xpath_filter(kit: Kit) -> bytes:
    """An XPath filter in place of enveloped-signature: the same node-set, so the same
    digest, but XPath is what the wrapping attacks of the literature ride on."""

    def change(signed_info: etree._Element) -> None:
        path = "ds:Reference/ds:Transforms/ds:Transform"
        transform = _algorithm(signed_info, path, "http://www.w3.org/TR/1999/REC-xpath-19991116")
        etree.SubElement(transform, q(DS_NS, "XPath")).text = "not(ancestor-or-self::ds:Signature)"

    return resigned(kit, change)


def signed_with_comments(kit: Kit) -> bytes:
    def change(signed_info: etree._Element) -> None:
        _algorithm(signed_info, "ds:CanonicalizationMethod", f"{C14N}#WithComments")

    return resigned(kit, change)


def wrapped_under_exc_c14n(kit: Kit) -> bytes:
    """Signed with exclusive c14n (which the profile allows), then the signed Header moved
    into a ds:Object in the Signature and a forged one put in its place."""

    def change(signed_info: etree._Element) -> None:
        _algorithm(signed_info, "ds:CanonicalizationMethod", EXC_C14N)
        transforms = signed_info.find("ds:Reference/ds:Transforms", _XHE)
        etree.SubElement(transforms, q(DS_NS, "Transform"), Algorithm=EXC_C14N)

    root = etree.fromstring(resigned(kit, change, exclusive=True))
    signed, forged = _forged_header(kit, root)
    signed.addprevious(forged)
    etree.SubElement(root.find("ds:Signature", _XHE), q(DS_NS, "Object")).append(signed)
    return etree.tostring(root)


# --- the catalogue of single envelopes -------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    group: str
    build: Callable[[Kit], bytes]
    # The verdict line B records: "REJECTED <reason> <detail>: <text>" (that kvittens goes
    # back to A) or "NO-KVITTENS quarantine: <text>" (nothing goes back).
    outcome: str
    # What A's access point says when it refuses the submission; None: it forwards it.
    ap_refusal: str | None = None


def quarantined(text: str) -> str:
    return f"NO-KVITTENS quarantine: {text}"


ENVELOPE_DTD = Attack(XML, envelope_xxe, quarantined(f"envelope: {NO_DTD}"), NOT_XHE + NO_DTD)
PAYLOAD_DTD = quarantined(f"decrypted payload: {NO_DTD}")
DIGEST = "REJECTED SIG security: signature: the signed content has been changed (digest mismatch)"
ONE_SIGNATURE = (
    "REJECTED SIG security: signature: exactly one signature, a direct child of the root,"
    " is allowed"
)
XHE_STRUCTURE = NOT_XHE + "In /XHE"

ATTACKS = {
    "XXE in the envelope": ENVELOPE_DTD,
    "external DTD in the envelope": Attack(
        XML, envelope_external_dtd, ENVELOPE_DTD.outcome, ENVELOPE_DTD.ap_refusal
    ),
    "billion laughs in the envelope": Attack(
        XML, envelope_laughs, ENVELOPE_DTD.outcome, ENVELOPE_DTD.ap_refusal
    ),
    "XXE in the payload": Attack(XML, payload_xxe, PAYLOAD_DTD),
    "external DTD in the payload": Attack(XML, payload_external_dtd, PAYLOAD_DTD),
    "billion laughs in the payload": Attack(XML, payload_laughs, PAYLOAD_DTD),
    "XXE in the payload behind a BOM and a comment": Attack(
        XML, payload_doctype_behind_bom_and_comment, PAYLOAD_DTD
    ),
    "XXE in a UTF-16 payload": Attack(
        XML, payload_utf16_xxe, quarantined("decrypted payload: only UTF-8 is accepted")
    ),
    "XInclude in the payload": Attack(
        XML,
        payload_xinclude,
        "REJECTED SV structure: In /messagePayload/message/messageHeader/label, "
        "must not contain elements",
    ),
    "signed Header moved into the Signature, forged one in its place": Attack(
        WRAPPING, wrapped_signed_header_moved, DIGEST
    ),
    "a second, forged Header before the signed one": Attack(
        WRAPPING, wrapped_second_header, DIGEST, XHE_STRUCTURE
    ),
    "an extra Signature over a changed Header": Attack(
        WRAPPING, wrapped_extra_signature, ONE_SIGNATURE
    ),
    "the Signature moved into the Header": Attack(
        WRAPPING, wrapped_signature_in_header, ONE_SIGNATURE, XHE_STRUCTURE
    ),
    "the Signature stripped": Attack(
        WRAPPING, signature_stripped, "REJECTED SIG security: signature: the envelope is not signed"
    ),
    "a certificate from the same CA that nobody publishes": Attack(
        SIGNERS, signed_by_outsider, f"REJECTED {NOT_PUBLISHED}"
    ),
    "another organisation's signing certificate": Attack(
        SIGNERS, signed_by_another_organisation, f"REJECTED {NOT_PUBLISHED}"
    ),
    "the sender's encryption certificate": Attack(
        SIGNERS, signed_with_senders_encryption_key, f"REJECTED {NOT_PUBLISHED}"
    ),
    "a self-signed certificate with the sender's name": Attack(
        SIGNERS, signed_self_signed_as_sender, f"REJECTED {NOT_PUBLISHED}"
    ),
    "rsa-sha1 by the sender": Attack(
        FORMS,
        signed_with_rsa_sha1,
        f"REJECTED SIG security: signature: SignatureMethod must be {RSA_SHA256}",
    ),
    "an XPath filter in place of enveloped-signature": Attack(
        FORMS,
        signed_with_xpath_filter,
        "REJECTED SIG security: signature: only the enveloped-signature transform, then one"
        " c14n transform, is allowed",
    ),
    "c14n with comments": Attack(
        FORMS,
        signed_with_comments,
        "REJECTED SIG security: signature: CanonicalizationMethod must be one of "
        + ", ".join(xmldsig.CANONICALIZATIONS),
    ),
    "exc-c14n, signed Header moved into the Signature, forged one in its place": Attack(
        WRAPPING, wrapped_under_exc_c14n, DIGEST
    ),
}


def deliver(harness: Harness, payload: bytes, ap_refusal: str | None) -> str:
    """Submit `payload` as A to B; its ebMS MessageId. An envelope A's access point refuses
    is put into B's spool as an access point that does not check would have."""
    ebms_id = str(uuid.uuid4())
    if ap_refusal is None:
        return harness.send(payload, ebms_id)
    # EBMS:0004 with a text the connector does not know: it reads that as temporary.
    with pytest.raises((PermanentFailure, TemporaryFailure)) as refused:
        harness.send(payload, ebms_id)
    assert ap_refusal in str(refused.value)
    assert harness.spool.store_received(
        Received(ebms_id, MESSAGE_ACTION, ORG_A, ORG_B, ebms_id, payload)
    )
    return ebms_id


def notes(harness: Harness) -> dict[str, str | None]:
    with harness.spool._lock:  # read-only look for the test
        rows = harness.spool._db.execute("SELECT id, note FROM received").fetchall()
    return {row["id"]: row["note"] for row in rows}


def judged(harness: Harness, ebms_id: str, header_id: str) -> str:
    """B's round, then the verdict line, checked against the state, the note and what
    reached A: a kvittens naming `header_id` for a REJECTED, nothing for a quarantine."""
    harness.process()
    state, note = harness.states()[ebms_id], notes(harness)[ebms_id]
    found = harness.kvittens_at_a()
    if state == "quarantined":
        assert found == []
        return quarantined(note or "")
    assert state == "rejected", (state, note)
    line = f"REJECTED {rejected(found, header_id)}"
    assert note == line
    return line


def leaks(harness: Harness, secret: str) -> list[Path]:
    """Files in B's spool that hold the canary's secret."""
    files = [p for p in harness.spool.directory.rglob("*") if p.is_file()]
    return [p for p in files if secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(
    name: str, harness: Harness, sandbox: Sandbox, canary: Canary, dtd_server: DTDServer
) -> None:
    attack = ATTACKS[name]
    with counted(attack.group):
        business = message(label=PLACEHOLDER)
        kit = Kit(harness, sandbox, canary, dtd_server.url, business)
        payload = attack.build(kit)
        ebms_id = deliver(harness, payload, attack.ap_refusal)
        assert judged(harness, ebms_id, kit.header_id) == attack.outcome
        assert list(harness.states()) == [ebms_id]  # nothing else reached B
        assert harness.spool.inbox() == []
        assert leaks(harness, canary.secret) == []
        assert dtd_server.requests == []


# --- replay, and kvittens for what was never sent -------------------------------------------


def test_a_replayed_envelope_is_a_duplicate_every_time(harness: Harness) -> None:
    """A's genuine envelope, captured and submitted again under a new ebMS MessageId, and
    again in a later round: delivered once, each replay REJECTED duplicate."""
    with counted(REPLAY):
        business = message()
        sealed = harness.seal(business)
        first = harness.send(sealed)
        harness.process()
        again = harness.send(sealed)
        harness.process()
        assert [k.accepted for k in harness.kvittens_at_a()] == [True, False]
        later = harness.send(sealed)
        harness.process()
        assert rejected(harness.kvittens_at_a(), business.message_id) == (
            "BV duplicate: messageId has been received before"
        )
        assert harness.states() == {first: "accepted", again: "rejected", later: "rejected"}
        (stored,) = harness.spool.inbox()
        assert stored.sdk_message_id == business.message_id


REFUSED = Verdict(Outcome.REJECTED, Reason.BV, Detail.NOT_SUPPORTED, "file type not accepted")


@pytest.mark.parametrize(
    "verdict, names",
    [(ACCEPTED, "unknown"), (REFUSED, "unknown"), (ACCEPTED, "a message B received")],
    ids=["ACCEPTED, unknown messageId", "REJECTED, unknown messageId", "ACCEPTED, received one"],
)
def test_a_kvittens_for_a_message_never_sent(
    harness: Harness, verdict: Verdict, names: str
) -> None:
    """A kvittens signed by A for something B never sent reaches B's kvittens intake (the
    same code as A's): it settles nothing, is kept as ignored, and is never answered."""
    with counted(STRAY):
        refers_to = str(uuid.uuid4())
        if names == "a message B received":
            business = message()
            harness.send(harness.seal(business))
            harness.process()
            assert [k.accepted for k in harness.kvittens_at_a()] == [True]
            refers_to = business.message_id
        inbox = harness.spool.inbox()
        answer = kv.Kvittens.answering(verdict, refers_to=refers_to, sender=ORG_A, receiver=ORG_B)
        sealed = seal_kvittens(
            answer, signer=harness.a.signing, handling_service_id="a.registrator"
        )
        ebms_id = harness.send(sealed, action=KVITTENS_ACTION)
        harness.process()  # the inbound stage leaves kvittens to the kvittens intake
        assert harness.states()[ebms_id] == "new"
        assert receipts_at_b(harness) == []
        assert harness.states()[ebms_id] == "ignored"
        assert notes(harness)[ebms_id] == "it names no message we sent"
        assert harness.kvittens_at_a() == []
        assert harness.spool.inbox() == inbox


def receipts_at_b(harness: Harness) -> list[str]:
    """B's kvittens intake over what B's round stored; the deliveries it reported on."""
    reported: list[str] = []

    def notify(delivery: object) -> None:
        reported.append(str(delivery))

    async def run() -> None:
        with registry_for(harness.sandbox, "b", harness.tmp_path / "cache-b") as registry:
            receipts = Receipts(ORG_B, harness.spool, registry, harness.b.trust_anchors, notify)
            await receipts.process_pending()

    asyncio.run(run())
    return reported


# --- malware hidden in containers ------------------------------------------------------------


def zipped(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def tar_gz(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def forwarded_mail(content: bytes) -> bytes:
    """A mail with a forwarded mail (message/rfc822) attached, which has `content` zipped."""
    inner = EmailMessage()
    inner["From"], inner["To"], inner["Subject"] = "x@example.se", "y@example.se", "Underlag"
    inner.set_content("Se bilaga.")
    inner.add_attachment(zipped("underlag.com", content), "application", "zip", filename="u.zip")
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = "y@example.se", "z@example.se", "Fwd: Underlag"
    outer.set_content("Vidarebefordrar.")
    outer.add_attachment(inner)
    return outer.as_bytes()


def nested_multipart_mail(content: bytes) -> bytes:
    """`content` base64 in a part three multiparts deep (mixed > alternative > related)."""
    related = EmailMessage()
    related.set_content("<p>Hej</p>", subtype="html")
    related.add_related(content, "application", "octet-stream", cid="<bilaga@example.se>")
    alternative = EmailMessage()
    alternative.set_content("Hej")
    alternative.add_alternative(related)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "x@example.se", "y@example.se", "Hej"
    mail.make_mixed()
    mail.attach(alternative)
    raw = mail.as_bytes()
    assert b"Content-Transfer-Encoding: base64" in raw and content not in raw
    return raw


def nested_zips(content: bytes, depth: int) -> bytes:
    data = zipped("eicar.com", content)
    for level in range(depth - 1):
        data = zipped(f"niva-{level}.zip", data)
    return data


PDF = msg.ContentFile("underlag.pdf", "application/pdf", b"%PDF-1.7\n...")
RFC822 = "message/rfc822"
HIDDEN: dict[str, Callable[[bytes], tuple[msg.ContentFile, ...]]] = {
    "a zip in a zip": lambda c: (
        msg.ContentFile("arkiv.zip", "application/zip", zipped("inre.zip", zipped("e.com", c))),
    ),
    "a tar.gz": lambda c: (msg.ContentFile("arkiv.tar.gz", "application/gzip", tar_gz("e", c)),),
    "a zip in a mail attached to a mail": lambda c: (
        msg.ContentFile("vidarebefordrat.eml", RFC822, forwarded_mail(c)),
    ),
    "base64 in nested MIME parts": lambda c: (
        msg.ContentFile("brev.eml", RFC822, nested_multipart_mail(c)),
    ),
    "gzipped, the third file behind two clean ones": lambda c: (
        PDF,
        msg.ContentFile("lista.txt", "text/plain", b"ingenting\n"),
        msg.ContentFile("data.bin", "application/octet-stream", gzip.compress(c)),
    ),
}
DEEPER_THAN_MAX_RECURSION = 17  # clamd's MaxRecursion default: 17 levels of containers


@pytest.fixture
def scanning(sandbox: Sandbox, tmp_path: Path, clamd_server: Clamd) -> Iterator[Harness]:
    scanner = load(SCANNERS, "clamav", {"host": "127.0.0.1", "port": clamd_server.port})
    running = Harness(sandbox, tmp_path, scanner)
    yield running
    running.spool.close()


def with_files(files: tuple[msg.ContentFile, ...]) -> msg.BusinessMessage:
    return message(documents=(msg.Document("SDK-Meddelande", ("Se bilagor",), files),))


@pytest.mark.parametrize(
    "how",
    [
        *HIDDEN,
        "zips nested past clamd's MaxRecursion",  # refused with AlertExceedsMax yes
    ],
)
def test_hidden_malware(scanning: Harness, how: str) -> None:
    with counted(MALWARE):
        if how in HIDDEN:
            files = HIDDEN[how](EICAR)
        else:
            nested = nested_zips(EICAR, DEEPER_THAN_MAX_RECURSION)
            files = (msg.ContentFile("arkiv.zip", "application/zip", nested),)
        business = with_files(files)
        ebms_id = scanning.send(scanning.seal(business))
        assert judged(scanning, ebms_id, business.message_id) == MALWARE_FOUND
        assert scanning.spool.inbox() == []


def test_the_same_containers_without_malware_are_accepted(scanning: Harness) -> None:
    """The control: the containers themselves are not what is refused."""
    clean = b"Ingenting farligt h\xc3\xa4r.\n"
    files = tuple(f for build in HIDDEN.values() for f in build(clean))
    files += (msg.ContentFile("djup.zip", "application/zip", nested_zips(clean, 5)),)
    ebms_id = scanning.send(scanning.seal(with_files(files)))
    scanning.process()
    assert scanning.states() == {ebms_id: "accepted"}
    (kvittens,) = scanning.kvittens_at_a()
    assert kvittens.accepted


# --- last in this module: a revocation stays for the sandbox's lifetime ----------------------


def test_a_revoked_signing_certificate(harness: Harness, sandbox: Sandbox) -> None:
    """Signed with A's published certificate before it was revoked, judged after: the
    revoked certificate is no longer one A publishes. Last: the revocation cannot be undone."""
    with counted(REVOKED):
        business = message()
        ebms_id = harness.send(harness.seal(business))
        sandbox.revoke("a", "signing")
        assert judged(harness, ebms_id, business.message_id) == f"REJECTED {NOT_PUBLISHED}"
        assert harness.kvittens_at_a() == []  # judged() took the one kvittens
        assert harness.spool.inbox() == []
