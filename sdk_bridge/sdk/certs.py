"""Certificate checks: validity at a moment, chain to a trust anchor, key usage, RSA keys.

Revocation (CRL/OCSP) belongs to the registry client, which knows the network; here we
check what the certificates themselves say.
"""

import functools
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

MAX_CHAIN = 8


class CertificateProblem(ValueError):
    pass


def _valid_at(cert: x509.Certificate, at: datetime, role: str) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CertificateProblem(f"the {role} certificate is not valid at {at:%Y-%m-%dT%H:%M:%SZ}")


def _key_usage(cert: x509.Certificate, role: str) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension
        raise CertificateProblem(f"the {role} certificate cannot be read") from None


def check_encryption_certificate(
    cert: x509.Certificate, at: datetime, trust_anchors: list[x509.Certificate] | None = None
) -> None:
    """Raise CertificateProblem unless we may encrypt to `cert` (an RSA key) at `at`;
    with `trust_anchors`, it must also chain to them (see check_signing_certificate)."""
    _valid_at(cert, at, "encryption")
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise CertificateProblem("the encryption certificate does not hold an RSA key")
    usage = _key_usage(cert, "encryption")
    if usage and not usage.key_encipherment:
        raise CertificateProblem("the encryption certificate is not for key encipherment")
    if trust_anchors is not None:
        _check_chain(cert, at, trust_anchors, "encryption")


def check_signing_certificate(
    cert: x509.Certificate, at: datetime, trust_anchors: list[x509.Certificate] | None
) -> None:
    """Raise CertificateProblem unless `cert` may sign at `at`.

    `trust_anchors` holds the CA certificates we trust (issuing CAs and roots alike): the
    signer's issuer must be one of them. None skips the chain (the caller then relies on
    matching the sender's published certificates).
    """
    _valid_at(cert, at, "signing")
    usage = _key_usage(cert, "signing")
    if usage and not (usage.digital_signature or usage.content_commitment):
        raise CertificateProblem("the signing certificate is not for digital signatures")
    if trust_anchors is not None:
        _check_chain(cert, at, trust_anchors, "signing")


def _check_chain(
    cert: x509.Certificate, at: datetime, trust_anchors: list[x509.Certificate], role: str
) -> None:
    """The issuer must be a trust anchor; from there the path is followed upwards as far as
    the anchors reach, each CA checked for its signature, CA flag and validity."""
    issuer = issuer_among(cert, trust_anchors)
    if issuer is None:
        raise CertificateProblem(f"the {role} certificate does not chain to a trusted CA")
    for _ in range(MAX_CHAIN):
        _valid_at(issuer, at, "issuing CA")
        try:
            is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (x509.ExtensionNotFound, ValueError):
            is_ca = False
        if not is_ca:
            raise CertificateProblem(f"the {role} certificate's issuer is not a CA")
        if issuer.subject == issuer.issuer:
            return
        parent = issuer_among(issuer, trust_anchors)
        if parent is None:
            return  # an issuing CA trusted without its root
        issuer = parent
    raise CertificateProblem("the certificate chain is too long")


def issuer_among(
    cert: x509.Certificate, candidates: list[x509.Certificate]
) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject == cert.issuer and _issued_by(cert, candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=256)
def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key signed `cert`: an RSA verification, the same for the same two
    certificates (equal by their DER), which every envelope's signer is checked against."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
