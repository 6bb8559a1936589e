"""Seal (encrypt, envelope, sign) and open (verify, decrypt, validate) SDK envelopes.

Opening follows Digg's order: verify the signature before anything else is trusted and
before decrypting, then decrypt, then validate, then the consistency checks. The result is
a `Verdict` that says which kvittens to send — or, where Digg says none may be sent
(C3.2.4 §2.1.2), that the message belongs in quarantine.

These functions are synchronous and take only picklable arguments, so the daemon runs
them in a worker pool, off the event loop.
"""

import uuid
from collections.abc import Collection, Container, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from . import kvittens as kv
from . import message as msg
from . import xhe, xmldsig, xmlenc
from .certs import CertificateProblem, check_encryption_certificate, check_signing_certificate
from .keys import KeyPair
from .names import MAX_MESSAGE_BYTES, MSG_NS, SDK_FEDERATION, UUID, XENC_NS, q
from .verdict import ACCEPTED, Detail, Outcome, Quarantined, Reason, Rejected, Verdict
from .xmlsafe import Apart, UnsafeXML, parse_apart
from .xmlsafe import parse as parse_xml

# A 30 MB message grows by a third in base64, plus the envelope: anything far beyond
# that is not parsed at all.
MAX_ENVELOPE_BYTES = 64_000_000
# A payload CipherValue this long is read from the envelope's bytes, not from its tree.
APART_BYTES = 1 << 20


def seal_message(
    message: bytes | msg.BusinessMessage,
    *,
    signer: KeyPair,
    recipient_cert: x509.Certificate,
    federation: str = SDK_FEDERATION,
) -> bytes:
    """The signed XHE carrying `message` encrypted to `recipient_cert`.

    Parties, HandlingServiceID and the XHE ID (= messageId) come from the message header.
    Raise msg.InvalidMessage if the message breaks SDK's rules, CertificateProblem if the
    recipient's certificate cannot be encrypted to now.
    """
    check_encryption_certificate(recipient_cert, datetime.now(UTC))
    if isinstance(message, bytes):
        if len(message) > MAX_MESSAGE_BYTES:
            raise msg.InvalidMessage(msg.too_long())
        element = parse_xml(message, max_bytes=MAX_MESSAGE_BYTES)
        try:
            parsed = msg.from_element(element)
        except Rejected as problem:
            raise msg.InvalidMessage(problem) from None
        serialized = etree.tostring(element)
        del element
        if len(serialized) > MAX_MESSAGE_BYTES:
            raise msg.InvalidMessage(msg.too_long())
        plaintext: Iterable[bytes] = [serialized]
    else:
        parsed, plaintext = message, msg.serialize(message)  # checked, encrypted piece by piece
    encrypted, cipher_value = xmlenc.encrypt_apart(plaintext, recipient_cert)
    # The ciphertext's base64 goes into the serialised envelope past libxml2, which would
    # copy it several times over (see xmldsig.sign).
    placeholder = uuid.uuid4().hex.encode()
    _payload_cipher_value(encrypted).text = placeholder
    root = xhe.build(xhe.message_header(parsed, federation), encrypted)
    xmldsig.sign(root, signer.key, signer.cert, replacing=(placeholder, cipher_value))
    head, tail = etree.tostring(root, xml_declaration=True, encoding="UTF-8").split(placeholder)
    return b"".join((head, cipher_value, tail))


_CIPHER_VALUE = f"{q(XENC_NS, 'CipherData')}/{q(XENC_NS, 'CipherValue')}"


def _payload_cipher_value(encrypted: etree._Element) -> etree._Element:
    found = encrypted.find(_CIPHER_VALUE)
    assert found is not None
    return found


def seal_kvittens(
    kvittens: kv.Kvittens,
    *,
    signer: KeyPair,
    handling_service_id: str | None,
    federation: str = SDK_FEDERATION,
) -> bytes:
    """The signed, unencrypted XHE carrying a kvittens.

    `handling_service_id` is the functional address the original message was sent to
    (B1.3.3: the message's HandlingServiceID is set on its kvittens too). The kvittens ID
    becomes the envelope's Header ID, which Digg requires to be a UUID.
    """
    if not UUID.fullmatch(kvittens.id):
        raise ValueError("the kvittens ID must be a UUID: it becomes the envelope's Header ID")
    header = xhe.Header(
        id=kvittens.id,
        created=kvittens.issued,
        kind=xhe.PayloadKind.KVITTENS,
        from_party=kvittens.sender,
        to_party=kvittens.receiver,
        handling_service_id=handling_service_id,
        encrypted=False,
        federation=federation,
    )
    root = xhe.build(header, kv.to_element(kvittens))
    xmldsig.sign(root, signer.key, signer.cert)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@dataclass(frozen=True)
class Receiver:
    """What the receiving side knows when it opens an envelope."""

    decryption_keys: list[KeyPair] = field(default_factory=list)
    # The sender's signing certificates published in CertPub; None: not checked here.
    sender_signing_certs: list[x509.Certificate] | None = None
    # CA certificates the signer must chain to; None: chain not checked here.
    trust_anchors: list[x509.Certificate] | None = None
    # Organisation ids we receive for; an envelope for anyone else gets no kvittens.
    our_parties: Collection[str] | None = None
    # Our functional addresses; a business message for another is REJECTED not-found.
    our_functional_addresses: Collection[str] | None = None
    # messageIds already received; a repeat is REJECTED duplicate.
    seen_message_ids: Container[str] = frozenset()
    # Our FEDERATIONID; an envelope from another federation gets no kvittens. None: any.
    federation: str | None = None
    at: datetime | None = None  # when to check certificate validity; None: now
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES


@dataclass(frozen=True)
class Opened:
    verdict: Verdict
    # What could be read of the envelope, to address a kvittens or describe a quarantine.
    envelope_id: str | None = None
    from_party: str | None = None
    to_party: str | None = None
    header: xhe.Header | None = None
    signer: x509.Certificate | None = None
    message: msg.BusinessMessage | None = None
    plaintext: bytearray | None = None  # the decrypted business message
    kvittens: kv.Kvittens | None = None

    @property
    def is_kvittens(self) -> bool:
        return self.header is not None and self.header.kind is xhe.PayloadKind.KVITTENS


@dataclass
class _Progress:
    """What opening has learnt so far: the fields of Opened, and whether it is a kvittens."""

    envelope_id: str | None = None
    from_party: str | None = None
    to_party: str | None = None
    header: xhe.Header | None = None
    signer: x509.Certificate | None = None
    message: msg.BusinessMessage | None = None
    plaintext: bytearray | None = None
    kvittens: kv.Kvittens | None = None
    is_kvittens: bool = False  # then no failure may be answered with a kvittens

    def result(self, verdict: Verdict) -> Opened:
        if self.is_kvittens and verdict.outcome is Outcome.REJECTED:
            # Never a kvittens for a kvittens: a bad one is kept for an administrator.
            verdict = Verdict.of(Quarantined(f"invalid kvittens: {verdict.line()}"))
        known = {f.name: getattr(self, f.name) for f in fields(Opened) if f.name != "verdict"}
        return Opened(verdict, **known)


def open_envelope(
    data: bytes, receiver: Receiver, *, decrypt: bool = True, keep_plaintext: bool = True
) -> Opened:
    """Verify, decrypt and validate one XHE; never raises for bad input.

    `decrypt=False` stops after the envelope checks (for inspecting a message without the
    recipient's key): the verdict then speaks for the envelope only. `keep_plaintext=False`
    drops the decrypted bytes once they are parsed: for a caller that only reads the
    message, they would be one more copy of it while its files are decoded.
    """
    progress = _Progress()
    try:
        _open(data, receiver, progress, decrypt, keep_plaintext)
    except (Rejected, Quarantined) as error:
        return progress.result(Verdict.of(error))
    except Exception as error:  # a bug must not turn into a kvittens
        text = f"internal error while opening ({type(error).__name__})"
        return progress.result(Verdict.of(Quarantined(text)))
    return progress.result(ACCEPTED)


def _open(
    data: bytes, receiver: Receiver, progress: _Progress, decrypt: bool, keep_plaintext: bool
) -> None:
    """Fill `progress`, or raise Rejected / Quarantined."""
    try:
        root, apart = _parse_envelope(data, receiver.max_envelope_bytes)
    except UnsafeXML as e:
        raise Quarantined(f"envelope: {e}") from None
    progress.envelope_id, progress.from_party, progress.to_party = xhe.identity(root)
    if not (progress.envelope_id and progress.from_party and progress.to_party):
        raise Quarantined("not an XHE envelope with an ID and both parties")
    if receiver.our_parties is not None and progress.to_party not in receiver.our_parties:
        raise Quarantined("the envelope is addressed to an organisation we do not serve")
    progress.is_kvittens = xhe.carries_kvittens(root)

    # 1. The signature, before anything in the envelope is believed.
    try:
        progress.signer = signer = xmldsig.verify(
            root, replacing=None if apart is None else (apart.placeholder.encode(), apart.text)
        )
    except xmldsig.SignatureInvalid as e:
        raise Rejected(Reason.SIG, Detail.SECURITY, f"signature: {e}") from None
    if receiver.sender_signing_certs is not None and not _published(
        signer, receiver.sender_signing_certs
    ):
        raise Rejected(
            Reason.SIG,
            Detail.SECURITY,
            "the signing certificate is not one the sender publishes in CertPub",
        )
    try:
        check_signing_certificate(signer, receiver.at or datetime.now(UTC), receiver.trust_anchors)
    except CertificateProblem as e:
        raise Rejected(Reason.SIG, Detail.SECURITY, str(e)) from None

    # 2. The envelope's own rules.
    progress.header = header = xhe.read_header(root)
    progress.is_kvittens = header.kind is xhe.PayloadKind.KVITTENS
    if receiver.federation is not None and header.federation != receiver.federation:
        raise Quarantined("the envelope belongs to another federation")
    content = xhe.payload_content(root)
    if len(content) != 1:
        raise Rejected(Reason.SV, Detail.STRUCTURE, "PayloadContent must hold exactly one element")
    if progress.is_kvittens:
        _open_kvittens(header, content[0], progress)
        return

    # 3. Decrypt: an unencrypted business message is refused (B1.3.3 §5.3 row 14).
    if not header.encrypted:
        raise Rejected(Reason.SIG, Detail.SECURITY, "the message payload is not encrypted")
    if not decrypt:
        return
    try:
        plaintext = xmlenc.decrypt(content[0], receiver.decryption_keys, apart)
    except xmlenc.DecryptionError as e:
        raise Quarantined(f"payload cannot be decrypted: {e}") from None
    del root, content  # the envelope tree, its ciphertext with it, is not read again
    if keep_plaintext:
        progress.plaintext = plaintext
    if len(plaintext) > MAX_MESSAGE_BYTES:
        raise msg.too_long()

    # 4. The business message and its consistency with the envelope.
    try:
        element = parse_xml(plaintext, max_bytes=MAX_MESSAGE_BYTES)
    except UnsafeXML as e:
        raise Quarantined(f"decrypted payload: {e}") from None
    del plaintext
    if element.tag != q(MSG_NS, "messagePayload"):
        # Like an undecryptable payload: answering would make CBC a padding oracle.
        raise Quarantined("decrypted payload: not an SDK business message")
    progress.message = message = msg.from_element(element, consume=True)
    _check_consistency(header, message, receiver)


def _parse_envelope(data: bytes, max_bytes: int) -> tuple[etree._Element, Apart | None]:
    """The envelope's tree, with a long payload CipherValue left in `data` (see
    `xmlsafe.parse_apart`): the signature's digest and the decryption read it from there.

    Taken apart only when the placeholder is the whole text of the payload's one
    CipherValue, the very element `xmlenc.decrypt` reads; anything else is parsed whole.
    """
    root, apart = parse_apart(data, max_bytes=max_bytes, min_text=APART_BYTES)
    if apart is None:
        return root, None
    content = xhe.payload_content(root)
    cipher_values = content[0].findall(_CIPHER_VALUE) if len(content) == 1 else []
    if len(cipher_values) == 1 and cipher_values[0].text == apart.placeholder:
        return root, apart
    return parse_xml(data, max_bytes=max_bytes), None


def _published(signer: x509.Certificate, published: list[x509.Certificate]) -> bool:
    der = signer.public_bytes(serialization.Encoding.DER)
    return any(c.public_bytes(serialization.Encoding.DER) == der for c in published)


_HEADER = "/messagePayload/message/messageHeader"


def _check_consistency(header: xhe.Header, message: msg.BusinessMessage, rx: Receiver) -> None:
    """B1.3.3: the envelope, the business header and what we serve must agree."""
    if message.message_id != header.id:
        raise Rejected(
            Reason.BV,
            Detail.INVARIANT,
            "the XHE Header ID differs from messageId",
            f"{_HEADER}/messageId",
        )
    if message.recipient.organisation_id != header.to_party:
        raise Rejected(
            Reason.BV,
            Detail.SECURITY,
            "recipientId is not identical to value in XHE envelope",
            f"{_HEADER}/recipient/recipientID",
        )
    # B1.3.3 gives BV/invariant for a wrong senderID in one place and BV/security in its
    # table of events (§5.3 row 13); a sender that differs from the signed envelope is the
    # security case.
    if message.sender.organisation_id != header.from_party:
        raise Rejected(
            Reason.BV,
            Detail.SECURITY,
            "senderID differs from the XHE FromParty",
            f"{_HEADER}/sender/senderID",
        )
    path = f"{_HEADER}/recipient/attention/subOrganization/organizationId/extension"
    if message.functional_address != header.handling_service_id:
        raise Rejected(
            Reason.BV,
            Detail.SECURITY,
            "subOrganization/organizationId must equal xha:HandlingServiceID",
            path,
        )
    if (
        rx.our_functional_addresses is not None
        and message.functional_address not in rx.our_functional_addresses
    ):
        raise Rejected(Reason.BV, Detail.NOT_FOUND, "Wrong or unknown xha:HandlingServiceID", path)
    if message.message_id in rx.seen_message_ids:
        raise Rejected(
            Reason.BV,
            Detail.DUPLICATE,
            "messageId has been received before",
            f"{_HEADER}/messageId",
        )


def _open_kvittens(header: xhe.Header, payload: etree._Element, progress: _Progress) -> None:
    if header.encrypted:
        raise Quarantined("a kvittens must not be encrypted")
    progress.kvittens = kvittens = kv.from_element(payload)
    if kvittens.sender != header.from_party or kvittens.receiver != header.to_party:
        raise Quarantined("the kvittens parties differ from the envelope's")
