"""`sdk-bridge bench`: the whole path under load, measured end to end.

A local run (sandbox and two bridges, see `local.py`) takes N mails over SMTP at A from C
concurrent sessions, each session sending one mail after another as an MTA does. The run
ends when every mail is in B's Maildir and every kvittens is back at A. Reported: wall
time, end-to-end messages per second, SMTP accept latency (the whole transaction, as the
sending MTA waits for it) and accept-to-mailbox latency, each p50 and p99; peak RSS and
CPU seconds of each bridge with its crypto workers, and CPU milliseconds per message of each
bridge and of the sandbox (which in production runs elsewhere); how busy the machine was;
and `crypto_limit_msgs_per_s`, what the RSA private-key operations alone allow on this
machine, measured in the same run: each message costs A one signature, and B one
decryption and one kvittens signature.

The spools are SQLite, or PostgreSQL databases made for the run and dropped after it; on
PostgreSQL several bridges of A may share one database and the sessions between them, as
a region's gateways do, each with its own CPU and RSS in the report.

Or the run measures two bridges already running, known by their configuration files (see
`running.py`), amid whatever else they carry: a tag in each mail's Subject and Message-ID
tells this run's mails, in B's mailbox and in A's spool, from the rest.
"""

import contextlib
import imaplib
import os
import queue
import resource
import smtplib
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from statistics import quantiles
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .. import plugin
from . import acceptbench, postfixrelay
from .benchmark import rate
from .local import LocalRun, LocalRunFailed, opened_spool, send_mail
from .running import Bridges, find_running
from .sandbox.federation import FROM_A, HOST, TO_B
from .testpki import make_pki

PROFILES = ("10kb", "1mb", "max", "mixed")
SIZES = {"10kb": 10_240, "1mb": 1_048_576}  # the profiles of one payload size
# The largest PDF whose mail (base64 with line breaks) stays within SMTP's 30 MB: in the SDK
# message (base64 without them) it comes to about 29 MB.
MAX_ATTACHMENT = 21_500_000
POLL_SECONDS = 0.1


@dataclass
class _Progress:
    sent_at: dict[str, float] = field(default_factory=dict)  # subject -> 250 received
    accept_seconds: list[float] = field(default_factory=list)
    arrived_at: dict[str, float] = field(default_factory=dict)  # subject -> in the Maildir
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class _Load:
    messages: int
    concurrency: int  # SMTP sessions
    profile: str
    rate: float | None  # mails per second, all sessions together; None: as fast as they go
    progress: bool  # a progress line on stderr


@dataclass(frozen=True)
class _Mails:
    """This run's mails from `sender` to `recipient`: `tag` in their Subject and Message-ID
    tells them from other mail through the same bridges and mailbox."""

    sender: str
    recipient: str
    tag: str

    def subject(self, number: int) -> str:
        """Mail `number`; below 0, a warm-up mail."""
        return f"{self.tag}-warm-up{number}" if number < 0 else f"{self.tag}-{number:06d}"

    def make(self, profile: str, number: int) -> EmailMessage:
        mail = EmailMessage()
        mail["From"], mail["To"] = self.sender, self.recipient
        mail["Subject"] = self.subject(number)
        mail["Message-ID"] = f"<{self.subject(number)}@{self.sender.rpartition('@')[2]}>"
        kind = profile if profile != "mixed" else ("1mb" if number % 10 == 9 else "10kb")
        text = "Bänkprov av sdk-bridge: åäö ÅÄÖ. " * 300  # about 10 KB
        mail.set_content(text)
        if kind in ("1mb", "max"):
            size = 1_000_000 if kind == "1mb" else MAX_ATTACHMENT
            pdf = b"%PDF-1.7\n" + os.urandom(size)
            mail.add_attachment(pdf, maintype="application", subtype="pdf", filename="bilaga.pdf")
        return mail


def run(
    messages: int,
    concurrency: int,
    profile: str = "10kb",
    key_size: int = 3072,
    directory: Path | None = None,
    progress: bool = False,
    rate: float | None = None,
    imap: str | None = None,
    postgres: str | None = None,
    instances: int = 1,
    running: tuple[Path, Path] | None = None,
    postfix: bool = False,
) -> dict[str, Any]:
    """`imap`: `imap://user:password@host:port/folder` (plain IMAP, loopback only) or
    `imaps://...[?cafile=PATH]`, a running IMAP server that B delivers into instead of its
    Maildir. `postgres`: the DSN through which A's and B's spools are made in throw-away
    databases (`_databases`) instead of SQLite; `instances`: how many bridges of A share
    the SMTP sessions, all on A's database (more than one needs `postgres`). `running`:
    the configuration files of A and B, bridges already running that the run measures
    instead of starting its own (`key_size`, `directory`, `postgres` and `instances` do not
    apply; running.Unusable if they cannot be measured). `postfix`: then Postfix relaying
    the same number of mails to Postfix, and SMTP accept beside Postfix (`postfix_beside`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose {', '.join(PROFILES)})")
    if instances < 1 or (instances > 1 and not postgres):
        raise ValueError("more than one instance of A needs a PostgreSQL spool")
    if running and (postgres or instances > 1):
        raise ValueError("running bridges keep their own spools and instances")
    mailbox = Mailbox(imap) if imap else None
    if profile == "max":
        messages = 1
    load = _Load(messages, concurrency, profile, rate, progress)
    try:
        if running:
            setup = _on_running(running, mailbox, load)
        else:
            directory = directory or Path(tempfile.mkdtemp(prefix="sdk-bridge-bench-"))
            setup = _on_local(directory, key_size, mailbox, postgres, instances, load)
    finally:
        if mailbox:
            mailbox.close()
    crypto_limit = _crypto_limit(setup["key_size"])  # A's, in a running pair
    beside = (
        postfix_beside(setup, messages, concurrency, SIZES[profile], key_size) if postfix else {}
    )
    return {
        "profile": profile,
        "messages": messages,
        "concurrency": concurrency,
        "setup": "running" if running else "local",
        "mailbox": "imap" if mailbox else "maildir",
        "offered_rate_msgs_per_s": rate,  # None: as fast as the sessions go
        **setup,
        "crypto_limit_msgs_per_s": round(crypto_limit, 1),
        "share_of_crypto_limit": round(messages / setup["wall_seconds"] / crypto_limit, 3),
        **beside,
    }


def postfix_beside(
    measured: dict[str, Any], messages: int, concurrency: int, size: int, key_size: int
) -> dict[str, Any]:
    """The bar for the bridges' CPU, measured after their run on the same machine: Postfix
    relaying as many mails to Postfix (`postfixrelay`, the median of three relays), and SMTP
    accept by bridge A beside Postfix (`acceptbench`); each bridge's CPU per message over
    Postfix's for its side."""
    relayed = postfixrelay.measure(messages, concurrency, size)
    accept = acceptbench.run(messages, concurrency, size, postfix=True, key_size=key_size)
    bridges = measured["bridges"]

    def ratio(name: str, postfix_ms: object) -> float | None:
        ms = bridges[name]["cpu_ms_per_message"]
        return None if ms is None else round(ms / float(str(postfix_ms)), 2)

    return {
        "postfix_send_cpu_ms_per_msg": relayed["send_cpu_ms_per_msg"],
        "postfix_receive_cpu_ms_per_msg": relayed["receive_cpu_ms_per_msg"],
        "a_cpu_vs_postfix": ratio("a", relayed["send_cpu_ms_per_msg"]),
        "b_cpu_vs_postfix": ratio("b", relayed["receive_cpu_ms_per_msg"]),
        "smtp_accept_vs_postfix": accept["bridge_over_postfix"],
        "postfix_relay": relayed,
        "smtp_accept": accept,
    }


def _on_local(
    directory: Path,
    key_size: int,
    mailbox: "Mailbox | None",
    postgres: str | None,
    instances: int,
    load: _Load,
) -> dict[str, Any]:
    """The run on a sandbox and bridges started for it in `directory`, stopped after it."""
    databases: contextlib.AbstractContextManager[dict[str, dict[str, str]]] = (
        _databases(postgres) if postgres else contextlib.nullcontext({})
    )
    with databases as spools:
        local = LocalRun(
            directory,
            key_size,
            poll_seconds=0.2,
            deliver_to={"b": mailbox.settings()} if mailbox else None,
            spools=spools,
        )
        local.start()
        try:
            for number in range(2, instances + 1):
                local.start_instance("a", f"a{number}")
            bridges = Bridges(
                smtp={name: (HOST, b.port) for name, b in local.bridges.items() if b.label == "a"},
                sender=FROM_A,
                recipient=TO_B,
                config_a=local.config("a"),
                pids={name: bridge.pid for name, bridge in local.bridges.items()},
            )
            watch = mailbox.watch if mailbox else _maildir_watch(local.maildir("b"))
            measured = _measure(bridges, watch, load, sandbox_here=True)
        finally:
            local.stop()
    return {
        "spool": "postgres" if postgres else "sqlite",
        "instances": instances,  # of A, sharing the sessions; each one in `bridges`
        "key_size": key_size,
        **measured,
    }


def _on_running(
    configs: tuple[Path, Path], mailbox: "Mailbox | None", load: _Load
) -> dict[str, Any]:
    """The run on the bridges running with `configs` (A's, B's), left running after it."""
    found = find_running(*configs, imap=mailbox is not None)
    if mailbox:
        watch = mailbox.watch
    else:
        assert found.maildir is not None  # find_running names it unless watched by IMAP
        watch = _maildir_watch(found.maildir)
    measured = _measure(found.bridges, watch, load, sandbox_here=False)
    return {
        "spool": found.spool,
        "instances": 1,
        "key_size": found.key_size,
        "configs": {"a": str(configs[0]), "b": str(configs[1])},
        "sender": found.bridges.sender,
        "recipient": found.bridges.recipient,
        **measured,
    }


@contextlib.contextmanager
def _databases(dsn: str) -> Iterator[dict[str, dict[str, str]]]:
    """A throw-away database for each organisation's spool, made through `dsn` (a role
    that may CREATE DATABASE), upgraded as `sdk-bridge db upgrade` does it, and dropped
    after the run with whatever is still connected to it: `spools` for LocalRun."""
    names = {label: f"sdk_bridge_bench_{uuid.uuid4().hex[:12]}_{label}" for label in ("a", "b")}
    postgres = plugin.migrations("postgres")
    assert postgres is not None
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            for name in names.values():
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        spools = {}
        for label, name in names.items():
            spools[label] = {"backend": "postgres", "dsn": make_conninfo(dsn, dbname=name)}
            postgres.upgrade(spools[label])
    except (psycopg.Error, plugin.PluginError) as e:
        raise LocalRunFailed(f"the spool databases could not be made: {e}") from e
    try:
        yield spools
    finally:
        try:
            with psycopg.connect(dsn, autocommit=True) as admin:
                for name in names.values():
                    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                    admin.execute(drop.format(sql.Identifier(name)))
        except psycopg.Error as e:
            raise LocalRunFailed(f"{', '.join(names.values())} not dropped: {e}") from e


def _measure(
    bridges: Bridges, watch: Callable[[], list[str]], load: _Load, sandbox_here: bool
) -> dict[str, Any]:
    """The run on started bridges: a warm-up mail through each SMTP address of A, then the
    mails from `load.concurrency` sessions spread over them, until every mail is in B's
    mailbox (`watch`) and every kvittens is back at A. `sandbox_here`: the sandbox runs in
    this process, beside the SMTP clients."""
    mails = _Mails(bridges.sender, bridges.recipient, f"bench-{uuid.uuid4().hex[:8]}")
    watch()  # the first look: what is there already does not count
    batch = [mails.make(load.profile, number) for number in range(load.messages)]
    for number, (name, address) in enumerate(bridges.smtp.items(), 1):
        # warm up: address book, certificates
        send_mail(address, name, mails.sender, mails.recipient, mails.make("10kb", -number))
    warm_ups = {mails.subject(-number) for number in range(1, len(bridges.smtp) + 1)}
    _wait_for_mailbox(watch, warm_ups, _Progress(), 120)
    state = _Progress()
    before = {name: _usage(pid) for name, pid in bridges.pids.items()}
    own_before, machine_before = resource.getrusage(resource.RUSAGE_SELF), _machine_cpu()
    started = time.monotonic()
    senders = _send_all(list(bridges.smtp.values()), mails, batch, load, state)
    other = _OtherSession(bridges.smtp["a"], mails) if load.profile == "max" else None
    subjects = {str(mail["Subject"]) for mail in batch}
    _wait_for_mailbox(watch, subjects, state, 300 + load.messages, load.progress)
    for sender in senders:
        sender.join()
    others = other.stop() if other else []
    sent = load.messages + len(warm_ups) + len(others)
    _wait_for_kvittens(bridges.config_a, mails.tag, sent, 300 + load.messages)
    wall = time.monotonic() - started
    after = {name: _usage(pid) for name, pid in bridges.pids.items()}
    own_after, machine_after = resource.getrusage(resource.RUSAGE_SELF), _machine_cpu()
    to_mailbox = [state.arrived_at[s] - state.sent_at[s] for s in subjects]
    # The SMTP clients, and the sandbox (access points, address book, SMP) when it runs
    # here, share this process: CPU that in production is spent on other machines.
    own = "sandbox_and_clients" if sandbox_here else "clients"
    measured: dict[str, Any] = {
        "run_id": mails.tag,  # in every mail's Subject and Message-ID
        "mean_mail_bytes": sum(len(mail.as_bytes()) for mail in batch) // max(len(batch), 1),
        "wall_seconds": round(wall, 2),
        "end_to_end_msgs_per_s": round(load.messages / wall, 2),
        "smtp_accept_p50_ms": _ms(state.accept_seconds, 50),
        "smtp_accept_p99_ms": _ms(state.accept_seconds, 99),
        "accept_to_mailbox_p50_ms": _ms(to_mailbox, 50),
        "accept_to_mailbox_p99_ms": _ms(to_mailbox, 99),
        "bridges": {  # A's instances by name (a, a2, ...), and B
            name: _bridge_usage(bridges, name, before, after, load.messages)
            for name in [*bridges.smtp, "b"]
        },
        f"{own}_cpu_ms_per_message": round(
            1000 * (_cpu(own_after) - _cpu(own_before)) / load.messages, 1
        ),
        "machine_cpu_busy_share": round(
            1 - (machine_after[1] - machine_before[1]) / (machine_after[0] - machine_before[0]), 3
        ),
        # max: the slowest 10 KB transaction of a second session meanwhile.
        **({"other_session_accept_ms": round(max(others, default=0) * 1000, 1)} if other else {}),
    }
    if other:  # max: each bridge's rise above idle in sizes of the mail (the goal: at most 4)
        mail_mb = measured["mean_mail_bytes"] / 2**20
        for usage in measured["bridges"].values():
            if usage.get("rss_above_idle_mb") is not None:
                usage["rss_above_idle_per_mail_size"] = round(
                    usage["rss_above_idle_mb"] / mail_mb, 2
                )
    return measured


def _bridge_usage(
    bridges: Bridges,
    name: str,
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    messages: int,
) -> dict[str, Any]:
    """Bridge `name`'s process and workers: peak RSS (since it started) and CPU seconds
    at the end, and the CPU each message cost it; null where its process was not found."""
    if name not in after:
        return {
            "pid": None,
            "peak_rss_mb": None,
            "cpu_seconds": None,
            "processes": 0,
            "cpu_ms_per_message": None,
            "main_cpu_ms_per_message": None,
            "not_measured": bridges.missing[name],
        }
    spent = after[name]["cpu_seconds"] - before[name]["cpu_seconds"]
    main_spent = after[name]["main_cpu_seconds"] - before[name]["main_cpu_seconds"]
    ended = {k: v for k, v in after[name].items() if k != "main_rss_mb"}
    return {
        "pid": bridges.pids[name],
        **ended,
        "cpu_ms_per_message": round(1000 * spent / messages, 1),
        # Of it, the bridge's own process (the rest: its crypto workers).
        "main_cpu_ms_per_message": round(1000 * main_spent / messages, 1),
        # The bridge's own process: its RSS once warmed up, and how far its peak rose above.
        "idle_rss_mb": before[name]["main_rss_mb"],
        "rss_above_idle_mb": round(ended["main_peak_rss_mb"] - before[name]["main_rss_mb"], 1),
    }


def format_table(result: dict[str, Any]) -> str:
    bridges = result["bridges"]
    own = "sandbox_and_clients" if "sandbox_and_clients_cpu_ms_per_message" in result else "clients"
    lines = [
        f"profile {result['profile']}: {result['messages']} mails of ~{result['mean_mail_bytes']:,}"
        f" bytes, {result['concurrency']} SMTP sessions, RSA-{result['key_size']},"
        f" {result['spool']} spool"
        + (f", {result['instances']} bridges of A" if result["instances"] != 1 else "")
        + (
            f", offered at {result['offered_rate_msgs_per_s']} msgs/s"
            if result["offered_rate_msgs_per_s"]
            else ""
        ),
        *(
            [f"  running bridges      A {result['configs']['a']}, B {result['configs']['b']}"]
            if result["setup"] == "running"
            else []
        ),
        f"  wall time            {result['wall_seconds']} s",
        f"  end to end           {result['end_to_end_msgs_per_s']} msgs/s"
        f"  ({result['share_of_crypto_limit']:.0%} of the RSA limit,"
        f" {result['crypto_limit_msgs_per_s']} msgs/s)",
        f"  SMTP accept          p50 {result['smtp_accept_p50_ms']} ms,"
        f" p99 {result['smtp_accept_p99_ms']} ms",
        f"  accept to mailbox    p50 {result['accept_to_mailbox_p50_ms']} ms,"
        f" p99 {result['accept_to_mailbox_p99_ms']} ms",
    ]
    for label, usage in bridges.items():
        if usage["pid"] is None:
            lines.append(f"  bridge {label.upper():<14}not measured: {usage['not_measured']}")
            continue
        lines.append(
            f"  bridge {label.upper():<14}peak RSS {usage['peak_rss_mb']} MB,"
            f" CPU {usage['cpu_seconds']} s ({usage['processes']} processes),"
            f" {usage['cpu_ms_per_message']} ms per message"
            f" ({usage['main_cpu_ms_per_message']} in its own process); its own process idle"
            f" {usage['idle_rss_mb']} MB, peak +{usage['rss_above_idle_mb']} MB"
            + (
                f" ({usage['rss_above_idle_per_mail_size']}x the mail)"
                if "rss_above_idle_per_mail_size" in usage
                else ""
            )
        )
    lines.append(
        f"  {own.replace('_', ' '):<21}{result[f'{own}_cpu_ms_per_message']} ms CPU per"
        f" message; machine busy {result['machine_cpu_busy_share']:.0%} of the run"
    )
    if "postfix_relay" in result:
        relay = result["postfix_relay"]
        lines += [
            f"  Postfix {relay['version']} relaying to Postfix (median of {len(relay['runs'])}"
            f" runs): {relay['msgs_per_s']} msgs/s,"
            f" {result['postfix_send_cpu_ms_per_msg']} ms CPU per message sending,"
            f" {result['postfix_receive_cpu_ms_per_msg']} ms receiving",
            f"  CPU over Postfix's   A {result['a_cpu_vs_postfix']}x (goal: at most 3),"
            f" B {result['b_cpu_vs_postfix']}x (goal: at most 4)",
            f"  SMTP accept          {result['smtp_accept_vs_postfix']} of Postfix's"
            " (goal: at least 0.5)",
        ]
    return "\n".join(lines)


def _send_all(
    addresses: list[tuple[str, int]],
    mails: _Mails,
    batch: list[EmailMessage],
    load: _Load,
    state: _Progress,
) -> list[threading.Thread]:
    """Each session sends one mail after another, session i to A's bridge at address
    i mod len(addresses); with `load.rate` (mails per second, all sessions together) mail
    number i is not begun before i / rate seconds."""
    work: queue.SimpleQueue[tuple[float, EmailMessage]] = queue.SimpleQueue()
    start = time.monotonic()
    for number, mail in enumerate(batch):
        work.put((start + number / load.rate if load.rate else start, mail))

    def session(address: tuple[str, int]) -> None:
        with smtplib.SMTP(*address, timeout=300) as smtp:
            while True:
                try:
                    due, mail = work.get_nowait()
                except queue.Empty:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                begun = time.monotonic()
                try:
                    smtp.send_message(mail, mails.sender, [mails.recipient])
                except smtplib.SMTPException as e:
                    with state.lock:
                        state.failures.append(f"{mail['Subject']}: {e}")
                    continue
                done = time.monotonic()
                with state.lock:
                    state.accept_seconds.append(done - begun)
                    state.sent_at[str(mail["Subject"])] = done

    threads = [
        threading.Thread(target=session, args=(addresses[i % len(addresses)],))
        for i in range(load.concurrency)
    ]
    for thread in threads:
        thread.start()
    return threads


class _OtherSession:
    """A second SMTP session at A sending 10 KB mails, one after another, while the max mail
    is under way: the time of each transaction, since no session may stall behind it."""

    FIRST_NUMBER = 900_000  # their subjects, <tag>-900000 on, are not waited for
    PAUSE = 0.2  # seconds between its mails

    def __init__(self, address: tuple[str, int], mails: _Mails) -> None:
        self.seconds: list[float] = []
        self.failure: Exception | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._send, args=(address, mails))
        self._thread.start()

    def _send(self, address: tuple[str, int], mails: _Mails) -> None:
        try:
            with smtplib.SMTP(*address, timeout=60) as smtp:
                while not self._done.is_set():
                    mail = mails.make("10kb", self.FIRST_NUMBER + len(self.seconds))
                    begun = time.monotonic()
                    smtp.send_message(mail, mails.sender, [mails.recipient])
                    self.seconds.append(time.monotonic() - begun)
                    self._done.wait(self.PAUSE)
        except (smtplib.SMTPException, OSError) as e:
            self.failure = e

    def stop(self) -> list[float]:
        self._done.set()
        self._thread.join()
        if self.failure is not None:
            raise LocalRunFailed(f"the second SMTP session failed: {self.failure}")
        return self.seconds


def _maildir_watch(maildir: Path) -> Callable[[], list[str]]:
    """The subjects of mails new in `maildir` since the last call; the first call only
    notes what is there, so a full mailbox is not read. Both new/ and cur/, since a reader
    may move a mail on at once; it keeps its base name (before ":2,") when it does."""
    seen: set[str] | None = None

    def watch() -> list[str]:
        nonlocal seen
        paths = {
            path.name.split(":", 1)[0]: path
            for sub in ("new", "cur")
            if (maildir / sub).is_dir()
            for path in (maildir / sub).iterdir()
        }
        if seen is None:
            seen = set(paths)
            return []
        subjects = []
        for name, path in paths.items():
            if name in seen:
                continue
            try:
                with path.open("rb") as file:
                    header = file.read(16384)
            except FileNotFoundError:  # moved to cur/ meanwhile: found there next time
                continue
            seen.add(name)
            subjects.append(str(BytesHeaderParser().parsebytes(header)["Subject"]))
        return subjects

    return watch


class Mailbox:
    """A running IMAP server's folder, given as a URL: the settings for B's IMAP plugin,
    and a watch for the mails that arrive in it (only those after the first look)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not (parts.username and parts.password):
            raise ValueError(f"--imap {url!r}: give imap[s]://user:password@host:port/folder")
        self.tls = parts.scheme == "imaps"
        self.host = parts.hostname or HOST
        self.port = parts.port or (993 if self.tls else 143)
        self.user, self.password = unquote(parts.username), unquote(parts.password)
        self.folder = unquote(parts.path.lstrip("/")) or "INBOX"
        self.cafile = parse_qs(parts.query).get("cafile", [None])[0]
        self._session: imaplib.IMAP4 | None = None
        self._next_uid = 0

    def settings(self) -> dict[str, object]:
        return {
            "plugin": "imap",
            **{"host": self.host, "port": self.port, "tls": self.tls, "folder": self.folder},
            **{"user": self.user, "password": self.password},
            **({"cafile": self.cafile} if self.cafile else {}),
        }

    def watch(self) -> list[str]:
        if self._session is None:
            if self.tls:
                context = ssl.create_default_context(cafile=self.cafile)
                self._session = imaplib.IMAP4_SSL(
                    self.host, self.port, ssl_context=context, timeout=30
                )
            else:
                self._session = imaplib.IMAP4(self.host, self.port, timeout=30)
            self._session.login(self.user, self.password)
            self._session.select(f'"{self.folder}"', readonly=True)
            self._next_uid = self._uid_next()
            return []
        self._session.noop()  # lets the server announce what arrived
        _, found = self._session.uid("SEARCH", f"UID {self._next_uid}:*")
        uids = [int(uid) for uid in found[0].split() if int(uid) >= self._next_uid]
        if not uids:
            return []
        self._next_uid = max(uids) + 1
        ranges = ",".join(str(uid) for uid in uids)
        _, data = self._session.uid("FETCH", ranges, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [
            str(BytesHeaderParser().parsebytes(item[1])["Subject"])
            for item in data
            if isinstance(item, tuple)
        ]

    def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                self._session.logout()

    def _uid_next(self) -> int:
        assert self._session is not None
        _, status = self._session.status(f'"{self.folder}"', "(UIDNEXT)")
        return int(status[0].decode().rsplit("UIDNEXT", 1)[1].strip(" )"))


def _wait_for_mailbox(
    watch: Callable[[], list[str]],
    subjects: set[str],
    state: _Progress,
    seconds: float,
    progress: bool = False,
) -> None:
    """Watch B's mailbox until every subject is there; the time each was first seen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for subject in watch():
            state.arrived_at.setdefault(subject, time.monotonic())
        if progress:
            done = len(subjects & state.arrived_at.keys())
            sys.stderr.write(f"\r{done}/{len(subjects)} in B's mailbox")
            sys.stderr.flush()
        with state.lock:
            if state.failures:
                raise LocalRunFailed(f"{len(state.failures)} mails refused: {state.failures[0]}")
        if subjects <= state.arrived_at.keys():
            if progress:
                sys.stderr.write("\n")
            return
        time.sleep(POLL_SECONDS)
    missing = len(subjects - state.arrived_at.keys())
    raise LocalRunFailed(f"{missing} mails did not reach B's mailbox in {seconds:.0f} s")


def _wait_for_kvittens(config_a: Path, tag: str, count: int, seconds: float) -> None:
    """Until A's spool holds a kvittens for `count` of this run's mails (their Message-IDs
    carry `tag`), each ACCEPTED."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        outcomes = _kvittens(config_a, tag)
        if len(outcomes) >= count:
            if any(outcome != "ACCEPTED" for outcome in outcomes):
                raise LocalRunFailed("a kvittens came back REJECTED")
            return
        time.sleep(POLL_SECONDS)
    raise LocalRunFailed(f"not every kvittens came back to A in {seconds:.0f} s")


def _kvittens(config_a: Path, tag: str) -> list[str]:
    try:
        with opened_spool(config_a) as spool:
            deliveries = spool.deliveries()
    except sqlite3.OperationalError:  # busy: look again
        return []
    outcomes = [d.notes.kvittens for d in deliveries if tag in (d.mail_message_id or "")]
    return [outcome for outcome in outcomes if outcome]


def _crypto_limit(key_size: int) -> float:
    """Messages per second the RSA private-key work allows with every core busy: one
    signature at A, one decryption and one signature (the kvittens) at B."""
    with tempfile.TemporaryDirectory() as directory:
        identity = make_pki(Path(directory), key_size=key_size).issue("bench")
    key = identity.key
    data = b"x" * 32
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # XML-Enc's
    ciphertext = key.public_key().encrypt(data, oaep)
    signs = rate(lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256()), 1.0)
    decrypts = rate(lambda: key.decrypt(ciphertext, oaep), 1.0)
    per_message = 2 / signs + 1 / decrypts  # seconds of one core
    return (os.cpu_count() or 1) / per_message


def _usage(pid: int) -> dict[str, Any]:
    """Peak RSS and CPU seconds of a bridge and its child processes (the crypto workers);
    RSS now and peak RSS of the bridge's own process, for what one message costs it (the
    workers' RSS is mostly the modules and keys they load as they start, not the
    message's)."""
    tick = os.sysconf("SC_CLK_TCK")
    peak_kb, cpu_ticks, own_ticks, processes = 0, 0, 0, 0
    own_kb = {"VmRSS:": 0, "VmHWM:": 0}
    for candidate in Path("/proc").iterdir():
        if not candidate.name.isdigit():
            continue
        try:
            stat = (candidate / "stat").read_text()
            status = (candidate / "status").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parent, own = int(fields[1]), int(candidate.name)
        if own != pid and parent != pid:
            continue
        processes += 1
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        cpu_ticks += ticks
        own_ticks += ticks if own == pid else 0
        for line in status.splitlines():
            name, *value = line.split()  # "VmHWM:\t  1234 kB"
            if name == "VmHWM:":
                peak_kb += int(value[0])
            if own == pid and name in own_kb:
                own_kb[name] = int(value[0])
    return {
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "cpu_seconds": round(cpu_ticks / tick, 2),
        "main_cpu_seconds": round(own_ticks / tick, 2),
        "processes": processes,
        "main_rss_mb": round(own_kb["VmRSS:"] / 1024, 1),
        "main_peak_rss_mb": round(own_kb["VmHWM:"] / 1024, 1),
    }


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _machine_cpu() -> tuple[int, int]:
    """All CPU ticks and idle ticks (idle + iowait) of the machine so far."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


def _ms(values: list[float], percentile: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return round(values[0] * 1000, 1)
    return round(quantiles(values, n=100, method="inclusive")[percentile - 1] * 1000, 1)
