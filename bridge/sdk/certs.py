"""Certificate checks for signatures: validity at a moment, chain to a trust anchor, key usage.

Revocation (CRL/OCSP) belongs to the registry client, which knows the network; here we
check what the certificates themselves say.
"""

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

MAX_CHAIN = 8


class CertificateProblem(ValueError):
    pass


def _valid_at(cert: x509.Certificate, at: datetime, role: str) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise CertificateProblem(f"the {role} certificate is not valid at {at:%Y-%m-%dT%H:%M:%SZ}")


def check_signing_certificate(
    cert: x509.Certificate, at: datetime, trust_anchors: list[x509.Certificate] | None
) -> None:
    """Raise CertificateProblem unless `cert` may sign at `at`.

    `trust_anchors` holds the CA certificates we trust (intermediates and roots alike): the
    chain is followed by issuer name and signature until it reaches one of them. None skips
    the chain (the caller then relies on matching the sender's published certificates).
    """
    _valid_at(cert, at, "signing")
    try:
        usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
        if not (usage.digital_signature or usage.content_commitment):
            raise CertificateProblem("the signing certificate is not for digital signatures")
    except x509.ExtensionNotFound:
        pass
    if trust_anchors is None:
        return
    current = cert
    for _ in range(MAX_CHAIN):
        for anchor in trust_anchors:
            if current.issuer != anchor.subject:
                continue
            try:
                current.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            _valid_at(anchor, at, "issuing CA")
            if anchor.subject == anchor.issuer or anchor in trust_anchors:
                return
        raise CertificateProblem("the signing certificate does not chain to a trusted CA")
    raise CertificateProblem("the certificate chain is too long")
