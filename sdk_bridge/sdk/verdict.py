"""What opening an SDK envelope concludes, in Digg's kvittens vocabulary (C3.2.4, B1.3.3 §5.3).

Every check raises `Rejected` (a kvittens REJECTED goes back) or `Quarantined` (Digg says no
kvittens is sent: the message is kept for an administrator and an alert raised). Their texts
become a kvittens StatusReason, which travels unencrypted: they name rules and element paths,
never values taken from the message.
"""

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    NO_KVITTENS = "NO-KVITTENS"


class Reason(StrEnum):
    """Kvittens orsakskod."""

    SV = "SV"  # schema validation
    BV = "BV"  # validation rule (schematron, content policy)
    SIG = "SIG"  # signature, sender identity, encryption


class Detail(StrEnum):
    """Kvittens detaljkod (B1.3.3 §5.3), carried in StatusReasonCode."""

    STRUCTURE = "structure"
    INVARIANT = "invariant"
    SECURITY = "security"
    NOT_FOUND = "not-found"
    NOT_SUPPORTED = "not-supported"
    TOO_LONG = "too-long"
    DUPLICATE = "duplicate"
    MULTIPLE_MATCHES = "multiple-matches"
    FORBIDDEN = "forbidden"


class Rejected(Exception):
    """The message is refused with a kvittens REJECTED."""

    def __init__(self, reason: Reason, detail: Detail, text: str, path: str = "NA") -> None:
        super().__init__(f"{reason} {detail}: {text}")
        self.reason = reason
        self.detail = detail
        self.text = text
        self.path = path  # XPath of the offending element, or "NA" (kvittens LineID)

    def __reduce__(self) -> tuple[object, ...]:  # from a crypto worker, whole
        return type(self), (self.reason, self.detail, self.text, self.path), self.__dict__


class Quarantined(Exception):
    """No kvittens may be sent (C3.2.4 §2.1.2); keep the message and alert."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: Reason | None = None
    detail: Detail | None = None
    text: str = ""
    path: str = "NA"

    @classmethod
    def of(cls, error: Rejected | Quarantined) -> "Verdict":
        if isinstance(error, Quarantined):
            return cls(Outcome.NO_KVITTENS, text=error.text)
        return cls(Outcome.REJECTED, error.reason, error.detail, error.text, error.path)

    def line(self) -> str:
        """One line for logs and the CLI, e.g. `REJECTED SIG security: ...`."""
        if self.outcome is Outcome.ACCEPTED:
            return "ACCEPTED"
        if self.outcome is Outcome.NO_KVITTENS:
            return f"NO-KVITTENS quarantine: {self.text}"
        return f"REJECTED {self.reason} {self.detail}: {self.text}"


ACCEPTED = Verdict(Outcome.ACCEPTED)
