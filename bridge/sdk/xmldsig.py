"""Enveloped XML-DSig over a whole document, exactly as SDK profiles it.

One Signature, a direct child of the root; one Reference with URI="" (the whole document),
the enveloped-signature transform (optionally followed by c14n 1.0), SHA-256 digest,
rsa-sha256, c14n 1.0, and the signer's certificate in KeyInfo. Anything else is refused,
which also shuts the door on signature wrapping: the tree that was verified is the tree
the caller goes on to read.
"""

import base64
import hashlib
import hmac
from collections.abc import Collection

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from .names import C14N, C14N11, DS_NS, ENVELOPED, RSA_SHA256, SHA256, q
from .xmlsafe import base64_text

_NS = {"ds": DS_NS}


class SignatureInvalid(ValueError):
    pass


class SignatureMissing(SignatureInvalid):
    pass


def _c14n(node: etree._Element | etree._ElementTree) -> bytes:
    return etree.tostring(node, method="c14n", exclusive=False, with_comments=False)


def _remove_keeping_tail(element: etree._Element) -> None:
    """The enveloped-signature transform: drop the element, not the text after it."""
    parent = element.getparent()
    assert parent is not None
    tail = element.tail or ""
    previous = element.getprevious()
    parent.remove(element)
    if previous is not None:
        previous.tail = (previous.tail or "") + tail
    else:
        parent.text = (parent.text or "") + tail


# (placeholder, text): the document in which the one text node `placeholder` is `text`.
Replacing = tuple[bytes, bytes | memoryview]


def _document_digest(root: etree._Element, replacing: Replacing | None = None) -> bytes:
    """The SHA-256 of the document's c14n; with `replacing`, of the c14n of the document in
    which `text` stands for `placeholder`, without making it: for text that c14n writes as
    it is (base64), it is the same bytes in the same place."""
    canonical = _c14n(root.getroottree())
    if replacing is None:
        return hashlib.sha256(canonical).digest()
    placeholder, text = replacing
    parts = canonical.split(placeholder)
    if len(parts) != 2:  # the placeholder is random: a second one is an attack, or a bug
        raise SignatureInvalid("the document cannot be canonicalised in parts")
    head, tail = parts
    digest = hashlib.sha256(head)
    digest.update(text)
    digest.update(tail)
    return digest.digest()


def sign(
    root: etree._Element,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    replacing: Replacing | None = None,
) -> None:
    """Append an enveloped signature over the whole document to `root`.

    `replacing` (placeholder, text): sign the document in which the one text node
    `placeholder` is `text` instead, which the caller writes into the serialised
    document. Only for text that c14n and serialisation leave as it is, such as base64:
    a 40 MB ciphertext would cost libxml2 copies of twice its size.
    """
    digest = _document_digest(root, replacing)
    signature = etree.SubElement(root, q(DS_NS, "Signature"), nsmap={"ds": DS_NS})

    def sub(parent: etree._Element, name: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, q(DS_NS, name), attrs)

    signed_info = sub(signature, "SignedInfo")
    sub(signed_info, "CanonicalizationMethod", Algorithm=C14N)
    sub(signed_info, "SignatureMethod", Algorithm=RSA_SHA256)
    reference = sub(signed_info, "Reference", URI="")
    sub(sub(reference, "Transforms"), "Transform", Algorithm=ENVELOPED)
    sub(reference, "DigestMethod", Algorithm=SHA256)
    sub(reference, "DigestValue").text = base64.b64encode(digest).decode("ascii")
    value = key.sign(_c14n(signed_info), padding.PKCS1v15(), hashes.SHA256())
    sub(signature, "SignatureValue").text = base64.b64encode(value).decode("ascii")
    sub(sub(sub(signature, "KeyInfo"), "X509Data"), "X509Certificate").text = base64.b64encode(
        cert.public_bytes(serialization.Encoding.DER)
    ).decode("ascii")


def _only(parent: etree._Element, path: str, what: str) -> etree._Element:
    found = parent.findall(path, _NS)
    if len(found) != 1:
        raise SignatureInvalid(f"the signature must have exactly one {what}")
    return found[0]


def _b64(element: etree._Element, what: str) -> bytes:
    try:
        return base64_text(element)
    except ValueError:
        raise SignatureInvalid(f"{what} is not valid base64") from None


def verify(
    root: etree._Element,
    canonicalizations: Collection[str] = (C14N,),
    replacing: Replacing | None = None,
) -> x509.Certificate:
    """Check the document's enveloped signature; return the certificate that made it.

    SDK envelopes use c14n 1.0; SMP documents may use c14n 1.1, which gives the same bytes
    as 1.0 for documents without xml:id and xml:base (and those are refused with it).

    The Signature is taken out of the tree on the way (lxml cannot hide it from c14n), so on
    success the tree holds exactly the content that was signed. Only says the signature is
    intact and made with that certificate's key; whether the certificate may speak for the
    sender is the caller's question.

    `replacing` (placeholder, text): verify the document in which the one text node
    `placeholder` is `text` instead (see `sign` and `xmlsafe.parse_apart`).
    """
    signatures = list(root.iter(q(DS_NS, "Signature")))
    if not signatures:
        raise SignatureMissing("the envelope is not signed")
    if len(signatures) != 1 or signatures[0].getparent() is not root:
        raise SignatureInvalid("exactly one signature, a direct child of the root, is allowed")
    signature = signatures[0]
    signed_info = _only(signature, "ds:SignedInfo", "SignedInfo")
    method = _only(signed_info, "ds:SignatureMethod", "SignatureMethod")
    if method.get("Algorithm") != RSA_SHA256 or len(method):
        raise SignatureInvalid(f"SignatureMethod must be {RSA_SHA256}")
    c14n = _only(signed_info, "ds:CanonicalizationMethod", "CanonicalizationMethod")
    canonicalization = c14n.get("Algorithm")
    if canonicalization not in canonicalizations or len(c14n):
        raise SignatureInvalid(
            f"CanonicalizationMethod must be one of {', '.join(canonicalizations)}"
        )
    if canonicalization == C14N11 and root.xpath("//@xml:id | //@xml:base"):
        raise SignatureInvalid("xml:id and xml:base are not supported with c14n 1.1")
    reference = _only(signed_info, "ds:Reference", "Reference")
    if reference.get("URI") != "":
        raise SignatureInvalid('the Reference must cover the whole document (URI="")')
    transforms = [t.get("Algorithm") for t in reference.findall("ds:Transforms/ds:Transform", _NS)]
    if transforms not in ([ENVELOPED], [ENVELOPED, canonicalization]):
        raise SignatureInvalid("only the enveloped-signature and c14n transforms are allowed")
    if _only(reference, "ds:DigestMethod", "DigestMethod").get("Algorithm") != SHA256:
        raise SignatureInvalid("the digest must be SHA-256")
    expected_digest = _b64(_only(reference, "ds:DigestValue", "DigestValue"), "DigestValue")
    signature_value = _b64(
        _only(signature, "ds:SignatureValue", "SignatureValue"), "SignatureValue"
    )
    cert_element = _only(signature, "ds:KeyInfo/ds:X509Data/ds:X509Certificate", "certificate")
    try:
        cert = x509.load_der_x509_certificate(_b64(cert_element, "X509Certificate"))
    except ValueError:
        raise SignatureInvalid("the signer's certificate cannot be read") from None
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureInvalid("the signer's key is not an RSA key")

    signed_bytes = _c14n(signed_info)  # in its place: c14n 1.0 takes inherited namespaces
    _remove_keeping_tail(signature)
    digest = _document_digest(root, replacing)
    if not hmac.compare_digest(digest, expected_digest):
        raise SignatureInvalid("the signed content has been changed (digest mismatch)")
    try:
        public_key.verify(signature_value, signed_bytes, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid("the signature value does not match the signer's key") from None
    return cert
