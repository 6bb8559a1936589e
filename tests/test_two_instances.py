"""Two bridges of organisation A on one PostgreSQL database (issue 8): 1,000 mails offered
to both at once, one SIGKILLed midway and not restarted. Every mail that got 250 is stored
once by the access point and delivered once into B's mailbox, and its kvittens ACCEPTED
reaches A; the survivor finishes the deliveries the dead one held once their lease has run
out, since nobody will release them for it. Kvittens the dead one had retrieved and not yet
stored the survivor finds gone at the access point and records as lost; the administrator
brings them in from its retention (`inbound import`), as README says and test_crash does.

The sending MTA knows the SMTP name by two addresses, as with DNS round robin: a mail that
did not get its 250 (refused for now, or cut off by the kill) is tried again, on the other
instance when its own does not answer; a mail that got its 250 is never sent again.
"""

import itertools
import queue
import smtplib
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from support import backends, postgres
from support.localruns import FROM, TO_B, assert_each_once, in_mailbox, mail, recover_lost

from sdk_bridge.lab.local import LocalRun
from sdk_bridge.lab.sandbox.federation import HOST
from sdk_bridge.sdk.names import KVITTENS_ACTION, MESSAGE_ACTION
from sdk_bridge_plugins.postgres_spool import PostgresSpool

pytestmark = pytest.mark.slow  # running bridges or servers: `make test-fast` leaves it out

MAILS = 1000
SESSIONS = 4  # SMTP sessions per instance
KILL_AFTER = 400  # mails with their 250, from both instances, before the kill
LEASE_SECONDS = 5  # how long a dead instance's claims stand (the default is 10 minutes)
INSTANCES = ("a", "a2")  # the first bridge of A (LocalRun.start), and the second
SURVIVOR, VICTIM = INSTANCES
SEND_SECONDS = 120  # per mail, retries included
SETTLE_SECONDS = 150  # for the survivor to finish everything after the last 250


def held_by(dsn: str, instance: str) -> dict[str, datetime]:
    """SDK messageId -> lease end of every delivery `instance` holds a lease on."""
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT sdk_message_id, lease_until FROM deliveries WHERE lease_owner = %s",
            (instance,),
        ).fetchall()
    return dict(rows)


def count(
    db: psycopg.Connection, query: str | sql.Composed, params: tuple[object, ...] | None = None
) -> int:
    """The number a `SELECT count(*)` answers."""
    row = db.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def claims(dsn: str, instance: str) -> dict[str, int]:
    """Per table (and owner column, where a table has several): the rows `instance` holds
    a lease on, whatever kind of work they are."""
    with psycopg.connect(dsn) as db:
        columns = db.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE column_name LIKE '%%lease_owner' ORDER BY 1, 2"
        ).fetchall()
        return {
            f"{table}.{column}": count(
                db,
                sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                    sql.Identifier(table), sql.Identifier(column)
                ),
                (instance,),
            )
            for table, column in columns
        }


def undone(dsn: str) -> dict[str, int]:
    """What is left to do in A's database, by kind: nothing, once the survivor is through."""
    queries = {
        "deliveries not delivered": "SELECT count(*) FROM deliveries WHERE state <> 'delivered'",
        "reports owed": "SELECT count(*) FROM deliveries"
        " WHERE jsonb_typeof(notes -> 'report') = 'object'",
        "received not done (kvittens)": "SELECT count(*) FROM received WHERE state <> 'done'",
        "retrievals begun": "SELECT count(*) FROM retrieving",
    }
    with psycopg.connect(dsn) as db:
        return {kind: count(db, query) for kind, query in queries.items()}


def finished_at(dsn: str, sdk_ids: list[str]) -> dict[str, tuple[str, str | None, datetime]]:
    """SDK messageId -> (state, kvittens, last change) of those deliveries."""
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT sdk_message_id, state, notes ->> 'kvittens', updated_at FROM deliveries"
            " WHERE sdk_message_id = ANY(%s)",
            (sdk_ids,),
        ).fetchall()
    return {sdk_id: (state, kvittens, updated) for sdk_id, state, kvittens, updated in rows}


@pytest.mark.slow
def test_two_instances_one_killed_lose_and_double_nothing(
    tmp_path: Path, postgres_server: postgres.PostgreSQL
) -> None:
    spools = backends.SpoolBackend("postgres", postgres_server).spools()
    spools["a"] = {**spools["a"], "lease_seconds": str(LEASE_SECONDS)}
    dsn = spools["a"]["dsn"]
    local = LocalRun(tmp_path, key_size=2048, retention_minutes=60, spools=spools)
    local.start()
    try:
        local.start_instance("a", INSTANCES[1])
        with local.spool(VICTIM) as spool:
            assert isinstance(spool, PostgresSpool)
            victim = spool.instance  # its name on its leases
        ports = {name: local.bridges[name].port for name in INSTANCES}
        work: queue.SimpleQueue[int] = queue.SimpleQueue()
        for number in range(MAILS):
            work.put(number)
        acknowledged: dict[str, str] = {}  # subject -> the instance that answered 250
        lock = threading.Lock()

        def session(home: int) -> None:
            """One mail after another; a mail without its 250 is tried again, on the next
            instance each time, until it has one."""
            while True:
                try:
                    number = work.get_nowait()
                except queue.Empty:
                    return
                deadline = time.monotonic() + SEND_SECONDS
                for name in itertools.islice(itertools.cycle(INSTANCES), home, None):
                    try:
                        with smtplib.SMTP(HOST, ports[name], timeout=30) as smtp:
                            smtp.send_message(mail(number), FROM, [TO_B])
                    except (smtplib.SMTPException, OSError):
                        if time.monotonic() > deadline:
                            return  # shows as a mail without its 250
                        time.sleep(0.1)  # refused for now, down, or killed mid-dialogue
                        continue
                    with lock:
                        acknowledged[f"Krasch {number:04d}"] = name
                    break

        senders = [threading.Thread(target=session, args=(i % 2,)) for i in range(2 * SESSIONS)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + SEND_SECONDS
        while len(acknowledged) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.05)
        while not held_by(dsn, victim) and time.monotonic() < deadline:
            time.sleep(0.01)  # killed while it holds work, so that the survivor must take it
        local.kill(VICTIM, restart=False)
        orphaned = held_by(dsn, victim)
        claimed = claims(dsn, victim)
        accepted_by_victim = Counter(acknowledged.values())[VICTIM]
        for sender in senders:
            sender.join(SEND_SECONDS * 2)
        assert len(acknowledged) == MAILS, f"{MAILS - len(acknowledged)} mails never got a 250"
        assert orphaned, "the killed instance held no lease"
        assert accepted_by_victim > 0

        deadline = time.monotonic() + SETTLE_SECONDS
        recovered = 0
        while time.monotonic() < deadline and (
            len(in_mailbox(local)) < MAILS or len(local.kvittens(SURVIVOR)) < MAILS
        ):
            recovered += recover_lost(local)
            time.sleep(1)
        time.sleep(2)  # a late duplicate would show now
        assert_each_once(local, acknowledged)
        assert Counter(local.kvittens(SURVIVOR).values()) == {"ACCEPTED": MAILS}
        submitted = local.sandbox.access_points["a"].submitted(MESSAGE_ACTION)
        assert len(submitted) == MAILS  # each ebMS MessageId once, so: one per mail

        # What the dead one held, the survivor finished, after the lease had run out.
        finished = finished_at(dsn, list(orphaned))
        assert {kvittens for _, kvittens, _ in finished.values()} == {"ACCEPTED"}
        late = [i for i, (_, _, at) in finished.items() if at < orphaned[i]]
        assert not late, f"changed before the dead instance's lease ended: {late}"
        assert not any(undone(dsn).values()), undone(dsn)
        print(
            f"{accepted_by_victim} of {MAILS} mails accepted by the killed instance;"
            f" leases in its name when killed: {claimed};"
            f" recovered from the access point's retention: {recovered}"
        )
    finally:
        local.stop()


RECEIVED = 300  # mails for the two receiving instances
TAKING_PART_SECONDS = 60  # for the second receiving instance to accept its first message


def accepted_by(local: LocalRun, name: str) -> int:
    log = local.bridges[name].log
    assert log is not None
    return log.read_text().count("inbound message accepted")


def until_accepted_by(local: LocalRun, name: str) -> None:
    deadline = time.monotonic() + TAKING_PART_SECONDS
    while not accepted_by(local, name):
        assert time.monotonic() < deadline, f"{name} took no message in {TAKING_PART_SECONDS} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_two_receiving_instances_take_each_message_once(
    tmp_path: Path, postgres_server: postgres.PostgreSQL
) -> None:
    """Two bridges of B poll one access point: each message is retrieved, judged, answered
    and delivered by one of them, never both (no second kvittens, no message recorded lost
    because the other had fetched it); one killed midway for good, the other finishes."""
    spools = backends.SpoolBackend("postgres", postgres_server).spools()
    spools["b"] = {**spools["b"], "lease_seconds": str(LEASE_SECONDS)}
    local = LocalRun(tmp_path, key_size=2048, retention_minutes=60, spools=spools)
    local.start()
    try:
        local.start_instance("b", "b2")
        for number in range(RECEIVED):
            local.send("a", FROM, TO_B, mail(number))
            if number == RECEIVED // 2:
                # A accepts faster than it delivers: b2 dies once it has work in hand.
                until_accepted_by(local, "b2")
                local.kill("b2", restart=False)
        deadline = time.monotonic() + SETTLE_SECONDS
        recovered = 0
        while time.monotonic() < deadline and (
            len(in_mailbox(local)) < RECEIVED or len(local.kvittens("a")) < RECEIVED
        ):
            recovered += recover_lost(local)  # retrieved by b2 as it was killed
            time.sleep(1)
        time.sleep(2)  # a late duplicate would show now
        assert_each_once(local, [str(mail(number)["Subject"]) for number in range(RECEIVED)])
        assert Counter(local.kvittens("a").values()) == {"ACCEPTED": RECEIVED}
        kvittens = local.sandbox.access_points["b"].submitted(KVITTENS_ACTION)
        assert len(kvittens) == RECEIVED  # one answer per message, from one instance
        judged = {name: accepted_by(local, name) for name in ("b", "b2")}
        assert judged["b"] > 0 and judged["b2"] > 0, judged  # both took part
        assert recovered <= 8  # at most one round of retrievals in flight at the kill
        print(f"accepted by b, b2: {judged}; recovered from the retention: {recovered}")
    finally:
        local.stop()
