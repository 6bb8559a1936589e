"""What can go wrong when looking someone up in SDK, split by what the caller should do.

`RegistryUnavailable` is temporary (try again later: SMTP 451 4.4.3); every `NotFound` is
permanent (SMTP 550 5.1.1). A lookup that cannot be answered is never reported as unknown.
"""


class RegistryError(Exception):
    """Base class; the message is written for a mail administrator."""


class RegistryUnavailable(RegistryError):
    """The address book, SML, SMP or a revocation service could not answer, or answered
    with something we cannot trust (a metadata signature that does not verify)."""


class NotFound(RegistryError):
    pass


class UnknownOrganisation(NotFound):
    pass


class UnknownFunctionalAddress(NotFound):
    pass


class AmbiguousAlias(NotFound):
    pass


class NotRegistered(NotFound):
    """The organisation has no active SMP registration for the document type."""


class NoValidCertificate(NotFound):
    """CertPub publishes no certificate that is valid, trusted and unrevoked."""
