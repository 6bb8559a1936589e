"""`sdk-bridge bench --smtp-source [--postfix]`: SMTP accept, the bridge beside Postfix.

The goal is that the bridge accepts at least half of what Postfix accepts on the same
machine. Postfix's own load generator, `smtp-source` (Debian package `postfix`), sends N
mails from C sessions (`-d`: one mail after another on each connection, as a relaying
MTA does; `-r 1`, the same payload size) first to a throw-away Postfix when asked, then
to bridge A of a local run (`local.py`). The wall time of each `smtp-source` run gives
messages per second, and their ratio is the figure the goal is about.

What is measured is accept to durable spool: 250 only after the mail is fsynced, for both.
The bridge runs as it would in production, so its outbound worker is also mapping,
signing, encrypting and submitting (to the sandbox access point in this process) on the
same cores. Bridge B is stopped first because it is not part of the path measured.

The Postfix instance has its own configuration, queue and data directories in a temporary
directory and listens on 127.0.0.1 at a free port. Mail is accepted exactly as in
production (queue file fsynced before 250) and then held (an access HOLD), so none of it is
relayed. Postfix's master refuses to run except as root, so `--postfix` needs root.
"""

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from .local import LocalRun
from .sandbox.federation import FROM_A, HOST, TO_B
from .sandbox.ports import free_tcp_port

PACKAGE = "postfix"  # the Debian package with smtp-source and Postfix itself
SBIN = Path("/usr/sbin")
GOAL_RATIO = 0.5  # the bridge accepts at least half of what Postfix does
POSTFIX_TIMEOUT = 60.0  # seconds for `postfix start` / `stop` and for it to answer
STOP_WAIT = 10.0  # seconds for Postfix's master to exit after `postfix stop`
SUBJECT = "smtp-source bench"


class AcceptBenchFailed(Exception):
    """A tool is missing, did not start, or a mail was refused; the text says what."""


@dataclass(frozen=True)
class Measured:
    wall_seconds: float
    accepted: int  # mails that reached the spool or queue during the measured run

    def report(self, messages: int) -> dict[str, object]:
        return {
            "wall_seconds": round(self.wall_seconds, 3),
            "msgs_per_s": round(messages / self.wall_seconds, 1),
            "accepted": self.accepted,
        }


def smtp_source_path() -> Path:
    """Where smtp-source is; a clear error naming the package where it is not."""
    found = shutil.which("smtp-source") or shutil.which("smtp-source", path=str(SBIN))
    if found is None:
        raise AcceptBenchFailed(
            f"smtp-source not found: install the Debian package {PACKAGE!r} "
            "(scripts/install-system-packages does)"
        )
    return Path(found)


def smtp_source_arguments(messages: int, sessions: int, size: int) -> list[str]:
    """The same arguments for both servers; only the port differs."""
    return [
        *("-4", "-d", "-M", "localhost", "-m", str(messages), "-s", str(sessions)),
        *("-l", str(size), "-r", "1", "-S", SUBJECT, "-f", FROM_A, "-t", TO_B),
    ]


def run_smtp_source(
    port: int, messages: int, sessions: int, size: int, timeout: float | None = None
) -> float:
    """Wall seconds of one smtp-source run against 127.0.0.1:`port`. Without -A it stops at
    the first reply that is not the expected one, so a clean exit means every mail got 250."""
    command = [str(smtp_source_path()), *smtp_source_arguments(messages, sessions, size)]
    command.append(f"{HOST}:{port}")
    limit = timeout if timeout is not None else 60 + messages * max(1.0, size / 100_000)
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise AcceptBenchFailed(f"smtp-source did not finish in {limit:.0f} s") from None
    wall = time.monotonic() - started
    if result.returncode != 0:
        problem = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AcceptBenchFailed(f"smtp-source to port {port} failed: {' | '.join(problem)}")
    return wall


# Accept, queue durably, and keep: nothing is relayed.
HOLD_EVERYTHING = (
    "smtpd_recipient_restrictions = check_client_access static:HOLD",
    "defer_transports = smtp relay",  # in case anything left the hold queue
)


class ThrowawayPostfix:
    """A Postfix of its own on loopback in `directory`, stopped and removed by `stop`."""

    def __init__(
        self,
        directory: Path,
        settings: Sequence[str] = HOLD_EVERYTHING,
        services: Sequence[str] = (),
    ) -> None:
        """`settings`: main.cf lines beyond the defaults below (what it does with mail);
        `services`: master.cf lines beyond those an SMTP accept needs."""
        self.settings, self.services = settings, services
        self.directory = directory
        self.config = directory / "config"
        self.queue = directory / "queue"
        self.data = directory / "data"
        self.port = 0
        self.started = False

    def start(self) -> None:
        if not (SBIN / "postfix").exists():
            raise AcceptBenchFailed(f"Postfix not found: install the Debian package {PACKAGE!r}")
        if os.geteuid() != 0:
            raise AcceptBenchFailed(
                "--postfix needs root: Postfix's master daemon refuses to run as another user"
            )
        try:
            owner = pwd.getpwnam("postfix")
        except KeyError:
            raise AcceptBenchFailed(
                f"no user 'postfix': install the Debian package {PACKAGE!r}"
            ) from None
        for parent in self.directory.parents:  # Postfix's daemons run as the postfix user
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise AcceptBenchFailed(
                    f"the postfix user cannot reach {self.directory}: {parent} is not"
                    " searchable by others (set TMPDIR to a directory that is)"
                )
        # Postfix's own files are for its daemons to read: not under the bridge's umask 077.
        self.directory.chmod(0o755)
        for path in (self.config, self.queue, self.data):
            path.mkdir()
            path.chmod(0o755)
        os.chown(self.data, owner.pw_uid, -1)
        self.port = free_tcp_port(HOST)
        for name, text in (("main.cf", self._main_cf()), ("master.cf", self._master_cf())):
            (self.config / name).write_text(text)
            (self.config / name).chmod(0o644)
        self.started = True  # from here on `stop` has something to do
        self._postfix("start")
        _wait_for_greeting(self.port, POSTFIX_TIMEOUT)

    def stop(self) -> None:
        """Stop the master (bounded; killed if it does not go) and remove the directory."""
        try:
            if self.started:
                pid = self.master_pid()
                with contextlib.suppress(AcceptBenchFailed):
                    self._postfix("stop")
                if pid is not None:
                    self._wait_for_exit(pid)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def held(self) -> int:
        """Mails in the hold queue: what it accepted."""
        hold = self.queue / "hold"
        return sum(1 for path in hold.rglob("*") if path.is_file()) if hold.is_dir() else 0

    def version(self) -> str:
        try:
            result = subprocess.run(
                [str(SBIN / "postconf"), "-c", str(self.config), "-h", "mail_version"],
                capture_output=True,
                text=True,
                timeout=POSTFIX_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout.strip()

    def _postfix(self, action: str) -> None:
        command = [str(SBIN / "postfix"), "-c", str(self.config), action]
        try:
            result = subprocess.run(  # umask 022: the queue it makes is its daemons' too
                command, capture_output=True, text=True, timeout=POSTFIX_TIMEOUT, umask=0o022
            )
        except subprocess.TimeoutExpired:
            raise AcceptBenchFailed(f"postfix {action} took over {POSTFIX_TIMEOUT:.0f} s") from None
        if result.returncode != 0:
            log = self.directory / "maillog"  # removed by `stop`: quoted here
            lines = log.read_text(errors="replace").splitlines()[-3:] if log.exists() else []
            problem = " | ".join([result.stderr.strip()[-400:], *lines]).strip(" |")
            raise AcceptBenchFailed(f"postfix {action} failed: {problem}")

    def master_pid(self) -> int | None:
        """The pid of this instance's master, checked by its working directory (the queue
        directory), so that a pid taken by another process since is never signalled."""
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            if Path(f"/proc/{pid}/cwd").resolve() == self.queue.resolve():
                return pid
        except (OSError, ValueError, IndexError):
            pass
        return None  # not running, or it never got as far

    def _wait_for_exit(self, pid: int) -> None:
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline:
            if self.master_pid() != pid:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # our own master, by its pid

    def _main_cf(self) -> str:
        """Production defaults but for: loopback only, everything under `directory`, and
        `settings`."""
        return "\n".join(
            [
                "compatibility_level = 3.6",
                f"queue_directory = {self.queue}",
                f"data_directory = {self.data}",
                f"maillog_file = {self.directory / 'maillog'}",
                f"maillog_file_prefixes = {self.directory}",
                "mail_owner = postfix",
                "myhostname = postfix-bench.localdomain",
                "mydestination =",
                "inet_interfaces = loopback-only",
                "inet_protocols = ipv4",
                "mynetworks = 127.0.0.0/8",
                *self.settings,
                "",
            ]
        )

    def _master_cf(self) -> str:
        """The services an SMTP accept needs, without a chroot (nothing is set up in one)."""
        services = [
            f"{HOST}:{self.port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
            *self.services,
        ]
        return "\n".join([*services, ""])


def run(
    messages: int,
    concurrency: int,
    size: int = 10_240,
    postfix: bool = False,
    key_size: int = 3072,
    directory: Path | None = None,
) -> dict[str, object]:
    """Postfix first (when asked), then the bridge: never both at once."""
    smtp_source_path()  # before anything starts
    postfix_result, version = None, ""
    if postfix:
        instance = ThrowawayPostfix(Path(tempfile.mkdtemp(prefix="sdk-bridge-postfix-")))
        try:
            instance.start()
            version = instance.version()
            postfix_result = _measure(instance.port, instance.held, messages, concurrency, size)
        finally:
            instance.stop()
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdk-bridge-")))
        bridge_result = _measure_bridge(directory, key_size, messages, concurrency, size)
    ratio = None
    if postfix_result is not None:
        bridge_rate = messages / bridge_result.wall_seconds
        ratio = round(bridge_rate / (messages / postfix_result.wall_seconds), 3)
    return {
        "messages": messages,
        "concurrency": concurrency,
        "payload_bytes": size,
        "key_size": key_size,
        "smtp_source": shlex.join(
            ["smtp-source", *smtp_source_arguments(messages, concurrency, size)]
        ),
        "bridge": bridge_result.report(messages),
        "postfix": None
        if postfix_result is None
        else {**postfix_result.report(messages), "version": version},
        "bridge_over_postfix": ratio,
        "goal_ratio": GOAL_RATIO,
    }


def format_table(result: dict[str, object]) -> str:
    bridge, postfix = result["bridge"], result["postfix"]
    assert isinstance(bridge, dict)
    lines = [
        f"SMTP accept to durable spool: {result['messages']} mails, {result['payload_bytes']:,}"
        f" bytes payload, {result['concurrency']} sessions",
        f"  {result['smtp_source']}",
        f"  {'':<16}{'wall s':>10}{'msgs/s':>10}{'accepted':>10}",
        _row("sdk-bridge", bridge),
    ]
    if isinstance(postfix, dict):
        lines.append(_row(f"Postfix {postfix['version']}".strip(), postfix))
        lines.append(
            f"  bridge/Postfix  {result['bridge_over_postfix']}"
            f" (goal: at least {result['goal_ratio']})"
        )
    return "\n".join(lines)


def _row(name: str, figures: dict[str, object]) -> str:
    return (
        f"  {name:<16}{figures['wall_seconds']:>10}{figures['msgs_per_s']:>10}"
        f"{figures['accepted']:>10}"
    )


def _measure_bridge(
    directory: Path, key_size: int, messages: int, concurrency: int, size: int
) -> Measured:
    local = LocalRun(directory, key_size, poll_seconds=0.2)
    local.start()
    try:
        local.bridges["b"].stop()  # not on the path measured; LocalRun.stop copes
        warm_up = EmailMessage()
        warm_up["From"], warm_up["To"], warm_up["Subject"] = FROM_A, TO_B, "warm-up"
        warm_up.set_content("The address book and certificates are fetched now.")
        local.send("a", FROM_A, TO_B, warm_up)  # tries again while the address book loads
        spool = local.bridges["a"].spool / "spool.sqlite3"
        return _measure(
            local.bridges["a"].port, lambda: _spooled(spool), messages, concurrency, size
        )
    finally:
        local.stop()


def _measure(
    port: int, count: Callable[[], int], messages: int, concurrency: int, size: int
) -> Measured:
    """A warm-up run (a mail per session), then the measured one; both must all be kept."""
    before = count()
    run_smtp_source(port, concurrency, concurrency, size)
    if count() - before != concurrency:
        raise AcceptBenchFailed(f"port {port}: the warm-up mails were not all kept")
    before = count()
    wall = run_smtp_source(port, messages, concurrency, size)
    accepted = count() - before
    if accepted != messages:
        raise AcceptBenchFailed(f"port {port}: {accepted} of {messages} mails were kept")
    return Measured(wall, accepted)


def _spooled(database: Path) -> int:
    """Messages in the bridge's spool (read-only; its own connection keeps writing)."""
    uri = f"file:{database}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])


def _wait_for_greeting(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=5) as connection:
                if connection.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AcceptBenchFailed(f"Postfix did not greet on {HOST}:{port} in {seconds:.0f} s")
