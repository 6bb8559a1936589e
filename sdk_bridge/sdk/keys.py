"""Keys and certificates from PEM or PKCS#12 files.

SITHS function certificates usually arrive as .p12; private keys may be encrypted with a
passphrase. Certificates and `KeyPair`s pickle (as DER), so the RSA work that uses them can
be handed to the crypto worker processes.
"""

import copyreg
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12


class KeyError_(ValueError):
    """A key or certificate file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class KeyPair:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    def __post_init__(self) -> None:
        public = self.cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise KeyError_("the certificate's key is not an RSA key")
        if self.key.public_key().public_numbers() != public.public_numbers():
            raise KeyError_("the private key does not belong to the certificate")

    def __reduce__(self) -> tuple[object, tuple[bytes, x509.Certificate]]:
        return _keypair_from_der, (self._der_key, self.cert)

    @functools.cached_property
    def _der_key(self) -> bytes:  # once: every task for a crypto worker pickles the key
        return self.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@functools.lru_cache(maxsize=16)
def _keypair_from_der(der_key: bytes, cert: x509.Certificate) -> KeyPair:
    # Cached: every task sent to a crypto worker carries its key, and loading an RSA key
    # checks it, which costs more than the signature the task is for.
    key = serialization.load_der_private_key(der_key, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return KeyPair(key, cert)


# Both ways cached: the same few certificates (ours, our trust anchors, our correspondents')
# go with task after task to the crypto workers.
@functools.lru_cache(maxsize=1024)
def _certificate_from_der(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


@functools.lru_cache(maxsize=1024)
def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _reduce_certificate(
    cert: x509.Certificate,
) -> tuple[Callable[[bytes], x509.Certificate], tuple[bytes]]:
    return _certificate_from_der, (_der(cert),)


copyreg.pickle(x509.Certificate, _reduce_certificate)


def read_passphrase(path: Path) -> bytes:
    """A passphrase file's content, without the line break editors add."""
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as e:
        raise KeyError_(f"{path}: cannot read the passphrase ({e.strerror})") from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """All certificates in a PEM file (one or several) or a single DER file."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise KeyError_(f"{path}: not a PEM or DER certificate ({e})") from None


def load_keypair(
    key_path: Path, cert_path: Path | None = None, passphrase: bytes | None = None
) -> KeyPair:
    """A private key and its certificate: a PKCS#12 file, or a PEM key plus a certificate."""
    data = key_path.read_bytes()
    if key_path.suffix.lower() in (".p12", ".pfx"):
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(data, passphrase)
        except ValueError as e:
            raise KeyError_(f"{key_path}: cannot open PKCS#12 ({e})") from None
        if cert_path is not None:
            cert = load_certificates(cert_path)[0]
    else:
        if b"ENCRYPTED" not in data:  # one passphrase may be configured for several keys
            passphrase = None
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except (ValueError, TypeError) as e:
            raise KeyError_(f"{key_path}: cannot read the private key ({e})") from None
        if cert_path is None:
            raise KeyError_(f"{key_path}: a PEM key needs its certificate file too")
        cert = load_certificates(cert_path)[0]
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyError_(f"{key_path}: SDK needs an RSA key")
    if cert is None:
        raise KeyError_(f"{key_path}: no certificate found")
    try:
        return KeyPair(key, cert)
    except KeyError_ as e:
        raise KeyError_(f"{key_path}: {e}") from None
