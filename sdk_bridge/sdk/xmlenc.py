"""XML Encryption 1.0 as SDK uses it: one element, aes256-cbc, key transport rsa-oaep-mgf1p.

Our own small code: no maintained Python library does XML-Enc, and the profile is narrow.
The recipient's certificate goes into the EncryptedKey's KeyInfo, so a receiver holding
several keys (certificate rollover) knows which one to use.
"""

import base64
import binascii
import os
from collections.abc import Iterable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from lxml import etree

from .keys import KeyPair
from .names import AES256_CBC, DS_NS, RSA_OAEP_MGF1P, SHA1, XENC_ELEMENT, XENC_NS, q
from .xmlsafe import Apart, base64_text, decode_base64_pieces

_OAEP = asym_padding.OAEP(
    mgf=asym_padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
)
_NS = {"xenc": XENC_NS, "ds": DS_NS}
_CHUNK = 1 << 20  # plaintext bytes encrypted at a time


class DecryptionError(ValueError):
    """The payload cannot be decrypted as SDK expects (no kvittens: C3.2.4 §2.1.2)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encrypt(plaintext: bytes, recipient: x509.Certificate) -> etree._Element:
    """An `xenc:EncryptedData` (Type Element) holding `plaintext`, a serialized element."""
    data, cipher_value = encrypt_apart([plaintext], recipient)
    _one(data, "xenc:CipherData/xenc:CipherValue", "CipherValue").text = cipher_value
    return data


def encrypt_apart(
    plaintext: Iterable[bytes], recipient: x509.Certificate
) -> tuple[etree._Element, bytes]:
    """`encrypt` for a plaintext given in pieces, with the payload's CipherValue left empty
    and its base64 returned beside it: the sealer writes that 40 MB text into the
    serialised envelope itself, past libxml2's copies (see `message.serialize`)."""
    session_key = os.urandom(32)
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(session_key), modes.CBC(iv)).encryptor()
    # IV and ciphertext grow in one buffer a chunk at a time: a 30 MB message is not
    # copied again for the padding, the concatenations and the IV.
    blob = bytearray(iv)
    size = 0
    for piece in plaintext:
        view = memoryview(piece)
        for start in range(0, len(view), _CHUNK):
            blob += encryptor.update(view[start : start + _CHUNK])
        size += len(view)
    pad = 16 - size % 16  # PKCS#7, a valid XML-Enc (ISO 10126) padding
    blob += encryptor.update(bytes([pad]) * pad) + encryptor.finalize()
    cipher_value = binascii.b2a_base64(blob, newline=False)
    del blob
    wrapped_key = recipient.public_key().encrypt(session_key, _OAEP)  # type: ignore[union-attr]

    def sub(parent: etree._Element, ns: str, name: str, **attrs: str) -> etree._Element:
        return etree.SubElement(parent, q(ns, name), attrs)

    data = etree.Element(
        q(XENC_NS, "EncryptedData"), {"Type": XENC_ELEMENT}, nsmap={"xenc": XENC_NS}
    )
    sub(data, XENC_NS, "EncryptionMethod", Algorithm=AES256_CBC)
    key_info = etree.SubElement(data, q(DS_NS, "KeyInfo"), nsmap={"ds": DS_NS})
    encrypted_key = sub(key_info, XENC_NS, "EncryptedKey")
    method = sub(encrypted_key, XENC_NS, "EncryptionMethod", Algorithm=RSA_OAEP_MGF1P)
    sub(method, DS_NS, "DigestMethod", Algorithm=SHA1)
    x509_data = sub(sub(encrypted_key, DS_NS, "KeyInfo"), DS_NS, "X509Data")
    sub(x509_data, DS_NS, "X509Certificate").text = _b64(
        recipient.public_bytes(serialization.Encoding.DER)
    )
    key_cipher = sub(encrypted_key, XENC_NS, "CipherData")
    sub(key_cipher, XENC_NS, "CipherValue").text = _b64(wrapped_key)
    sub(sub(data, XENC_NS, "CipherData"), XENC_NS, "CipherValue")
    return data, cipher_value


def _one(element: etree._Element, path: str, what: str) -> etree._Element:
    found = element.findall(path, _NS)
    if len(found) != 1:
        raise DecryptionError(f"expected exactly one {what}")
    return found[0]


def _decode(element: etree._Element, what: str) -> bytes:
    try:
        return base64_text(element)
    except ValueError:
        raise DecryptionError(f"{what} is not valid base64") from None


def _algorithm(element: etree._Element, path: str, what: str) -> str:
    return _one(element, path, what).get("Algorithm", "")


def decrypt(
    encrypted_data: etree._Element, keys: list[KeyPair], apart: Apart | None = None
) -> bytearray:
    """The plaintext element bytes, using whichever of `keys` the sender encrypted to.

    `apart`: the payload's CipherValue was left out of the tree (`xmlsafe.parse_apart`); its
    text is decoded and decrypted a piece at a time, so that no whole copy of it, nor of
    the ciphertext, is ever made.
    """
    if encrypted_data.tag != q(XENC_NS, "EncryptedData"):
        raise DecryptionError("the payload is not an xenc:EncryptedData")
    if encrypted_data.get("Type") != XENC_ELEMENT:
        raise DecryptionError("EncryptedData Type must be Element")
    if _algorithm(encrypted_data, "xenc:EncryptionMethod", "EncryptionMethod") != AES256_CBC:
        raise DecryptionError("the payload cipher must be aes256-cbc")
    session_key = _unwrap_session_key(encrypted_data, keys)
    cipher_value = _one(encrypted_data, "xenc:CipherData/xenc:CipherValue", "CipherValue")
    if apart is None:
        blob = _decode(cipher_value, "CipherValue")
        return _decrypt_cbc(session_key, [blob], len(blob))
    if cipher_value.text != apart.placeholder:
        raise DecryptionError("the CipherValue taken apart is not this payload's")
    return _decrypt_cbc(session_key, _decoded(apart.text), len(apart.text) // 4 * 3)


def _decoded(text: memoryview) -> Iterator[bytes]:
    try:
        yield from decode_base64_pieces(text)
    except ValueError:
        raise DecryptionError("CipherValue is not valid base64") from None


def _decrypt_cbc(session_key: bytes, blob: Iterable[bytes], most: int) -> bytearray:
    """IV and ciphertext, given in pieces of at most `most` bytes in all, decrypted into one
    buffer and cut there: no copies for the IV, the padding or the concatenation."""
    plaintext = bytearray(most + 15)  # update_into wants room for one more block
    iv, decryptor, size, length = b"", None, 0, 0
    for piece in blob:
        view = memoryview(piece)
        length += len(view)
        if decryptor is None:
            taken = 16 - len(iv)
            iv, view = iv + view[:taken], view[taken:]
            if len(iv) < 16:
                continue
            decryptor = Cipher(algorithms.AES(session_key), modes.CBC(iv)).decryptor()
        size += decryptor.update_into(view, memoryview(plaintext)[size:])
    if decryptor is None or length < 32 or length % 16:
        raise DecryptionError("the ciphertext has an impossible length")
    decryptor.finalize()
    pad = plaintext[size - 1]
    if not 1 <= pad <= 16:
        raise DecryptionError("the payload does not decrypt with this key")
    del plaintext[size - pad :]
    return plaintext


def _unwrap_session_key(encrypted_data: etree._Element, keys: list[KeyPair]) -> bytes:
    encrypted_keys = encrypted_data.findall("ds:KeyInfo/xenc:EncryptedKey", _NS)
    if not encrypted_keys:
        raise DecryptionError("no EncryptedKey in the payload's KeyInfo")
    for encrypted_key in encrypted_keys:
        method = _one(encrypted_key, "xenc:EncryptionMethod", "key EncryptionMethod")
        if method.get("Algorithm") != RSA_OAEP_MGF1P:
            raise DecryptionError("key transport must be rsa-oaep-mgf1p")
        digest = method.find("ds:DigestMethod", _NS)
        if digest is not None and digest.get("Algorithm") != SHA1:
            raise DecryptionError("rsa-oaep-mgf1p must use the SHA-1 digest")
        wrapped = _decode(
            _one(encrypted_key, "xenc:CipherData/xenc:CipherValue", "key CipherValue"),
            "key CipherValue",
        )
        for keypair in _candidates(encrypted_key, keys):
            try:
                session_key = keypair.key.decrypt(wrapped, _OAEP)
            except ValueError:
                continue
            if len(session_key) != 32:
                raise DecryptionError("the session key is not an AES-256 key")
            return session_key
    raise DecryptionError("the payload is not encrypted to any of our keys")


def _candidates(encrypted_key: etree._Element, keys: list[KeyPair]) -> list[KeyPair]:
    """The key the sender named by certificate, else all of them."""
    named = encrypted_key.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)
    if named is None:
        return keys
    der = _decode(named, "recipient X509Certificate")
    return [k for k in keys if k.cert.public_bytes(serialization.Encoding.DER) == der]
