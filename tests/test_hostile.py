"""Hostile input, generated (hypothesis): whatever arrives, the bridge answers in a defined
way and never with an unhandled exception.

- Mail into the outbound mapping: arbitrary headers (non-ASCII, broken encoded words,
  many of them), nested multiparts, broken base64, odd charsets. The result is a valid SDK
  message or a MappingError / InvalidMessage (a 5xx or a DSN for the sender).
- SDK messages into the inbound mapping: arbitrary texts, file names and types. The
  result is a mail that parses again.
- Envelopes into opening: random mutations of a valid signed and encrypted XHE and of a
  kvittens. The result is a verdict (ACCEPTED only for what still verifies), never an
  exception.

The counts of cases tried and handled appear in the test summary.
"""

import email.policy
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.hostile import HOSTILE_CASES
from support.parties import ORG_A, ORG_B, keypair, make_message

from sdk_bridge.lab.testpki import Identity
from sdk_bridge.mapping.to_mail import to_email
from sdk_bridge.mapping.to_sdk import MappingError, to_business_message
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import xhe
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_kvittens, seal_message
from sdk_bridge.sdk.verdict import ACCEPTED, Outcome
from sdk_bridge.sdk.xmlsafe import UnsafeXML, parse

EXAMPLES = 150
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases on every run: CI never flakes on a new one
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- mail into the outbound mapping -------------------------------------------------------

header_names = st.sampled_from(
    ["Subject", "From", "To", "X-SDK-Reference", "Sensitivity", "In-Reply-To", "References",
     "Content-Type", "Content-Transfer-Encoding", "Message-ID", "X-Anything", "Date"]
)  # fmt: skip
header_values = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        ["=?utf-8?b?w6XDpMO2?=", "=?utf-8?q?=C3=A5?= x", "=?bogus?x?zz?=", "=?utf-8?b?!!!?=",
         "Private", "Company-Confidential", "<a@b> <c@d>", "dnr=KS 2026/1", "[sekretess] Hej"]
    ),
)  # fmt: skip
charsets = st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "x-unknown", "utf-16", ""])
encodings = st.sampled_from(["base64", "quoted-printable", "8bit", "7bit", "x-garbage"])
subtypes = st.sampled_from(["plain", "html", "calendar", "enriched"])


@st.composite
def parts(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One MIME part as bytes (headers and body), perhaps a multipart of more."""
    if depth < 3 and draw(st.booleans()):
        boundary = f"b{depth}{draw(st.integers(0, 999))}"
        kind = draw(st.sampled_from(["mixed", "alternative", "related", "x-unknown"]))
        inner = draw(st.lists(parts(depth + 1), min_size=0, max_size=3))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in inner)
        body += b"--" + boundary.encode() + b"--\r\n"
        head = f'Content-Type: multipart/{kind}; boundary="{boundary}"\r\n\r\n'
        return head.encode() + body
    kind = draw(st.sampled_from(["text", "application/pdf", "application/octet-stream",
                                 "message/rfc822", "image/png", "text/html"]))  # fmt: skip
    if kind == "text":
        kind = f"text/{draw(subtypes)}"
    head = f"Content-Type: {kind}; charset={draw(charsets)}"
    if draw(st.booleans()):
        head += f'; name="{draw(st.text(max_size=40))}"'
    head += f"\r\nContent-Transfer-Encoding: {draw(encodings)}\r\n"
    if draw(st.booleans()):
        head += f'Content-Disposition: attachment; filename="{draw(st.text(max_size=40))}"\r\n'
    body = draw(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)))
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=40))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers if "\n" not in value)
    head = "".join(c for c in head if c not in "\x00\r" or c == "\r")
    return head.encode("utf-8", "surrogateescape") + draw(parts())


@SETTINGS
@given(raw=mails())
@example(  # found by a longer run: a control character in a part's content type
    raw=b'Content-Type: /\x1b\r\nContent-Type: multipart/mixed; boundary="b00"\r\n\r\n--b00--\r\n'
)
def test_any_mail_maps_or_is_refused_with_a_reason(raw: bytes) -> None:
    HOSTILE_CASES["mail -> SDK message"]["tried"] += 1
    mail = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(mail, EmailMessage)
    try:
        business = to_business_message(
            mail,
            message_id=str(uuid.uuid4()),
            conversation_id=str(uuid.uuid4()),
            ref_to_message_id=None,
            sender=msg.Party(ORG_A, msg.Attention("a.registrator")),
            recipient=msg.Party(ORG_B, msg.Attention("b.registrator")),
            now=datetime.now(UTC),
        )
        msg.from_element(msg.to_element(business))  # valid by SDK's rules
    except (MappingError, msg.InvalidMessage):
        pass
    HOSTILE_CASES["mail -> SDK message"]["handled"] += 1


# --- SDK messages into the inbound mapping ----------------------------------------------

xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=200
)


@SETTINGS
@given(
    label=xml_text,
    texts=st.lists(xml_text, min_size=1, max_size=3),
    files=st.lists(
        st.tuples(st.text(max_size=60), st.text(max_size=60), st.binary(max_size=200)),
        max_size=3,
    ),
    confidential=st.booleans(),
)
def test_any_sdk_message_becomes_a_mail(
    label: str, texts: list[str], files: list[tuple[str, str, bytes]], confidential: bool
) -> None:
    HOSTILE_CASES["SDK message -> mail"]["tried"] += 1
    business = make_message(
        label=label,
        confidential=confidential,
        documents=(
            msg.Document(
                "SDK-Meddelande",
                texts=tuple(texts),
                files=tuple(msg.ContentFile(n, t, c) for n, t, c in files),
            ),
        ),
    )
    data = to_email(
        business,
        sender="registrator@a.example.se.sdk.b.example.se",
        sender_name="A kommun – Registrator",
        recipient="registrator@b.example.se",
        sdk_domain="sdk.b.example.se",
    )
    again = BytesParser(policy=email.policy.default).parsebytes(data)
    assert again["Message-ID"] == f"<{business.message_id}@sdk.b.example.se>"
    attachments = [p.get_payload(decode=True) for p in again.iter_attachments()]
    assert attachments == [content for _, _, content in files]
    HOSTILE_CASES["SDK message -> mail"]["handled"] += 1


# --- envelopes into opening ----------------------------------------------------------------


@pytest.fixture(scope="module")
def envelopes(alice: Identity, bob: Identity) -> tuple[bytes, bytes, Receiver]:
    sealed = seal_message(make_message(), signer=keypair(alice), recipient_cert=bob.cert)
    answer = kv.Kvittens.answering(
        ACCEPTED, refers_to=str(uuid.uuid4()), sender=ORG_A, receiver=ORG_B
    )
    kvittens = seal_kvittens(answer, signer=keypair(alice), handling_service_id="registrator.b")
    receiver = Receiver(
        decryption_keys=[keypair(bob)],
        sender_signing_certs=[alice.cert],
        our_parties={ORG_B},
    )
    return sealed, kvittens, receiver


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "duplicate", "entity"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 200))]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=30))
        elif how == "duplicate":
            end = at + draw(st.integers(1, 500))
            data[at:at] = data[at:end]
        else:
            bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            data[0:0] = bomb
    return bytes(data)


def claims_kvittens(envelope: bytes) -> bool:
    """Whether the envelope (still) says it carries a kvittens; one whose document type
    was mutated away is judged, and answered, as what it now claims to be."""
    try:
        return xhe.carries_kvittens(parse(envelope, max_bytes=len(envelope) + 1))
    except UnsafeXML:
        return False


@SETTINGS
@given(data=st.data())
def test_a_mutated_envelope_gets_a_verdict(
    envelopes: tuple[bytes, bytes, Receiver], data: st.DataObject
) -> None:
    sealed, kvittens, receiver = envelopes
    drawn = [(name, data.draw(mutations(original))) for name, original in
             (("message", sealed), ("kvittens", kvittens))]  # fmt: skip
    for name, mutated in drawn:
        case = f"mutated XHE {name}"
        HOSTILE_CASES[case]["tried"] += 1
        opened = open_envelope(mutated, receiver)
        assert opened.verdict.outcome in set(Outcome)
        if opened.verdict.outcome is Outcome.ACCEPTED and name == "message":
            assert opened.message is not None and opened.message.message_id
        if claims_kvittens(mutated):  # a kvittens is never answered with a kvittens
            assert opened.verdict.outcome is not Outcome.REJECTED
        HOSTILE_CASES[case]["handled"] += 1
