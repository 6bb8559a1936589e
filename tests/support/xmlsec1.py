"""Thin wrappers around the `xmlsec1` command-line tool (Debian package xmlsec1).

xmlsec1 is an implementation independent of ours, so tests use it to cross-check our
XML-DSig/XML-Enc output in both directions: it verifies/decrypts what we produce, and it
signs/encrypts documents (in the SDK profile, or in other XMLDSig forms) that our code must
accept or refuse.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

XMLSEC1: str | None = shutil.which("xmlsec1")
TIMEOUT = 30  # seconds per xmlsec1 invocation

DS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N11 = "http://www.w3.org/2006/12/xml-c14n11"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"  # also InclusiveNamespaces' namespace
ENVELOPED = f"{DS}enveloped-signature"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = f"{XENC}sha256"


def algorithm(tag: str, uri: str, prefix_list: str | None = None, content: str = "") -> str:
    """A ds:`tag` element (CanonicalizationMethod, Transform, ...) naming `uri`, with
    `content` inside; `prefix_list` adds exclusive c14n's ec:InclusiveNamespaces."""
    if prefix_list is not None:
        content += f'<ec:InclusiveNamespaces xmlns:ec="{EXC_C14N}" PrefixList="{prefix_list}"/>'
    return f'<ds:{tag} Algorithm="{uri}">{content}</ds:{tag}>'


def transform(uri: str, prefix_list: str | None = None, content: str = "") -> str:
    return algorithm("Transform", uri, prefix_list, content)


# The SDK profile's Reference transforms, as our own `xmldsig.sign` makes them.
SDK_TRANSFORMS = (transform(ENVELOPED), transform(C14N))


def signature_template(
    *,
    canonicalization: str = C14N,
    prefix_list: str | None = None,
    transforms: Sequence[str] = SDK_TRANSFORMS,
    signature_method: str = RSA_SHA256,
    digest_method: str = SHA256,
) -> str:
    """An enveloped ds:Signature for xmlsec1 to fill; by default the SDK profile's.

    `canonicalization` (with exclusive c14n's `prefix_list`) is SignedInfo's
    CanonicalizationMethod; `transforms` (see `transform`) are the Reference's, in order.
    """
    return (
        f'<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo>'
        + algorithm("CanonicalizationMethod", canonicalization, prefix_list)
        + algorithm("SignatureMethod", signature_method)
        + f'<ds:Reference URI=""><ds:Transforms>{"".join(transforms)}</ds:Transforms>'
        + algorithm("DigestMethod", digest_method)
        + "<ds:DigestValue/></ds:Reference></ds:SignedInfo><ds:SignatureValue/>"
        + "<ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature>"
    )


_ENCRYPTED_DATA_TEMPLATE = f"""\
<xenc:EncryptedData xmlns:xenc="{XENC}" Type="{XENC}Element">\
<xenc:EncryptionMethod Algorithm="{XENC}aes256-cbc"/>\
<ds:KeyInfo xmlns:ds="{DS}"><xenc:EncryptedKey>\
<xenc:EncryptionMethod Algorithm="{XENC}rsa-oaep-mgf1p">\
<ds:DigestMethod Algorithm="{DS}sha1"/></xenc:EncryptionMethod>\
<ds:KeyInfo><ds:X509Data/></ds:KeyInfo>\
<xenc:CipherData><xenc:CipherValue/></xenc:CipherData>\
</xenc:EncryptedKey></ds:KeyInfo>\
<xenc:CipherData><xenc:CipherValue/></xenc:CipherData></xenc:EncryptedData>"""


class Xmlsec1Error(RuntimeError):
    """xmlsec1 failed; the message carries its command line and output."""


def require_xmlsec1() -> str:
    """Skip the calling test when xmlsec1 is not installed; return its path otherwise."""
    if XMLSEC1 is None:
        pytest.skip("xmlsec1 command-line tool not installed (apt-get install xmlsec1)")
    return XMLSEC1


def verify(
    xml: bytes,
    *,
    trusted_pems: Sequence[Path] | None = None,
    untrusted_pems: Sequence[Path] | None = None,
    insecure: bool = False,
    at: datetime | None = None,
) -> tuple[bool, str]:
    """Verify the first ds:Signature in `xml`; return (ok, xmlsec1's combined output).

    Certificates in ds:KeyInfo are chain-checked against `trusted_pems` unless `insecure`;
    `untrusted_pems` supply intermediates that the document itself does not carry.
    `at` sets the certificate validation time (naive datetimes are taken as UTC).
    """
    args = ["--verify"]
    for pem in trusted_pems or []:
        args += ["--trusted-pem", str(pem)]
    for pem in untrusted_pems or []:
        args += ["--untrusted-pem", str(pem)]
    if insecure:
        args.append("--insecure")
    if at is not None:
        at_utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        args += ["--verification-gmt-time", at_utc.strftime("%Y-%m-%d %H:%M:%S")]
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp, "in.xml")
        doc.write_bytes(xml)
        proc = _run([*args, str(doc)])
    return proc.returncode == 0, proc.stdout + proc.stderr


def decrypt(xml: bytes, key_pem: Path) -> bytes:
    """Decrypt the first xenc:EncryptedData (anywhere in `xml`); return the whole document."""
    with tempfile.TemporaryDirectory() as tmp:
        doc, out = Path(tmp, "in.xml"), Path(tmp, "out.xml")
        doc.write_bytes(xml)
        _check(_run(["--decrypt", "--privkey-pem", str(key_pem), "--output", str(out), str(doc)]))
        return out.read_bytes()


def sign_enveloped(xml: bytes, key_pem: Path, cert_pem: Path, template: str | None = None) -> bytes:
    """Sign the whole document the SDK way (enveloped, c14n 1.0, rsa-sha256, sha256), or
    as `template` (see `signature_template`) says.

    The ds:Signature is appended as last child of the root; xmlsec1 fills DigestValue,
    SignatureValue and ds:X509Data/ds:X509Certificate with `cert_pem`.
    """
    tree = etree.ElementTree(etree.fromstring(xml))
    tree.getroot().append(etree.fromstring(template or signature_template()))
    with tempfile.TemporaryDirectory() as tmp:
        doc, out = Path(tmp, "template.xml"), Path(tmp, "out.xml")
        tree.write(str(doc), xml_declaration=True, encoding="UTF-8")
        key = f"{key_pem},{cert_pem}"
        _check(_run(["--sign", "--privkey-pem", key, "--output", str(out), str(doc)]))
        return out.read_bytes()


def encrypt_element(xml: bytes, target: str, recipient_cert_pem: Path) -> bytes:
    """Replace one element of `xml` with an SDK-style xenc:EncryptedData (Type=Element).

    `target` is the Clark tag ("{namespace}local", or "local" for no namespace) of the
    element to encrypt; the first one in document order is used. Content is aes256-cbc
    with a fresh session key, wrapped in an xenc:EncryptedKey (rsa-oaep-mgf1p, SHA-1)
    whose ds:KeyInfo carries the recipient's ds:X509Certificate.
    """
    ns, _, local = target[1:].rpartition("}") if target.startswith("{") else ("", "", target)
    xpath = f"(//*[local-name()='{local}' and namespace-uri()='{ns}'])[1]"
    with tempfile.TemporaryDirectory() as tmp:
        data, template, out = (Path(tmp, n) for n in ("data.xml", "template.xml", "out.xml"))
        data.write_bytes(xml)
        template.write_text(_ENCRYPTED_DATA_TEMPLATE, encoding="utf-8")
        args = ["--encrypt", "--pubkey-cert-pem", str(recipient_cert_pem)]
        args += ["--session-key", "aes-256", "--xml-data", str(data), "--node-xpath", xpath]
        _check(_run([*args, "--output", str(out), str(template)]))
        return out.read_bytes()


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_xmlsec1(), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        cmd = " ".join(proc.args)
        raise Xmlsec1Error(f"{cmd} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
