"""A throwaway test PKI (root -> issuing CA -> leaf certificates) built with `cryptography`.

Shaped like SITHS function certificates, so the signing and encryption code and the
independent `xmlsec1` tool see realistic chains. Used by the tests, the benchmarks and
the local federation; never for real traffic. RSA key generation dominates the cost.

Given base URLs, certificates carry a CRL distribution point and an OCSP responder
(authority information access) like SITHS certificates do, and the PKI can revoke,
publish CRLs and answer OCSP requests; `sdk_bridge.lab.sandbox.revocation` serves those.
Revocations and issued serial numbers are kept in files in the PKI directory, so a
PKI reopened with load_pki() after a restart remembers them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ..runtime.files import write_private

PASSPHRASE = b"secret"

_KEY_USAGES = {"sign", "encrypt", "both"}

# The two authorities, by the file stem of their identity; CRLs are published as
# f"{crl_url}/{authority}.crl".
ROOT, ISSUING_CA = "root", "issuing-ca"
_SETTINGS, _ISSUED, _REVOKED = "pki.json", "issued.txt", "revoked.json"
_OCSP_SIGNER = "ocsp-signer"


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
    crl_url: str | None = None  # base URL of the CRLs; None: no CRL distribution point
    ocsp_url: str | None = None  # the OCSP responder; None: no authority information access

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
        if name in (ROOT, ISSUING_CA, _OCSP_SIGNER):
            raise ValueError(f"{name!r} is reserved for the PKI's own certificates")
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
        builder = _revocation_pointers(builder, self.crl_url, self.ocsp_url, ISSUING_CA)
        cert = builder.sign(self.issuing_ca.key, hashes.SHA256())
        _record_issued(self.directory, ISSUING_CA, cert, name)
        return _write(self.directory, name, key, cert, [self.issuing_ca.cert, self.root.cert])

    def issued(self, name: str) -> Identity | None:
        """The identity issue(name) wrote earlier (e.g. before a restart), if any."""
        if not _paths(self.directory, name)[1].exists():
            return None
        return _load(self.directory, name)

    def revoke(
        self,
        cert: x509.Certificate,
        reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
        when: datetime | None = None,
    ) -> None:
        """Revoke a certificate issued by this PKI (a leaf or the issuing CA).

        Kept in a file in the PKI directory; revoking again keeps the first record.
        """
        authority = self._authority_of(cert.issuer)
        if authority is None:
            raise ValueError(f"not issued by this PKI: {cert.subject.rfc4514_string()}")
        records = self._revocations()
        key = f"{authority}:{cert.serial_number:x}"
        if key not in records:
            time = (when or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
            records[key] = {"time": time.isoformat(), "reason": reason.value}
            path = self.directory / _REVOKED
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
            tmp.replace(path)

    def crl(
        self,
        authority: str = ISSUING_CA,
        *,
        this_update: datetime | None = None,
        next_update: datetime | None = None,
    ) -> bytes:
        """The DER CRL of `authority` (ISSUING_CA or ROOT), valid for a day by default."""
        ca = self._identity(authority)
        this_update = this_update or datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(this_update)
            .next_update(next_update or this_update + timedelta(days=1))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
            )
            .add_extension(x509.CRLNumber(int(this_update.timestamp())), critical=False)
        )
        for serial, (time, reason) in self._revoked_serials(authority).items():
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(time)
            if reason is not x509.ReasonFlags.unspecified:  # RFC 5280: then leave it out
                entry = entry.add_extension(x509.CRLReason(reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def ocsp_response(
        self,
        request_der: bytes,
        *,
        lifetime: timedelta = timedelta(hours=1),
        delegated: bool = False,
    ) -> bytes:
        """Answer a DER OCSP request: good, revoked, or unknown for serials never issued.

        Signed by the authority itself, or with `delegated` (leaves only) by an OCSP
        signing certificate the issuing CA issued, made on first use. A request that does
        not parse or names another issuer gets an unsuccessful response, as RFC 6960 says.
        """
        try:
            request = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        authority = next(
            (name for name in (ISSUING_CA, ROOT) if _matches(request, self._identity(name).cert)),
            None,
        )
        if authority is None:
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        now = datetime.now(UTC).replace(microsecond=0)
        status, time, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        revoked = self._revoked_serials(authority).get(request.serial_number)
        if revoked is not None:
            status, (time, reason) = ocsp.OCSPCertStatus.REVOKED, revoked
            reason = None if reason is x509.ReasonFlags.unspecified else reason
        elif request.serial_number in self._issued_serials(authority):
            status = ocsp.OCSPCertStatus.GOOD
        signer = self._ocsp_signer() if delegated and authority == ISSUING_CA else None
        ca = self._identity(authority)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.serial_number,
            request.hash_algorithm,
            status,
            now,
            now + lifetime,
            time,
            reason,
        )
        if signer is not None:
            builder = builder.certificates([signer.cert])
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, (signer or ca).cert)
        for extension in request.extensions:
            if isinstance(extension.value, x509.OCSPNonce):
                builder = builder.add_extension(extension.value, critical=False)
        response = builder.sign((signer or ca).key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)

    def _identity(self, authority: str) -> Identity:
        if authority not in (ROOT, ISSUING_CA):
            raise ValueError(f"authority must be {ROOT!r} or {ISSUING_CA!r}, got {authority!r}")
        return self.root if authority == ROOT else self.issuing_ca

    def _authority_of(self, issuer: x509.Name) -> str | None:
        if issuer == self.issuing_ca.cert.subject:
            return ISSUING_CA
        return ROOT if issuer == self.root.cert.subject else None

    def _revocations(self) -> dict[str, dict[str, str]]:
        path = self.directory / _REVOKED
        return json.loads(path.read_text()) if path.exists() else {}

    def _revoked_serials(self, authority: str) -> dict[int, tuple[datetime, x509.ReasonFlags]]:
        revoked = {}
        for key, record in self._revocations().items():
            name, serial = key.split(":")
            if name == authority:
                when = datetime.fromisoformat(record["time"])
                revoked[int(serial, 16)] = (when, x509.ReasonFlags(record["reason"]))
        return revoked

    def _issued_serials(self, authority: str) -> set[int]:
        path = self.directory / _ISSUED
        lines = path.read_text().splitlines() if path.exists() else []
        return {int(s, 16) for a, s, *_ in (line.split(" ", 2) for line in lines) if a == authority}

    def _ocsp_signer(self) -> Identity:
        """The delegated OCSP signer (id-kp-OCSPSigning, OCSP no-check), made once."""
        if (self.directory / f"{_OCSP_SIGNER}.cert.pem").exists():
            return _load(self.directory, _OCSP_SIGNER)
        key = _new_key(self.key_size)
        now = datetime.now(UTC)
        cert = (
            _builder(
                _ca_name("Test OCSP Responder"),
                key,
                self.issuing_ca,
                now - timedelta(days=1),
                now + timedelta(days=365),
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .sign(self.issuing_ca.key, hashes.SHA256())
        )
        _record_issued(self.directory, ISSUING_CA, cert, _OCSP_SIGNER)
        return _write(self.directory, _OCSP_SIGNER, key, cert, [self.issuing_ca.cert])


def make_pki(
    directory: Path,
    key_size: int = 3072,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
) -> TestPKI:
    """Create root and issuing CA (2 RSA keys) in `directory`; leaves come from issue().

    With `crl_url` (a base URL: CRLs are f"{crl_url}/{authority}.crl") and `ocsp_url`,
    the issuing CA and every leaf point at them; without, certificates carry neither.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (_ISSUED, _REVOKED, f"{_OCSP_SIGNER}.cert.pem"):
        (directory / stale).unlink(missing_ok=True)
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
    root = _write(directory, ROOT, root_key, root_cert, [])

    ca_key = _new_key(key_size)
    ca_builder = (
        _builder(_ca_name("Test Issuing CA"), ca_key, root, start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    ca_builder = _revocation_pointers(ca_builder, crl_url, ocsp_url, ROOT)
    ca_cert = ca_builder.sign(root_key, hashes.SHA256())
    _record_issued(directory, ROOT, ca_cert, ISSUING_CA)
    issuing_ca = _write(directory, ISSUING_CA, ca_key, ca_cert, [root_cert])

    chain_pem = directory / "chain.pem"
    chain_pem.write_bytes(issuing_ca.cert_pem.read_bytes() + root.cert_pem.read_bytes())
    settings = {"key_size": key_size, "crl_url": crl_url, "ocsp_url": ocsp_url}
    (directory / _SETTINGS).write_text(json.dumps(settings, indent=1))
    return TestPKI(
        root, issuing_ca, root.cert_pem, chain_pem, directory, key_size, crl_url, ocsp_url
    )


def load_pki(directory: Path) -> TestPKI:
    """Reopen a PKI that make_pki() created in `directory` (after a restart)."""
    settings = json.loads((directory / _SETTINGS).read_text())
    root, issuing_ca = _load(directory, ROOT), _load(directory, ISSUING_CA)
    return TestPKI(
        root,
        issuing_ca,
        root.cert_pem,
        directory / "chain.pem",
        directory,
        settings["key_size"],
        settings["crl_url"],
        settings["ocsp_url"],
    )


def _revocation_pointers(
    builder: x509.CertificateBuilder, crl_url: str | None, ocsp_url: str | None, authority: str
) -> x509.CertificateBuilder:
    """CRL distribution point and OCSP access, shaped like SITHS's (full-name URIs)."""
    if crl_url:
        uri = x509.UniformResourceIdentifier(f"{crl_url.rstrip('/')}/{authority}.crl")
        point = x509.DistributionPoint([uri], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), False)
    return builder


def _record_issued(directory: Path, authority: str, cert: x509.Certificate, name: str) -> None:
    """Append to the list of issued serials, so OCSP can tell good from unknown."""
    with (directory / _ISSUED).open("a") as f:
        f.write(f"{authority} {cert.serial_number:x} {name}\n")


def _matches(request: ocsp.OCSPRequest, issuer: x509.Certificate) -> bool:
    """Whether an OCSP request's CertID names `issuer` (by name and key hash)."""
    name_hash = hashes.Hash(request.hash_algorithm)
    name_hash.update(issuer.subject.public_bytes())
    # The builder hashes the issuer's key the CertID way; the probe's own name is unused.
    probe = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, request.hash_algorithm)
    return (name_hash.finalize(), probe.build().issuer_key_hash) == (
        request.issuer_name_hash,
        request.issuer_key_hash,
    )


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


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


def _paths(directory: Path, name: str) -> list[Path]:
    """Key PEM, cert PEM, PKCS#12 and encrypted key PEM of identity `name`."""
    stem = directory / re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return [stem.with_name(stem.name + s) for s in (".key.pem", ".cert.pem", ".p12", ".enc.pem")]


def _load(directory: Path, name: str) -> Identity:
    """An identity that _write() put in `directory`."""
    key_pem, cert_pem, p12, key_pem_encrypted = _paths(directory, name)
    key = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{key_pem}: not an RSA key")
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    return Identity(key, cert, key_pem, cert_pem, p12, key_pem_encrypted)


def _write(
    directory: Path,
    name: str,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    chain: list[x509.Certificate],
) -> Identity:
    key_pem, cert_pem, p12, key_pem_encrypted = _paths(directory, name)
    pkcs8, pem = serialization.PrivateFormat.PKCS8, serialization.Encoding.PEM
    write_private(key_pem, key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    cert_pem.write_bytes(cert.public_bytes(pem))
    encryption = serialization.BestAvailableEncryption(PASSPHRASE)
    write_private(key_pem_encrypted, key.private_bytes(pem, pkcs8, encryption))
    write_private(
        p12, pkcs12.serialize_key_and_certificates(name.encode(), key, cert, chain, encryption)
    )
    return Identity(key, cert, key_pem, cert_pem, p12, key_pem_encrypted)
