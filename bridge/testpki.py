"""A throwaway test PKI (root -> issuing CA -> leaf certificates) built with `cryptography`.

Shaped like SITHS function certificates, so the signing and encryption code and the
independent `xmlsec1` tool see realistic chains. Used by the tests, the benchmarks and
the local federation; never for real traffic. RSA key generation dominates the cost.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSPHRASE = b"secret"

_KEY_USAGES = {"sign", "encrypt", "both"}


@dataclass(frozen=True)
class Identity:
    """A key pair with its certificate and the same material on disk in the usual formats."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    key_pem: Path  # unencrypted PKCS#8 PEM
    cert_pem: Path
    p12: Path  # key + cert + chain, protected with PASSPHRASE
    key_pem_encrypted: Path  # PKCS#8 PEM encrypted with PASSPHRASE


@dataclass(frozen=True)
class TestPKI:
    """Root CA, issuing CA and the directory where issued identities are written."""

    __test__ = False  # not a pytest test class despite the name

    root: Identity
    issuing_ca: Identity
    root_pem: Path
    chain_pem: Path  # issuing CA + root, PEM concatenated
    directory: Path  # where issue() writes its files
    key_size: int = 3072  # default for issue()

    def issue(
        self,
        name: str,
        *,
        key_size: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_usage: str = "both",
        hosts: Sequence[str] = (),
    ) -> Identity:
        """Issue a leaf cert (CN=O=name, serialNumber) signed by the issuing CA.

        key_usage is "sign" (digitalSignature), "encrypt" (keyEncipherment) or "both".
        `hosts` (DNS names or IP addresses) go into subjectAltName, for TLS servers.
        key_size defaults to the PKI's key size. Files are named after `name`;
        issuing the same name again overwrites them.
        """
        if key_usage not in _KEY_USAGES:
            raise ValueError(f"key_usage must be one of {sorted(_KEY_USAGES)}, got {key_usage!r}")
        now = datetime.now(UTC)
        key = _new_key(key_size or self.key_size)
        serial = "SE2321000016-" + hashlib.sha256(name.encode()).hexdigest()[:8].upper()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        sign = key_usage in ("sign", "both")
        encrypt = key_usage in ("encrypt", "both")
        builder = (
            _builder(
                subject,
                key,
                self.issuing_ca,
                not_before or now - timedelta(days=1),
                not_after or now + timedelta(days=730),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=sign, key_encipherment=encrypt), True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
            )
        cert = builder.sign(self.issuing_ca.key, hashes.SHA256())
        return _write(self.directory, name, key, cert, [self.issuing_ca.cert, self.root.cert])


def make_pki(directory: Path, key_size: int = 3072) -> TestPKI:
    """Create root and issuing CA (2 RSA keys) in `directory`; leaves come from issue()."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    start, end = now - timedelta(days=2), now + timedelta(days=3650)

    root_key = _new_key(key_size)
    root_name = _ca_name("Test Root CA")
    root_cert = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    root = _write(directory, "root", root_key, root_cert, [])

    ca_key = _new_key(key_size)
    ca_cert = (
        _builder(_ca_name("Test Issuing CA"), ca_key, root, start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    issuing_ca = _write(directory, "issuing-ca", ca_key, ca_cert, [root_cert])

    chain_pem = directory / "chain.pem"
    chain_pem.write_bytes(issuing_ca.cert_pem.read_bytes() + root.cert_pem.read_bytes())
    return TestPKI(root, issuing_ca, root.cert_pem, chain_pem, directory, key_size)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _new_key(key_size: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def _ca_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "SE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sdk-bridge test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: Identity,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """Common part of issued certs, with SKI/AKI so OpenSSL's strict chain checks pass."""
    issuer_ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
    )


def _write(
    directory: Path,
    name: str,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    chain: list[x509.Certificate],
) -> Identity:
    stem = directory / re.sub(r"[^A-Za-z0-9._-]", "_", name)
    paths = [stem.with_name(stem.name + s) for s in (".key.pem", ".cert.pem", ".p12", ".enc.pem")]
    key_pem, cert_pem, p12, key_pem_encrypted = paths
    pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
    key_pem.write_bytes(key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    cert_pem.write_bytes(cert.public_bytes(pem))
    encryption = serialization.BestAvailableEncryption(PASSPHRASE)
    key_pem_encrypted.write_bytes(key.private_bytes(pem, pkcs8, encryption))
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(name.encode(), key, cert, chain, encryption)
    )
    return Identity(key, cert, key_pem, cert_pem, p12, key_pem_encrypted)
