"""Postfix relaying to Postfix on loopback: the bar `sdk-bridge bench --postfix-relay`
measures the bridges' CPU against, on the same machine in the same run.

The sending Postfix takes mail over SMTP (`smtp-source`, one payload size) and relays it
to the receiving one, which delivers it into a Maildir; both queue durably and fsync as
in production. The figure is each side's CPU milliseconds per message: its master and
every daemon it ran (daemons that exited are in the master's children's time, the live
ones are read from /proc), from after a warm-up until the last mail is in the Maildir.
Like the accept bench's Postfix, this needs root.

One relay's figures move by a third from one to the next on this machine (0.9 to 2.2 ms
a message on the receiving side in six runs), which moved the bridges' ratios more than
their own code did: `measure` relays three times, each on a fresh pair, and reports the
median of each figure beside every run's.
"""

import os
import pwd
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from .acceptbench import PACKAGE, AcceptBenchFailed, ThrowawayPostfix, run_smtp_source
from .sandbox.federation import TO_B

DELIVERY_TIMEOUT = 300.0  # seconds for the last mail to reach the receiving Maildir
RUNS = 3
_FIGURES = ("msgs_per_s", "send_cpu_ms_per_msg", "receive_cpu_ms_per_msg")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Relayed:
    messages: int
    wall_seconds: float  # from the first mail sent to the last one in the Maildir
    send_cpu_seconds: float
    receive_cpu_seconds: float
    version: str

    def report(self) -> dict[str, object]:
        per_message = 1000 / self.messages
        return {
            "messages": self.messages,
            "msgs_per_s": round(self.messages / self.wall_seconds, 1),
            "send_cpu_ms_per_msg": round(self.send_cpu_seconds * per_message, 3),
            "receive_cpu_ms_per_msg": round(self.receive_cpu_seconds * per_message, 3),
            "version": self.version,
        }


def measure(
    messages: int, sessions: int, size: int = 10_240, runs: int = RUNS
) -> dict[str, object]:
    """`runs` relays (`run`): each figure's median, and each run's figures under "runs"."""
    reports = [run(messages, sessions, size).report() for _ in range(runs)]
    medians = {name: median(float(str(r[name])) for r in reports) for name in _FIGURES}
    return {
        **reports[0],
        **medians,
        "runs": [{name: r[name] for name in _FIGURES} for r in reports],
    }


def run(messages: int, sessions: int, size: int = 10_240) -> Relayed:
    """Relay `messages` mails of `size` bytes from `sessions` SMTP sessions at once."""
    try:
        owner = pwd.getpwnam("postfix")  # the receiving Postfix delivers as it
    except KeyError:
        raise AcceptBenchFailed(
            f"no user 'postfix': install the Debian package {PACKAGE!r}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="sdk-bridge-relay-") as top:
        Path(top).chmod(0o755)  # Postfix's daemons run as the postfix user
        mail = Path(top) / "mail"
        receiver = ThrowawayPostfix(
            Path(top) / "receiver",
            settings=(
                f"virtual_mailbox_domains = {TO_B.rpartition('@')[2]}",
                f"virtual_mailbox_base = {mail}",
                "virtual_mailbox_maps = static:registrator/",  # a Maildir: the slash
                f"virtual_uid_maps = static:{owner.pw_uid}",
                f"virtual_gid_maps = static:{owner.pw_gid}",
                "smtpd_recipient_restrictions = permit_mynetworks, reject",
            ),
            services=("virtual unix - n n - - virtual",),
        )
        sender = ThrowawayPostfix(Path(top) / "sender", settings=())
        try:
            _own_directory(mail, owner)
            (Path(top) / "receiver").mkdir()
            (Path(top) / "sender").mkdir()
            receiver.start()
            sender.settings = (
                f"relayhost = [127.0.0.1]:{receiver.port}",
                "smtpd_recipient_restrictions = permit_mynetworks, reject",
            )
            sender.start()
            maildir = mail / "registrator" / "new"
            run_smtp_source(sender.port, sessions, sessions, size)  # warm-up
            _wait_for(lambda: _count(maildir) >= sessions, DELIVERY_TIMEOUT)
            before = _count(maildir), _cpu(sender), _cpu(receiver)
            started = time.monotonic()
            run_smtp_source(sender.port, messages, sessions, size)
            _wait_for(lambda: _count(maildir) >= before[0] + messages, DELIVERY_TIMEOUT)
            wall = time.monotonic() - started
            return Relayed(
                messages,
                wall,
                _cpu(sender) - before[1],
                _cpu(receiver) - before[2],
                sender.version(),
            )
        finally:
            sender.stop()
            receiver.stop()


def _cpu(instance: ThrowawayPostfix) -> float:
    """CPU seconds of the instance's master, the daemons it reaped and those running."""
    master = instance.master_pid()
    if master is None:
        raise AcceptBenchFailed(f"the Postfix in {instance.directory} is not running")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile: its time is in the master's children's
            continue
        pid, parent = int(stat.parent.name), int(fields[1])
        if pid == master:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif parent == master:
            total += sum(int(f) for f in fields[11:13])
    return total / _TICK


def _count(maildir: Path) -> int:
    return sum(1 for _ in maildir.iterdir()) if maildir.is_dir() else 0


def _wait_for(done: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AcceptBenchFailed(f"the relayed mails did not all arrive in {seconds:.0f} s")
        time.sleep(0.05)


def _own_directory(path: Path, owner: pwd.struct_passwd) -> None:
    path.mkdir()
    path.chmod(0o755)
    os.chown(path, owner.pw_uid, owner.pw_gid)
