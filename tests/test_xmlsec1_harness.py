"""Self-test of the test PKI and the xmlsec1 wrappers, so cross-check failures elsewhere
point at bridge code rather than at the harness."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from lxml import etree
from support.xmlsec1 import (
    DS,
    XENC,
    decrypt,
    encrypt_element,
    require_xmlsec1,
    sign_enveloped,
    verify,
)

from sdk_bridge.lab.testpki import PASSPHRASE, Identity, TestPKI, make_pki

BIZ = "{urn:example:business}Letter"
DOC = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<e:Envelope xmlns:e="urn:example:envelope"><e:Header><e:ID>42</e:ID></e:Header>'
    "<e:PayloadContent>"
    '<b:Letter xmlns:b="urn:example:business" lang="sv"><b:Body>Hej &amp; välkommen'
    "</b:Body></b:Letter>"
    "</e:PayloadContent></e:Envelope>"
).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"), key_size=2048)


@pytest.fixture(scope="module")
def alice(pki: TestPKI) -> Identity:
    return pki.issue("Alice AB", key_usage="sign")


@pytest.fixture(scope="module")
def bob(pki: TestPKI) -> Identity:
    return pki.issue("Bob AB", key_usage="encrypt")


def test_pki_chain_and_key_files(pki: TestPKI, alice: Identity) -> None:
    alice.cert.verify_directly_issued_by(pki.issuing_ca.cert)
    pki.issuing_ca.cert.verify_directly_issued_by(pki.root.cert)
    ku = alice.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment
    assert x509.load_pem_x509_certificates(pki.chain_pem.read_bytes()) == [
        pki.issuing_ca.cert,
        pki.root.cert,
    ]

    key, cert, chain = pkcs12.load_key_and_certificates(alice.p12.read_bytes(), PASSPHRASE)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.private_numbers() == alice.key.private_numbers()
    assert cert == alice.cert
    assert chain == [pki.issuing_ca.cert, pki.root.cert]

    enc = alice.key_pem_encrypted.read_bytes()
    loaded = serialization.load_pem_private_key(enc, PASSPHRASE)
    assert loaded.private_numbers() == alice.key.private_numbers()  # type: ignore[union-attr]
    with pytest.raises(TypeError):  # really encrypted: no password is refused
        serialization.load_pem_private_key(enc, None)


def test_sign_enveloped_verifies_and_detects_tampering(pki: TestPKI, alice: Identity) -> None:
    require_xmlsec1()
    trusted = [pki.root_pem, pki.issuing_ca.cert_pem]
    signed = sign_enveloped(DOC, alice.key_pem, alice.cert_pem)

    root = etree.fromstring(signed)
    assert root[-1].tag == f"{{{DS}}}Signature"
    assert root.findtext(f".//{{{DS}}}X509Certificate") is not None

    ok, out = verify(signed, trusted_pems=trusted)
    assert ok, out
    assert not verify(signed)[0]  # untrusted signer certificate
    assert not verify(signed, trusted_pems=trusted, at=datetime.now(UTC) + timedelta(days=800))[0]

    tampered = signed.replace(b"Hej", b"Hek", 1)
    assert tampered != signed
    ok, out = verify(tampered, trusted_pems=trusted)
    assert not ok, out


def test_encrypt_element_roundtrip(alice: Identity, bob: Identity) -> None:
    require_xmlsec1()
    encrypted = encrypt_element(DOC, BIZ, bob.cert_pem)

    payload = etree.fromstring(encrypted).find("{urn:example:envelope}PayloadContent")
    assert payload is not None
    (enc_data,) = payload
    assert enc_data.tag == f"{{{XENC}}}EncryptedData"
    assert enc_data.get("Type") == f"{XENC}Element"
    assert "välkommen".encode() not in encrypted
    cert_b64 = enc_data.findtext(f".//{{{XENC}}}EncryptedKey//{{{DS}}}X509Certificate")
    assert cert_b64 is not None
    assert x509.load_der_x509_certificate(_b64(cert_b64)) == bob.cert

    with pytest.raises(RuntimeError):
        decrypt(encrypted, alice.key_pem)  # wrong recipient
    decrypted = etree.fromstring(decrypt(encrypted, bob.key_pem))
    original = etree.fromstring(DOC)
    assert _c14n(decrypted.find(f".//{BIZ}")) == _c14n(original.find(f".//{BIZ}"))
    assert _c14n(decrypted) == _c14n(original)


def test_pki_issue_respects_validity(pki: TestPKI) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    ident = pki.issue("Old", not_before=start, not_after=start + timedelta(days=1))
    assert ident.cert.not_valid_before_utc == start
    assert ident.cert_pem.parent == pki.directory


def _b64(text: str) -> bytes:
    return base64.b64decode("".join(text.split()))  # xmlsec1 wraps base64 at 64 columns


def _c14n(element: etree._Element | None) -> bytes:
    assert element is not None
    return etree.tostring(element, method="c14n")
