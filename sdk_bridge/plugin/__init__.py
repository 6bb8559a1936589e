"""The plugin interface: small protocols, found through entry points.

A plugin is a factory registered under one of the entry point groups below, called with
the settings mapping from its section of the configuration file; first-party plugins in
`sdk_bridge_plugins/` are registered exactly as a third party's would be (see pyproject.toml). A
plugin imports nothing of the bridge but this package: its interface here, `settings`
to check its settings, `mutf7`, `kit` (what the bridge lends it) and, for spool back
ends, `spools`.

    [project.entry-points."sdk_bridge.scanners"]
    clamav = "sdk_bridge_plugins.clamav:ClamAV"
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Final, Literal, Protocol, overload, runtime_checkable

from ..spool import Spool

SCANNERS: Final = "sdk_bridge.scanners"
ACCESS_POINTS: Final = "sdk_bridge.access_points"
MAILBOXES: Final = "sdk_bridge.mailboxes"
# Spool back ends: built with the spool settings (`directory`, and a server's `dsn`, …), they
# subclass sdk_bridge.spool.Spool (`spools` offers what they need). One whose schema needs
# migrating is also `Migrating`.
SPOOLS: Final = "sdk_bridge.spools"


class PluginError(Exception):
    """A plugin that cannot be found or set up; the text names it."""


class TemporaryFailure(Exception):
    """The service behind a plugin could not answer now; try again later (SMTP 4xx)."""


# --- content scanners -------------------------------------------------------------------


class Scanner(Protocol):
    async def scan(self, data: bytes) -> str | None:
        """The name of what was found (e.g. a virus signature), or None when clean.

        Raise TemporaryFailure when the scanner cannot answer: mail is then deferred, never
        let through unscanned.
        """
        ...


# --- access point connectors -------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One SDK envelope for the access point, with the ebMS header fields it needs."""

    message_id: str  # the ebMS MessageId: fixed per SDK message, kept across retries
    payload: bytes  # the signed XHE
    action: str  # "busdox-docid-qns::<document id>"
    original_sender: str  # "0203:<domain>"
    final_recipient: str
    conversation_id: str


@dataclass(frozen=True)
class Retrieved:
    message_id: str
    payload: bytes
    action: str
    original_sender: str
    final_recipient: str
    conversation_id: str | None


class DuplicateSubmission(Exception):
    """The access point already has this MessageId: for the sender, it was submitted."""


class PermanentFailure(Exception):
    """The service behind a plugin refuses for good (e.g. no such recipient or mailbox)."""


class UnreadableRetrieval(PermanentFailure):
    """The access point answered a retrieve with something unusable. It has probably
    deleted the message already, so `raw` (the whole answer) must be kept."""

    def __init__(self, text: str, raw: bytes) -> None:
        super().__init__(text)
        self.raw = raw


# The status words of `AccessPoint.status` that end a submission's journey (Domibus's
# MessageStatus): the receiving access point's AS4 receipt came, or it never will.
ACKNOWLEDGED = "ACKNOWLEDGED"
SEND_FAILURE = "SEND_FAILURE"
DELIVERED_STATUSES = frozenset({ACKNOWLEDGED, "ACKNOWLEDGED_WITH_WARNING"})
# The error detail of a SEND_FAILURE that says the receiving access point does not serve
# the organisation (C3.2.1 §2.5): sending again cannot help.
NOT_SERVICED = "NOT_SERVICED"


def describe_errors(errors: list[dict[str, str]]) -> str:
    """`AccessPoint.errors` in one line, for logs, DSNs and the spool."""
    described = (f"{e.get('errorCode', '')} {e.get('errorDetail', '')}".strip() for e in errors)
    return "; ".join(described) or "no details"


class OversizedRetrieval(PermanentFailure):
    """The access point holds a message larger than a bridge takes (SDK's limit is 30 MB).
    `retrieved`, when its ids could be read from the beginning of the answer, has the ebMS
    fields and as payload only the beginning of its envelope: enough to answer it with a
    kvittens (REJECTED BV too-long), not to open it. `size` is its size where known."""

    def __init__(self, text: str, retrieved: Retrieved | None, size: int | None) -> None:
        super().__init__(text)
        self.retrieved = retrieved
        self.size = size


class AccessPoint(Protocol):
    # Whether `retrieve` leaves the message at the access point until `acknowledge`
    # (Domibus 5's markAsDownloaded="false"). If False, a retrieved message is gone there
    # at once, so whatever was retrieved must be kept whatever it is.
    keeps_until_acknowledged: bool

    async def submit(self, submission: Submission) -> str:
        """Hand over one envelope; return the ebMS MessageId the access point keeps.

        Raise DuplicateSubmission, PermanentFailure, or TemporaryFailure.
        """
        ...

    async def pending(self, final_recipients: Collection[str]) -> list[str]:
        """MessageIds received and not yet retrieved, for these organisations where the
        access point can tell (an access point shared by several organisations lists
        everyone's to an administrator)."""
        ...

    async def retrieve(self, message_id: str) -> Retrieved: ...

    async def acknowledge(self, message_id: str) -> None:
        """The retrieved message is stored durably: the access point may forget it. Called
        again after a crash, so an id it no longer has is no error. Raise TemporaryFailure
        when it cannot be told now (the message is then retrieved again later)."""
        ...

    async def status(self, message_id: str) -> str:
        """The access point's status word (Domibus: SEND_FAILURE, ACKNOWLEDGED, …)."""
        ...

    async def errors(self, message_id: str) -> list[dict[str, str]]: ...

    async def close(self) -> None: ...


# --- mailbox delivery ---------------------------------------------------------------------


class Mailbox(Protocol):
    async def deliver(self, message_id: str, message: bytes) -> None:
        """Put one e-mail (RFC 5322, CRLF line ends) into the mailbox.

        `message_id` is its Message-ID without the angle brackets. A call may be repeated
        after a crash or a lost answer: a mailbox that can look the Message-ID up must
        then not deliver it twice. Raise TemporaryFailure to be retried later,
        PermanentFailure when retrying cannot help.
        """
        ...

    async def check(self) -> None:
        """Reach the mailbox without delivering anything (`check-config --online`); raise
        TemporaryFailure or PermanentFailure saying what is wrong."""
        ...

    async def close(self) -> None: ...


def factory(group: str, name: str) -> Any:
    """The factory registered as `name` in `group`, not yet called."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        available = ", ".join(sorted(ep.name for ep in entry_points(group=group))) or "none"
        raise PluginError(f"no {group} plugin named {name!r} (installed: {available})")
    try:
        return found[0].load()
    except Exception as e:
        raise PluginError(f"{group} plugin {name!r} could not be loaded: {e}") from e


@runtime_checkable
class Migrating(Protocol):
    """A spool back end's factory that keeps a schema: `sdk-bridge db upgrade` migrates it."""

    def upgrade(self, settings: Mapping[str, Any]) -> list[str]:
        """Apply the migrations the database lacks; the steps applied, "N: description"."""
        ...


def migrations(name: str) -> Migrating | None:
    """Spool back end `name`, if it keeps a schema to migrate (None: it needs none)."""
    made = factory(SPOOLS, name)
    return made if isinstance(made, Migrating) else None


@overload
def load(
    group: Literal["sdk_bridge.scanners"], name: str, settings: Mapping[str, Any]
) -> Scanner: ...
@overload
def load(
    group: Literal["sdk_bridge.access_points"], name: str, settings: Mapping[str, Any]
) -> AccessPoint: ...
@overload
def load(
    group: Literal["sdk_bridge.mailboxes"], name: str, settings: Mapping[str, Any]
) -> Mailbox: ...
@overload
def load(group: Literal["sdk_bridge.spools"], name: str, settings: Mapping[str, Any]) -> Spool: ...
def load(group: str, name: str, settings: Mapping[str, Any]) -> Any:
    """Build the plugin `name` of `group` with its settings: a Scanner, AccessPoint,
    Mailbox or Spool (the type checker knows which)."""
    make = factory(group, name)
    try:
        return make(settings)
    except PluginError:
        raise
    except Exception as e:
        raise PluginError(f"{group} plugin {name!r} could not be set up: {e}") from e
