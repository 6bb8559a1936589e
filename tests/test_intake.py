"""Taking envelopes from the access point: kept before anything else, unusable ones too."""

import asyncio
from pathlib import Path

import pytest

from bridge.inbound.intake import fetch_once
from bridge.plugins import PermanentFailure, Retrieved, TemporaryFailure, UnreadableRetrieval
from bridge.spool import SQLiteSpool


class FakeAccessPoint:
    """Three pending ids: one fine, one unusable, one that fails for now."""

    async def pending(self) -> list[str]:
        return ["good", "garbled", "later"]

    async def retrieve(self, message_id: str) -> Retrieved:
        if message_id == "garbled":
            raise UnreadableRetrieval("not SOAP", b"<html>oops</html>")
        if message_id == "later":
            raise TemporaryFailure("timeout")
        return Retrieved("good", b"<XHE/>", "busdox-docid-qns::x", "0203:b.se", "0203:a.se", None)


def test_everything_retrieved_is_kept(tmp_path: Path) -> None:
    spool = SQLiteSpool(tmp_path)
    assert asyncio.run(fetch_once(FakeAccessPoint(), spool)) == 1
    assert [r.id for r in spool.received("new")] == ["good"]
    (garbled,) = spool.received("unreadable")
    assert (garbled.id, garbled.payload) == ("garbled", b"<html>oops</html>")
    assert asyncio.run(fetch_once(FakeAccessPoint(), spool)) == 0  # kept once


class RetainingAccessPoint:
    """Lists "m1" once; the first retrieve dies with the bridge. Downloaded, the message is
    no longer pending, but a retention keeps it retrievable (unless `retained` is off)."""

    def __init__(self, retained: bool = True) -> None:
        self.listed = False
        self.retrievals = 0
        self.retained = retained

    async def pending(self) -> list[str]:
        if self.listed:
            return []
        self.listed = True
        return ["m1"]

    async def retrieve(self, message_id: str) -> Retrieved:
        self.retrievals += 1
        if self.retrievals == 1:
            raise KeyboardInterrupt("the bridge is killed between retrieve and store")
        if not self.retained:
            raise PermanentFailure("Message not found, id [m1]")
        return Retrieved("m1", b"<XHE/>", "busdox-docid-qns::x", "0203:b.se", "0203:a.se", None)


def test_a_message_retrieved_before_a_crash_is_retrieved_again(tmp_path: Path) -> None:
    access_point = RetainingAccessPoint()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(fetch_once(access_point, SQLiteSpool(tmp_path)))
    restarted = SQLiteSpool(tmp_path)
    assert asyncio.run(fetch_once(access_point, restarted)) == 1
    assert [r.id for r in restarted.received("new")] == ["m1"]
    assert restarted.note_retrieving([]) == []  # nothing left to fetch
    assert asyncio.run(fetch_once(access_point, restarted)) == 0


def test_without_retention_the_lost_message_is_named_and_forgotten(tmp_path: Path) -> None:
    access_point = RetainingAccessPoint(retained=False)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(fetch_once(access_point, SQLiteSpool(tmp_path)))
    restarted = SQLiteSpool(tmp_path)
    assert asyncio.run(fetch_once(access_point, restarted)) == 0
    assert restarted.note_retrieving([]) == []
