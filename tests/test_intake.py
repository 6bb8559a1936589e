"""Taking envelopes from the access point: kept before anything else, unusable ones too."""

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from sdk_bridge.ops.admin import Health
from sdk_bridge.plugin import (
    OversizedRetrieval,
    PermanentFailure,
    Retrieved,
    Submission,
    TemporaryFailure,
    UnreadableRetrieval,
)
from sdk_bridge.retrieval.intake import Intake, recovered
from sdk_bridge.spool import Received, SQLiteSpool
from sdk_bridge.spool.room import MIN_FREE_BYTES

OURS = ["0203:a.se"]


class IntakeOnly:
    """The AccessPoint methods Intake never calls, for the fakes below."""

    async def submit(self, submission: Submission) -> str:
        raise NotImplementedError

    async def status(self, message_id: str) -> str:
        raise NotImplementedError

    async def errors(self, message_id: str) -> list[dict[str, str]]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class FakeAccessPoint(IntakeOnly):
    """Three pending ids: one fine, one unusable, one that fails for now."""

    keeps_until_acknowledged = False

    async def pending(self, final_recipients: object = ()) -> list[str]:
        return ["good", "garbled", "later"]

    async def acknowledge(self, message_id: str) -> None:
        pass

    async def retrieve(self, message_id: str) -> Retrieved:
        if message_id == "garbled":
            raise UnreadableRetrieval("not SOAP", b"<html>oops</html>")
        if message_id == "later":
            raise TemporaryFailure("timeout")
        return Retrieved("good", b"<XHE/>", "busdox-docid-qns::x", "0203:b.se", "0203:a.se", None)


def test_everything_retrieved_is_kept(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    assert asyncio.run(Intake(FakeAccessPoint(), spool, OURS).fetch()) == 1
    assert [r.id for r in spool.received("new")] == ["good"]
    (garbled,) = spool.received("unreadable")
    assert (garbled.id, garbled.payload) == ("garbled", b"<html>oops</html>")
    assert asyncio.run(Intake(FakeAccessPoint(), spool, OURS).fetch()) == 0  # kept once


class OnceAccessPoint(IntakeOnly):
    """Gives "m1" out once, as Domibus does: listed once, and the first retrieve dies with
    the bridge; afterwards the message is downloaded and no longer retrievable."""

    keeps_until_acknowledged = False

    def __init__(self) -> None:
        self.listed = False
        self.retrievals = 0

    async def acknowledge(self, message_id: str) -> None:
        pass

    async def pending(self, final_recipients: object = ()) -> list[str]:
        if self.listed:
            return []
        self.listed = True
        return ["m1"]

    async def retrieve(self, message_id: str) -> Retrieved:
        self.retrievals += 1
        if self.retrievals == 1:
            raise KeyboardInterrupt("the bridge is killed between retrieve and store")
        raise PermanentFailure("Message with id [m1] was already downloaded")


def test_a_message_lost_in_a_crash_is_named_and_can_be_imported(
    tmp_path: Path, sandbox_envelope: bytes
) -> None:
    access_point = OnceAccessPoint()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(Intake(access_point, SQLiteSpool(tmp_path), OURS).fetch())
    restarted = SQLiteSpool(tmp_path)
    assert asyncio.run(Intake(access_point, restarted, OURS).fetch()) == 0
    assert access_point.retrievals == 2  # the noted id was tried again
    (lost,) = restarted.received("lost")
    assert lost.id == "m1"
    assert restarted.note_retrieving([]) == []  # not tried again and again
    # The administrator downloads it from the access point during its retention:
    item = recovered("m1", sandbox_envelope)
    assert (item.original_sender, item.final_recipient) == (
        "0203:a.example.se",
        "0203:b.example.se",
    )
    assert item.action.endswith("tm-base-ext-sigenc") and "MessageWithAttachments" in item.action
    assert restarted.import_received(item)
    assert [r.id for r in restarted.received("new")] == ["m1"]
    assert not restarted.import_received(item)  # once only
    assert restarted.received("lost") == []


def test_import_refuses_what_is_not_an_envelope() -> None:
    with pytest.raises(ValueError, match="not an XHE envelope"):
        recovered("x", b"<html>")


def test_a_second_copy_does_not_replace_the_first(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    first = Received("m2", "a", "0203:a.se", "0203:b.se", None, b"<first/>")
    assert spool.store_received(first)
    assert not spool.store_received(dataclasses.replace(first, payload=b"<second/>"))
    assert spool.received("new")[0].payload == b"<first/>"


@pytest.fixture
def sandbox_envelope(alice, bob) -> bytes:
    from support.parties import keypair, make_message

    from sdk_bridge.sdk.sealing import seal_message

    return seal_message(make_message(), signer=keypair(alice), recipient_cert=bob.cert)


class KeepingAccessPoint(IntakeOnly):
    """Domibus 5's current interface: a message stays pending until acknowledged. "mine" is
    ours, "theirs" another organisation's, listed all the same (an admin plugin user)."""

    keeps_until_acknowledged = True

    def __init__(self, die: str | None = None) -> None:
        self.pending_ids = ["mine", "theirs"]
        self.retrievals: list[str] = []
        self.acknowledged: list[str] = []
        self.die = die  # "retrieve", "acknowledge": where the bridge is killed, once

    async def pending(self, final_recipients: object = ()) -> list[str]:
        return list(self.pending_ids)

    async def retrieve(self, message_id: str) -> Retrieved:
        self.retrievals.append(message_id)
        if self.die == "retrieve":
            self.die = None
            raise KeyboardInterrupt("killed between retrieve and store")
        recipient = "0203:a.se" if message_id == "mine" else "0203:other.se"
        return Retrieved(message_id, b"<XHE/>", "x", "0203:b.se", recipient, None)

    async def acknowledge(self, message_id: str) -> None:
        if self.die == "acknowledge":
            self.die = None
            raise KeyboardInterrupt("killed between store and acknowledge")
        self.acknowledged.append(message_id)
        self.pending_ids.remove(message_id)


@pytest.mark.parametrize("die", [None, "retrieve", "acknowledge"])
def test_stored_before_acknowledged_and_once_whatever_the_crash(
    tmp_path: Path, die: str | None
) -> None:
    access_point = KeepingAccessPoint(die)
    if die:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(Intake(access_point, SQLiteSpool(tmp_path), OURS).fetch())
    restarted = SQLiteSpool(tmp_path)
    intake = Intake(access_point, restarted, OURS)
    asyncio.run(intake.fetch())
    assert [r.id for r in restarted.received("new")] == ["mine"]  # stored once
    assert restarted.received("lost") == []
    assert access_point.acknowledged == ["mine"]
    # Killed after the store, it is told without being retrieved again.
    assert access_point.retrievals.count("mine") == (1 if die in (None, "acknowledge") else 2)
    # Another organisation's message: left pending and unacknowledged, retrieved once only,
    # by this bridge or its restarted self (the spool says it was left), none of it kept.
    assert "theirs" in access_point.pending_ids
    assert restarted.received_states(["theirs"]) == {"theirs": "left"}
    assert restarted.received_payload("theirs") == b""
    looked = access_point.retrievals.count("theirs")
    asyncio.run(Intake(access_point, restarted, OURS).fetch())
    assert access_point.retrievals.count("theirs") == looked == 1
    assert restarted.note_retrieving([]) == []


class OversizedAccessPoint(KeepingAccessPoint):
    """ "big" is too large to take and its beginning says nothing of who sent it."""

    def __init__(self, keeps: bool) -> None:
        super().__init__()
        self.keeps_until_acknowledged = keeps
        self.pending_ids = ["big"]

    async def retrieve(self, message_id: str) -> Retrieved:
        self.retrievals.append(message_id)
        if not self.keeps_until_acknowledged:  # given out once, as the old interface does
            self.pending_ids.remove(message_id)
        raise OversizedRetrieval("too large", None, 70_000_000)


@pytest.mark.parametrize("keeps", [True, False], ids=["wsplugin", "backend"])
def test_an_oversized_message_nobody_can_be_told_of_is_never_silently_lost(
    tmp_path: Path, keeps: bool
) -> None:
    """Left at the access point (and not fetched again) where it stays there; recorded lost,
    for an administrator, where retrieving took it."""
    access_point = OversizedAccessPoint(keeps)
    spool = SQLiteSpool(tmp_path)
    intake = Intake(access_point, spool, OURS)
    asyncio.run(intake.fetch())
    asyncio.run(intake.fetch())
    assert access_point.retrievals == ["big"]
    lost = [held["id"] for held in spool.held_received() if held["state"] == "lost"]
    assert lost == ([] if keeps else ["big"])
    assert access_point.acknowledged == []


def test_on_the_current_interface_a_listed_message_is_never_recorded_lost(tmp_path: Path) -> None:
    """Still listed, a message recorded lost before is retrieved and stored after all (never
    marked downloaded unstored); one gone between list and retrieve (its owner took it) is
    forgotten, not recorded lost."""
    spool = SQLiteSpool(tmp_path)
    spool.lost_retrieving("mine", "the access point no longer gave it out")
    access_point = KeepingAccessPoint()
    access_point.pending_ids = ["mine"]
    asyncio.run(Intake(access_point, spool, OURS).fetch())
    assert access_point.retrievals == ["mine"] and access_point.acknowledged == ["mine"]
    assert spool.received_states(["mine"]) == {"mine": "new"}
    assert spool.held_received() == []

    class Gone(KeepingAccessPoint):
        async def retrieve(self, message_id: str) -> Retrieved:
            raise PermanentFailure(f"Message not found, id [{message_id}]")

    gone = Gone()
    gone.pending_ids = ["taken"]
    asyncio.run(Intake(gone, spool, OURS).fetch())
    assert spool.held_received() == [] and spool.note_retrieving([]) == []


@pytest.mark.parametrize("keeps", [True, False], ids=["domibus-5", "deprecated"])
def test_nothing_is_taken_while_the_spools_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keeps: bool
) -> None:
    """Issue 16: a message the spool could not hold is never taken from the access point;
    the intake waits, /readyz says why, and takes it once there is room."""
    spool = SQLiteSpool(tmp_path)
    point = KeepingAccessPoint()
    point.pending_ids = ["mine"]
    point.keeps_until_acknowledged = keeps
    intake = Intake(point, spool, ["0203:a.se"])
    free = {"bytes": MIN_FREE_BYTES - 1}
    monkeypatch.setattr(spool, "disk", lambda: (free["bytes"], 100 * MIN_FREE_BYTES))
    health = Health(spool, {}, timedelta(days=1), timedelta(hours=1))
    assert asyncio.run(intake.fetch()) is None
    assert intake.waiting_for_room
    assert point.retrievals == []
    assert any("disk is nearly full" in problem for problem in health.problems())
    free["bytes"] = MIN_FREE_BYTES
    assert asyncio.run(intake.fetch()) == 1
    assert [r.id for r in spool.received()] == ["mine"]
    assert not health.problems()
