"""Taking envelopes from the access point: kept before anything else, unusable ones too."""

import asyncio
from pathlib import Path

from bridge.inbound.intake import fetch_once
from bridge.plugins import Retrieved, TemporaryFailure, UnreadableRetrieval
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
