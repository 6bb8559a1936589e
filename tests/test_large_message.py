"""The shortcuts that keep a 30 MB message from being copied over and over give exactly what
the plain ways give: serialisation, the size check, mail parsing, base64 decoding, sealing,
and opening with the CipherValue taken apart (the signature's digest above all)."""

import base64
import dataclasses
import email.policy
import random
import re
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from lxml import etree
from support.parties import keypair, make_message

from sdk_bridge.lab.testpki import Identity
from sdk_bridge.mapping import to_sdk as mapping
from sdk_bridge.mapping.to_sdk import parse_mail
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import sealing, xmldsig, xmlenc
from sdk_bridge.sdk.names import DS_NS, MAX_MESSAGE_BYTES, XENC_NS, q
from sdk_bridge.sdk.sealing import Receiver, open_envelope, seal_message
from sdk_bridge.sdk.verdict import ACCEPTED
from sdk_bridge.sdk.xmlsafe import (
    Apart,
    UnsafeXML,
    decode_base64,
    decode_base64_pieces,
    parse,
    parse_apart,
)


def _with_files(*contents: bytes) -> msg.BusinessMessage:
    message = make_message()
    files = tuple(
        msg.ContentFile(f"bilaga-{n}.pdf", "application/pdf", content)
        for n, content in enumerate(contents)
    )
    return dataclasses.replace(
        message, documents=(dataclasses.replace(message.documents[0], files=files),)
    )


def test_serialised_pieces_join_to_what_lxml_writes() -> None:
    message = _with_files(b"%PDF-1.7\n" + bytes(range(256)) * 50, b"x", b"yz")
    whole = etree.tostring(msg.to_element(message))
    assert b"".join(msg.serialize(message)) == whole
    utf8 = etree.tostring(msg.to_element(message), xml_declaration=True, encoding="UTF-8")
    assert msg.to_xml(message) == utf8


def test_size_check_refuses_exactly_what_lxml_would_make_too_long() -> None:
    base = len(msg.to_xml(_with_files(b"a"))) - 4  # base64 of b"a" is 4 characters
    limit = (MAX_MESSAGE_BYTES - base) // 4 * 3  # the largest file that still fits
    for size in (limit - 1, limit, limit + 1):
        message = _with_files(b"a" * size)
        element = msg.to_element(message)
        whole = etree.tostring(element, xml_declaration=True, encoding="UTF-8")
        if len(whole) > MAX_MESSAGE_BYTES:
            with pytest.raises(msg.InvalidMessage, match="too large"):
                msg.check(message)
        else:
            msg.check(message)
            assert msg.to_xml(message) == whole
        assert (len(whole) > MAX_MESSAGE_BYTES) == (size > limit)


def test_an_empty_file_is_refused_as_before() -> None:
    with pytest.raises(msg.InvalidMessage, match="empty"):
        msg.check(_with_files(b""))


def test_mail_parsed_in_pieces_is_what_parsebytes_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mapping, "_FEED_BYTES", 7)  # line ends split across pieces
    mail = EmailMessage()
    mail["Subject"] = "Underlag"
    mail.set_content("Hej\r\nåäö\n" * 40)
    mail.add_attachment(bytes(range(256)) * 20, maintype="application", subtype="pdf")
    mail.add_attachment(b"a\r\nb\rc\nd" * 20, maintype="text", subtype="csv", cte="7bit")
    raw = mail.as_bytes(policy=email.policy.SMTP)
    ours, theirs = parse_mail(raw), BytesParser(policy=email.policy.default).parsebytes(raw)
    assert ours.as_bytes() == theirs.as_bytes()
    decoded = [p.get_payload(decode=True) for p in ours.walk()]
    assert decoded == [p.get_payload(decode=True) for p in theirs.walk()]


def test_base64_attachments_decode_as_the_email_package_decodes() -> None:
    rng = random.Random(7)
    alphabet = "ABCDabcd0123+/=\r\n =-_!é"
    for _ in range(3000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        raw = (
            "Content-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + body
        ).encode()
        part = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(part, EmailMessage)
        assert mapping._payload_bytes(part) == part.get_payload(decode=True), body


@pytest.mark.parametrize(
    "text", ["QUJD", "QUJ\nD", " QUJD ", "QUJ", "QQ==QQ==", "QUJD\u00e9", "", "Q===", "=QUJ"]
)
def test_base64_text_decodes_as_before(text: str) -> None:
    def before() -> bytes:
        return base64.b64decode("".join(text.split()), validate=True)

    try:
        expected = before()
    except ValueError:
        with pytest.raises(ValueError):
            decode_base64(text)
    else:
        assert decode_base64(text) == expected


def _pieces(text: str, piece: int) -> bytes:
    return b"".join(decode_base64_pieces(memoryview(text.encode()), piece))


def test_base64_decoded_in_pieces_is_what_decode_base64_gives() -> None:
    rng = random.Random(11)
    alphabet = "ABCDabcd0123+/" * 4 + "=" * 6 + "\n\t \r\x0bé-"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    texts += [  # valid base64, and padding quirks: strict decoding takes "QUJD=" but not "QQ==="
        base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode() + "=" * rng.randint(0, 4)
        for _ in range(500)
    ]
    texts += ["QQ==QQ==", "QUJD\n\n", "QQ==\n", "QQ\n==", "Q===", "QR==", "QUJD QUJD", "=", ""]
    for text in texts:
        for piece in (1, 3, 4, 5, 8, 1 << 20):
            try:
                expected = decode_base64(text)
            except ValueError:
                with pytest.raises(ValueError):
                    _pieces(text, piece)
            else:
                assert _pieces(text, piece) == expected, (text, piece)


# --- opening with the CipherValue taken apart ---------------------------------------------


@pytest.fixture
def small_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take apart any CipherValue of 100 characters or more, as for a 30 MB message."""
    monkeypatch.setattr(sealing, "APART_BYTES", 100)


def _sealed(alice: Identity, bob: Identity) -> bytes:
    message = _with_files(b"%PDF-1.7\n" + random.Random(3).randbytes(5000))
    return seal_message(message, signer=keypair(alice), recipient_cert=bob.cert)


def _digests(data: bytes) -> tuple[bytes, bytes]:
    """The enveloped signature's document digest of `data`: from the whole c14n, and from
    the c14n with the CipherValue taken apart."""
    whole = parse(data, max_bytes=len(data))
    root, apart = parse_apart(data, max_bytes=len(data), min_text=100)
    assert apart is not None
    for tree in (whole, root):
        xmldsig._remove_keeping_tail(tree.find(q(DS_NS, "Signature")))
    replacing = (apart.placeholder.encode(), apart.text)
    return xmldsig._document_digest(whole), xmldsig._document_digest(root, replacing)


def _cipher_value_span(data: bytes) -> tuple[int, int]:
    start = data.rindex(b"<xenc:CipherValue>") + len(b"<xenc:CipherValue>")  # the payload's
    end = data.index(b"<", start)
    assert end - start > 5000
    return start, end


def test_the_digest_in_parts_is_the_digest_of_the_whole_c14n(
    alice: Identity, bob: Identity
) -> None:
    data = _sealed(alice, bob)
    start, end = _cipher_value_span(data)
    rng = random.Random(5)
    variants = [data]
    for _ in range(20):  # changed, added or removed characters, whitespace among them
        at = rng.randrange(start, end)
        what = rng.choice([b"A", b"/", b"=", b"\n", b" ", b"\t", b""])
        variants.append(data[:at] + what + data[at + 1 :])
    for variant in variants:
        whole, in_parts = _digests(variant)
        assert whole == in_parts


def test_the_placeholder_is_the_payload_cipher_value(alice: Identity, bob: Identity) -> None:
    data = _sealed(alice, bob)
    root, apart = parse_apart(data, max_bytes=len(data), min_text=100)
    assert apart is not None
    start, end = _cipher_value_span(data)
    assert apart.text.tobytes() == data[start:end]
    cipher_values = list(root.iter(q(XENC_NS, "CipherValue")))
    assert [c.text == apart.placeholder for c in cipher_values] == [False, True]
    assert xmldsig.verify(root, replacing=(apart.placeholder.encode(), apart.text)) == alice.cert


def test_a_message_taken_apart_opens_as_the_whole_does(
    alice: Identity, bob: Identity, receiver_b: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _sealed(alice, bob)
    whole = open_envelope(data, receiver_b)
    monkeypatch.setattr(sealing, "APART_BYTES", 100)
    taken_apart = open_envelope(data, receiver_b)
    assert whole.verdict == taken_apart.verdict == ACCEPTED
    assert whole.message == taken_apart.message
    assert whole.plaintext == taken_apart.plaintext


@pytest.mark.usefixtures("small_apart")
@pytest.mark.parametrize("line_end", ["\n", "\r\n", " \t "])
def test_a_wrapped_cipher_value_opens(
    alice: Identity, bob: Identity, receiver_b: Receiver, line_end: str
) -> None:
    """Other implementations wrap base64 (xmlsec1 at 64 characters); "\r" is written as
    &#13;, which is no plain text: that envelope is opened whole."""
    data = _sealed(alice, bob)
    root = parse(data, max_bytes=len(data))
    root.remove(root.find(q(DS_NS, "Signature")))
    cipher_value = list(root.iter(q(XENC_NS, "CipherValue")))[-1]
    text = cipher_value.text or ""
    cipher_value.text = line_end.join(text[i : i + 64] for i in range(0, len(text), 64))
    xmldsig.sign(root, alice.key, alice.cert)
    opened = open_envelope(etree.tostring(root), receiver_b)
    assert opened.verdict == ACCEPTED, opened.verdict.line()


def _second_cipher_value(data: bytes, where: str) -> bytes:
    start, end = _cipher_value_span(data)
    longer = data[start:end] + b"QUJD"
    extra = b"<xenc:CipherValue>" + longer + b"</xenc:CipherValue>"
    if where == "beside":  # a second CipherValue in the payload's CipherData
        return (
            data[:end] + b"</xenc:CipherValue>" + extra[: -len(b"</xenc:CipherValue>")] + data[end:]
        )
    if where == "key":  # a longer one in the EncryptedKey, which the placeholder would take
        at = data.index(b"</xenc:CipherData>")
        return data[:at] + extra + data[at:]
    # a longer base64 text elsewhere in the signed content
    at = data.index(b"</xenc:EncryptedData>")
    return data[:at] + b"<xenc:CipherData>" + extra + b"</xenc:CipherData>" + data[at:]


@pytest.mark.usefixtures("small_apart")
@pytest.mark.parametrize(
    "tamper",
    [
        "one character",
        "whitespace inside",
        "whitespace around",
        "second beside",
        "second key",
        "second elsewhere",
        "carriage return",
    ],
)
def test_a_tampered_cipher_value_fails_the_signature(
    alice: Identity, bob: Identity, receiver_b: Receiver, tamper: str
) -> None:
    data = _sealed(alice, bob)
    start, end = _cipher_value_span(data)
    middle = (start + end) // 2
    flipped = b"B" if data[middle : middle + 1] == b"A" else b"A"
    tampered = {
        "one character": data[:middle] + flipped + data[middle + 1 :],
        "whitespace inside": data[:middle] + b"\n" + data[middle:],
        "whitespace around": data[:start] + b" " + data[start:end] + b"\n" + data[end:],
        "second beside": _second_cipher_value(data, "beside"),
        "second key": _second_cipher_value(data, "key"),
        "second elsewhere": _second_cipher_value(data, "elsewhere"),
        "carriage return": data[:middle] + b"\r" + data[middle:],
    }[tamper]
    assert tampered != data
    _, apart = sealing._parse_envelope(tampered, len(tampered))
    assert (apart is not None) == (
        tamper in ("one character", "whitespace inside", "whitespace around")
    )
    opened = open_envelope(tampered, receiver_b)
    assert opened.verdict.line().startswith("REJECTED SIG security"), opened.verdict.line()
    assert "digest mismatch" in opened.verdict.line()
    assert opened.message is None and opened.plaintext is None


@pytest.mark.parametrize(
    "document",
    [
        b"<a><b>" + b"QUJD\n" * 50 + b"</b><c>QUJD</c></a>",
        b"<a>" + b"QUJD" * 50 + b"<b/>" + b"QUJD" * 60 + b"</a>",  # the longest is taken
        b"<a x='1>" + b"QUJD" * 50 + b"'/>",  # no text: an attribute (parsed whole)
        b"<?xml version='1.0'?>" + b"\n" * 300 + b"<a/>" + b"\n " * 300,  # whitespace only
        b"<a><!--" + b"QUJD" * 50 + b"--></a>",  # a comment
        b"<a>" + b"QUJD\n" * 50 + b"</b>",  # not well-formed: the error's line is the same
        b"<a>\n" + b"QUJD" * 50 + b"&amp;</a>",  # a reference right after
    ],
)
def test_a_document_taken_apart_parses_as_the_whole_does(document: bytes) -> None:
    try:
        whole = etree.tostring(parse(document, max_bytes=10_000))
    except UnsafeXML as e:
        with pytest.raises(UnsafeXML, match=re.escape(str(e))):
            parse_apart(document, max_bytes=10_000, min_text=100)
        return
    root, apart = parse_apart(document, max_bytes=10_000, min_text=100)
    taken_apart = etree.tostring(root)
    if apart is not None:
        placeholder = apart.placeholder.encode()
        assert taken_apart.count(placeholder) == 1
        taken_apart = taken_apart.replace(placeholder, apart.text.tobytes())
    assert taken_apart == whole


def test_decryption_reads_only_the_cipher_value_that_was_taken_apart(
    alice: Identity, bob: Identity
) -> None:
    data = _sealed(alice, bob)
    root, apart = parse_apart(data, max_bytes=len(data), min_text=100)
    assert apart is not None
    encrypted = next(root.iter(q(XENC_NS, "EncryptedData")))
    elsewhere = Apart("0" * 32, apart.text)
    with pytest.raises(xmlenc.DecryptionError, match="not this payload's"):
        xmlenc.decrypt(encrypted, [keypair(bob)], elsewhere)
    whole = parse(data, max_bytes=len(data))
    expected = xmlenc.decrypt(next(whole.iter(q(XENC_NS, "EncryptedData"))), [keypair(bob)])
    assert xmlenc.decrypt(encrypted, [keypair(bob)], apart) == expected
