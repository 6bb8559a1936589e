"""Enveloped XML-DSig over a whole document, exactly as SDK profiles it.

One Signature, a direct child of the root; one Reference with URI="" (the whole document),
the enveloped-signature transform optionally followed by one canonicalization, SHA-256
digest, rsa-sha256, and the signer's certificate in KeyInfo. Anything else is refused
(XPath, XSLT, base64 and other transforms, more References, other URIs, SHA-1), which also
shuts the door on signature wrapping: the tree that was verified is the tree the caller
goes on to read. We sign with Canonical XML 1.0.

Canonicalizations. Digg's XHE profile (C3.2.2 §3.5.2.1) allows those XMLDSig 1.1 §6.1
makes REQUIRED: Canonical XML 1.0, Canonical XML 1.1 and Exclusive XML Canonicalization
1.0, each omitting comments. Each may be SignedInfo's CanonicalizationMethod and,
independently, the Reference's transform after enveloped-signature; without that transform
the node-set becomes octets by Canonical XML 1.0 (XMLDSig §4.4.3.2). The #WithComments
variants are only RECOMMENDED in §6.1, so outside the profile, and refused: our parser
drops comments (`xmlsafe.parse`), so a SignedInfo canonicalised with them could not be
checked faithfully, and for URI="" comments are out of the node-set anyway (§4.4.3.3).

Exclusive c14n's InclusiveNamespaces PrefixList, a child of either, is honoured; lxml
drops "#default" from it, so the default namespace is then rendered as inclusive c14n
renders it (`_default_namespace_from`). Exclusive c14n does not sign a namespace
declaration that no element or attribute name uses; nothing we read takes a prefix from
content (no xsi:type, no QName values), so no such change reaches what we believe.

Canonical XML 1.1 differs from 1.0 only in the xml:* attributes an element inherits when
its parent is left out of the node-set: not xml:id, xml:base joined (RFC 3986), xml:lang
and xml:space as before. The Reference's node-set (the document less the whole Signature)
leaves out no element's parent, so there 1.1 gives exactly 1.0's bytes, whatever xml:*
the document holds. SignedInfo is canonicalised without its ancestors: lxml treats the
subtree as a document of its own (namespaces in scope kept, xml:* not carried down), so the
ancestors' xml:* attributes are put on it as 1.0 and 1.1 carry them. An xml:base (or an
unknown xml:*) on those ancestors is refused with 1.1: the fixup is not implemented, and a
refusal that says so beats a signature mismatch that does not. (lxml's method="c14n2" is
Canonical XML 2.0, another algorithm, not 1.1.)
"""

import base64
import hashlib
import hmac
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from .names import C14N, C14N11, DS_NS, ENVELOPED, EXC_C14N, RSA_SHA256, SHA256, XML_NS, q
from .xmlsafe import base64_text

_NS = {"ds": DS_NS}

# Those XMLDSig 1.1 §6.1 makes REQUIRED, all the XHE profile allows (see above).
CANONICALIZATIONS: Final = (C14N, C14N11, EXC_C14N)
_INCLUSIVE_NAMESPACES: Final = q(EXC_C14N, "InclusiveNamespaces")
_DEFAULT: Final = "#default"  # the default namespace, in a PrefixList
_PREFIX: Final = re.compile(r"#default|[^\W\d][\w.-]*")  # an NCName, or the default namespace
# In canonical XML: a processing instruction, an end tag, or a start tag's name (1) and its
# default namespace declaration (2), which would be its first attribute.
_TAG: Final = re.compile(rb'<\?.*?\?>|</|<([^\s>]+)( xmlns="[^"]*")?', re.DOTALL)
_XML_ID: Final = q(XML_NS, "id")
_SIMPLY_INHERITED: Final = frozenset({q(XML_NS, "lang"), q(XML_NS, "space")})


class SignatureInvalid(ValueError):
    pass


class SignatureMissing(SignatureInvalid):
    pass


@dataclass(frozen=True)
class _Canonicalization:
    """One of CANONICALIZATIONS, with exclusive c14n's InclusiveNamespaces PrefixList."""

    algorithm: str = C14N
    prefixes: tuple[str, ...] = ()

    def __call__(self, node: etree._Element | etree._ElementTree) -> bytes:
        if self.algorithm != EXC_C14N:
            # C14N 1.1 as 1.0: the same bytes where we use it (see the module docstring).
            return _inclusive_c14n(node)
        exclusive = etree.tostring(
            node,
            method="c14n",
            exclusive=True,
            with_comments=False,
            inclusive_ns_prefixes=[prefix for prefix in self.prefixes if prefix != _DEFAULT],
        )
        if _DEFAULT not in self.prefixes:
            return exclusive
        return _default_namespace_from(_inclusive_c14n(node), exclusive)


def _inclusive_c14n(node: etree._Element | etree._ElementTree) -> bytes:
    return etree.tostring(node, method="c14n", exclusive=False, with_comments=False)


def _default_namespace_from(inclusive: bytes, exclusive: bytes) -> bytes:
    """Exclusive c14n with "#default" in the PrefixList, which lxml drops (it passes libxml2
    only prefixes it finds in the document's dictionary). Such a default namespace is
    rendered as inclusive c14n renders it, the prefixed ones as exclusive c14n does, and
    nothing else differs: `exclusive` with each start tag's xmlns="..." taken from
    `inclusive`, the same node-set's inclusive c14n. In canonical XML a start tag's
    default namespace declaration comes first, and every "<" opens a tag or a processing
    instruction (text and attribute values carry it as &lt;)."""
    theirs = (tag for tag in _TAG.finditer(inclusive) if tag[1])
    view = memoryview(exclusive)
    parts: list[bytes | memoryview] = []
    at = 0
    for tag in _TAG.finditer(exclusive):
        if not tag[1]:  # a processing instruction or an end tag
            continue
        other = next(theirs, None)
        if other is None or other[1] != tag[1]:
            raise SignatureInvalid("the document cannot be canonicalised with #default")
        parts += (view[at : tag.end(1)], other[2] or b"")
        at = tag.end()
    if next(theirs, None) is not None:
        raise SignatureInvalid("the document cannot be canonicalised with #default")
    parts.append(view[at:])
    return b"".join(parts)


_C14N_1_0: Final = _Canonicalization()


def _canonicalization(
    element: etree._Element, allowed: Collection[str], what: str
) -> _Canonicalization:
    """The canonicalization `element` (a CanonicalizationMethod or Transform) names."""
    algorithm = element.get("Algorithm")
    if algorithm is None or algorithm not in allowed:
        raise SignatureInvalid(f"{what} must be one of {', '.join(allowed)}")
    if not len(element):
        return _Canonicalization(algorithm)
    parameter = element[0]
    if (
        algorithm != EXC_C14N
        or len(element) != 1
        or parameter.tag != _INCLUSIVE_NAMESPACES
        or len(parameter)
        or (parameter.text or "").strip()
        or set(parameter.keys()) - {"PrefixList"}
    ):
        raise SignatureInvalid(
            f"{what} takes no parameters but exclusive c14n's InclusiveNamespaces PrefixList"
        )
    prefixes = tuple((parameter.get("PrefixList") or "").split())
    if not all(_PREFIX.fullmatch(prefix) for prefix in prefixes):
        raise SignatureInvalid("InclusiveNamespaces PrefixList must name namespace prefixes")
    return _Canonicalization(algorithm, prefixes)


def _reference_canonicalization(
    reference: etree._Element, allowed: Collection[str]
) -> _Canonicalization:
    """The Reference's transforms: enveloped-signature, then at most one canonicalization;
    without one, the node-set becomes octets by Canonical XML 1.0 (XMLDSig §4.4.3.2)."""
    container = _only(reference, "ds:Transforms", "Transforms")
    transforms = container.findall("ds:Transform", _NS)
    if (
        len(transforms) not in (1, 2)
        or len(transforms) != len(container)
        or transforms[0].get("Algorithm") != ENVELOPED
        or len(transforms[0])
    ):
        raise SignatureInvalid(
            "only the enveloped-signature transform, then one c14n transform, is allowed"
        )
    if len(transforms) == 1:
        return _C14N_1_0
    return _canonicalization(transforms[1], allowed, "the transform after enveloped-signature")


def _signed_info_bytes(signed_info: etree._Element, c14n: _Canonicalization) -> bytes:
    """SignedInfo canonicalised in its place, as the signer did: inclusive c14n takes the
    namespaces in scope (lxml does) and the xml:* attributes of the ancestors it leaves out
    (lxml does not: they are put on SignedInfo for the moment, then taken off again)."""
    inherited: dict[str, str] = {}
    if c14n.algorithm != EXC_C14N:  # exclusive c14n carries no xml:* down
        for ancestor in signed_info.iterancestors():
            for name, value in ancestor.items():
                if not name.startswith(f"{{{XML_NS}}}") or name in signed_info.attrib:
                    continue
                if c14n.algorithm == C14N11 and name not in _SIMPLY_INHERITED:
                    if name == _XML_ID:  # not inherited in 1.1
                        continue
                    raise SignatureInvalid(
                        "xml:base and unknown xml:* attributes above SignedInfo are not "
                        "supported with c14n 1.1"
                    )
                inherited.setdefault(name, value)  # the nearest ancestor's
    for name, value in inherited.items():
        signed_info.set(name, value)
    try:
        return c14n(signed_info)
    finally:
        for name in inherited:
            del signed_info.attrib[name]


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


def _document_digest(
    root: etree._Element,
    replacing: Replacing | None = None,
    c14n: _Canonicalization = _C14N_1_0,
) -> bytes:
    """The SHA-256 of the document's c14n; with `replacing`, of the c14n of the document in
    which `text` stands for `placeholder`, without making it: for text that c14n writes as
    it is (base64), it is the same bytes in the same place, whichever c14n it is."""
    canonical = c14n(root.getroottree())
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
    signed_bytes = _signed_info_bytes(signed_info, _C14N_1_0)
    value = key.sign(signed_bytes, padding.PKCS1v15(), hashes.SHA256())
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
    canonicalizations: Collection[str] = CANONICALIZATIONS,
    replacing: Replacing | None = None,
) -> x509.Certificate:
    """Check the document's enveloped signature; return the certificate that made it.

    `canonicalizations`: those allowed as CanonicalizationMethod and as the Reference's c14n
    transform; by default all the XHE profile allows (SMP documents are read with fewer).

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
    signed_info_c14n = _canonicalization(
        _only(signed_info, "ds:CanonicalizationMethod", "CanonicalizationMethod"),
        canonicalizations,
        "CanonicalizationMethod",
    )
    reference = _only(signed_info, "ds:Reference", "Reference")
    if reference.get("URI") != "":
        raise SignatureInvalid('the Reference must cover the whole document (URI="")')
    document_c14n = _reference_canonicalization(reference, canonicalizations)
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

    signed_bytes = _signed_info_bytes(signed_info, signed_info_c14n)  # before it goes
    _remove_keeping_tail(signature)
    digest = _document_digest(root, replacing, document_c14n)
    if not hmac.compare_digest(digest, expected_digest):
        raise SignatureInvalid("the signed content has been changed (digest mismatch)")
    try:
        public_key.verify(signature_value, signed_bytes, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid("the signature value does not match the signer's key") from None
    return cert
