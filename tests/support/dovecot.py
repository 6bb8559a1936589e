"""A throw-away Dovecot (Debian packages dovecot-imapd, dovecot-lmtpd) on loopback.

`Dovecot(directory)` writes a dovecot.conf into `directory` (runtime and state
directories, users, a self-signed certificate, mail homes, all inside it), listening on
127.0.0.1 at free ports for IMAP, IMAPS and LMTP, and starts Dovecot in the foreground as a
child. Users alice and bob (passwords alicepw and bobpw) keep their mail in
`home/<user>/Maildir` (Maildir++ layout, Dovecot's default hierarchy separator "."),
owned by the system user `vmail`; a test that writes a Maildir
itself hands the files over with `give()`, as a bridge running as the mail user would own
them. Dovecot's master starts as root (it refuses mail access as uid 0 and switches to
vmail), so the tests that use it skip, saying why, when not run as root or when Dovecot is
missing; CI runs as root.

The module fixture `dovecot_server` is one Dovecot per test module; take it with
`dovecot_server = dovecot.dovecot_server`.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_bridge.lab import testpki
from sdk_bridge.lab.sandbox.ports import free_tcp_port
from support.processes import stop_process

USERS = {"alice": "alicepw", "bob": "bobpw"}
MAIL_USER = "vmail"
START_TIMEOUT = 20.0  # seconds
STOP_TIMEOUT = 10.0


def require_dovecot() -> str:
    """Skip the calling test unless Dovecot is installed and can be started here."""
    path = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.skip("dovecot not installed (scripts/install-system-packages: dovecot-imapd)")
    if os.geteuid() != 0:
        pytest.skip("Dovecot's master process must start as root (CI runs the tests as root)")
    return path


class Dovecot:
    """One Dovecot serving IMAP, IMAPS and LMTP on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.imap_port, self.imaps_port, self.lmtp_port = (
            free_tcp_port(),
            free_tcp_port(),
            free_tcp_port(),
        )
        self.log = directory / "dovecot.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.homes = directory / "home"
        self.cafile = directory / "cert.pem"
        self.config = directory / "dovecot.conf"

    def imap(self, user: str) -> imaplib.IMAP4_SSL:
        """An IMAPS session logged in as `user`, the server's certificate verified."""
        context = ssl.create_default_context(cafile=str(self.cafile))
        session = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=context)
        session.login(user, USERS[user])
        return session

    def maildir(self, user: str) -> Path:
        return self.homes / user / "Maildir"

    def give(self, path: Path) -> None:
        """Make `path` and everything under it the mail user's, as Dovecot needs."""
        account = pwd.getpwnam(MAIL_USER)
        for top, directories, files in os.walk(path):
            for name in [top, *(os.path.join(top, n) for n in directories + files)]:
                os.chown(name, account.pw_uid, account.pw_gid)

    def start(self) -> Dovecot:
        dovecot = require_dovecot()
        _ensure_mail_user()
        for sub in ("run", "state"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.homes.mkdir(parents=True, exist_ok=True)
        self._write_certificate()
        (self.directory / "users").write_text(
            "".join(f"{user}:{{PLAIN}}{password}\n" for user, password in USERS.items())
        )
        self.config.write_text(self._configuration())
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [dovecot, "-F", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for user in USERS:
            (self.homes / user).mkdir(exist_ok=True)
        self.give(self.homes)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"Dovecot did not start within {START_TIMEOUT} s:\n{self.log.read_text()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.imap_port), timeout=1) as s:
                s.settimeout(2)
                return s.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, STOP_TIMEOUT)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_certificate(self) -> None:
        if self.cafile.exists():  # a restart keeps the certificate clients already trust
            return
        pki = testpki.make_pki(self.directory / "pki", 2048)
        server = pki.issue("localhost", key_usage="both", hosts=["localhost", "127.0.0.1"])
        shutil.copyfile(server.key_pem, self.directory / "key.pem")
        shutil.copyfile(pki.root_pem, self.cafile)
        chain = server.cert_pem.read_bytes() + pki.chain_pem.read_bytes()
        (self.directory / "server.pem").write_bytes(chain)

    def _configuration(self) -> str:
        d = self.directory
        return f"""\
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = /dev/stderr
ssl = yes
ssl_cert = <{d}/server.pem
ssl_key = <{d}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_username_format = %Ln
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/users
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={MAIL_USER} home={self.homes}/%u
}}
namespace inbox {{
  inbox = yes
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-disabled
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {self.lmtp_port}
  }}
}}
"""


def _ensure_mail_user() -> None:
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", MAIL_USER],
            check=True,
        )


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[Dovecot]:
    """One Dovecot per test module, in a short temporary directory (socket paths are short)."""
    require_dovecot()
    with tempfile.TemporaryDirectory(prefix="dovecot-") as directory:
        path = Path(directory)
        path.chmod(0o755)  # Dovecot's unprivileged processes must reach the mail homes
        with Dovecot(path) as d:
            yield d
