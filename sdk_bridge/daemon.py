"""`sdk-bridge run`: the daemon, with its stages joined by the spool.

Outbound, SMTP ingress stores mail in the spool and the outbound worker takes it from
there to the access point. Inbound, what the access point hands over is stored first,
then judged and answered with a kvittens (`inbound.processing`), and accepted mail goes
on to the mailboxes (`inbound.delivery`). Each stage can be killed and restarted on its
own terms: everything a stage has done is written to the spool before the next one sees it.
"""

import asyncio
import contextlib
import fcntl
import os
import resource
import signal
import socket
import ssl
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import IO

import structlog
from cryptography.hazmat.primitives import serialization

from . import plugin
from .config import AccessPointConfig, Config, ConfigError, SMTPConfig, open_registry, open_spool
from .config import load as load_config
from .inbound.delivery import MailboxDelivery
from .inbound.processing import Inbound, InboundSettings
from .ingress.smtp import IngressHandler, IngressSettings, SenderRule, networks, serve, tls_context
from .mapping.premapped import Premapped
from .mapping.to_mail import SECRECY_PREFIX
from .ops import admin, checks, metrics
from .ops.admin import Health
from .outbound.receipts import Receipts
from .outbound.reports import DsnReporter, sender_domains
from .outbound.transport import follow
from .outbound.worker import OutboundSettings, Worker
from .registry.addressbook import AddressBook
from .retrieval.intake import Intake
from .runtime import memory, systemd, workers
from .runtime.logs import loop_errors
from .runtime.stages import Stage
from .spool import Delivery, Spool, retention
from .spool.retention import PURGE_INTERVAL

log = structlog.get_logger(__name__)

SHUTDOWN_SECONDS = 30.0  # in-flight submissions may finish within this; the rest are retried
FD_RESERVE = 256  # file descriptors kept from SMTP clients for everything else
SPOOL_LOOK = 1.0  # seconds between a spool-fed stage's looks when nothing woke it


@dataclass(frozen=True)
class DaemonConfig:
    """A configuration the daemon can run on: the sections it needs are there."""

    config: Config
    smtp: SMTPConfig
    access_point: AccessPointConfig
    spool: Path
    sdk_domain: str


def required(config: Config) -> DaemonConfig:
    """`config` with the sections the daemon needs; ConfigurationMissing names those not
    there."""
    smtp, access_point, spool, domain = (
        config.smtp,
        config.access_point,
        config.spool,
        config.sdk_domain,
    )
    if (
        config.registry is None
        or smtp is None
        or access_point is None
        or spool is None
        or not domain
    ):
        missing = [
            name
            for name, value in (
                ("registry", config.registry),
                ("access_point", access_point),
                ("smtp", smtp),
                ("spool", spool),
                ("organisation.sdk_domain", domain),
            )
            if value is None
        ]
        raise ConfigurationMissing(f"the daemon needs these sections: {', '.join(missing)}")
    if not config.functional_addresses:
        raise ConfigurationMissing("functional_addresses: at least one is needed to send")
    return DaemonConfig(config, smtp, access_point, spool, domain)


@dataclass
class _Stages:
    """The daemon's jobs (`runtime.stages`), and who wakes whom: mail accepted wakes
    submit; retrieve wakes judge and settle; judge wakes answer and deliver; a delivery
    settled wakes report. The rest look every `poll_seconds`; SIGUSR1 wakes them all."""

    submit: Stage  # queued mail to the access point (outbound.worker)
    retrieve: Stage  # messages and kvittens from the access point (retrieval.intake)
    judge: Stage  # messages retrieved: verified, opened, accepted or refused
    answer: Stage  # the kvittens owed, to the access point, and followed there
    deliver: Stage  # accepted mail into its mailbox (inbound.delivery)
    settle: Stage  # kvittens retrieved: deliveries delivered or rejected (outbound.receipts)
    follow: Stage  # submission status at the access point (outbound.transport)
    sweep: Stage  # delay warnings and expiry of deliveries with no kvittens
    report: Stage  # delivery reports through the smart host (outbound.reports)
    purge: Stage  # what retention no longer allows (spool.retention)

    def all(self) -> list[Stage]:
        return [getattr(self, f.name) for f in fields(self)]


def _stages(
    config: Config,
    spool: Spool,
    access_point: plugin.AccessPoint,
    intake: Intake,
    inbound: Inbound,
    receipts: Receipts,
    report: Stage,
    worker: Worker,
    delivery: MailboxDelivery,
    health: Health | None,
) -> _Stages:
    poll, outbound = config.outbound.poll_seconds, config.outbound
    answer = Stage("answer", inbound.answer, poll)
    deliver = Stage("deliver", delivery.round, SPOOL_LOOK)

    # A stage wakes the next only when it left it work: each still looks on its own every
    # `poll` seconds (retries fall due), and rounds that find nothing cost every bridge
    # a share of a core at the bench's short poll.
    async def retrieve_round() -> bool:
        new = await intake.fetch()
        if new is not None and health is not None:
            health.reached_access_point()
        if new != 0:  # stored some, or failed midway (it may have stored some first)
            judge.wake()
            settle.wake()
        return intake.backlog  # more pending than one round takes: again at once

    async def judge_round() -> bool:
        more = await inbound.judge_pending()
        if more:  # some were judged
            answer.wake()
            deliver.wake()
        return more

    judge = Stage("judge", judge_round, poll)
    settle = Stage("settle", receipts.process_pending, poll)
    return _Stages(
        submit=Stage("submit", worker.round, SPOOL_LOOK),
        retrieve=Stage("retrieve", retrieve_round, poll),
        judge=judge,
        answer=answer,
        deliver=deliver,
        settle=settle,
        follow=Stage(
            "follow", lambda: follow(access_point, spool, worker.notify, outbound.lifetime), poll
        ),
        sweep=Stage(
            "sweep", lambda: receipts.sweep(outbound.delay_warning, outbound.lifetime), poll
        ),
        report=report,
        purge=Stage("purge", lambda: retention.purge(spool, config.retention), PURGE_INTERVAL),
    )


def _ingress_settings(running: DaemonConfig) -> IngressSettings:
    config, smtp = running.config, running.smtp
    return IngressSettings(
        organisation_id=config.organisation_id,
        hostname=smtp.hostname,
        allowed_networks=networks(smtp.allowed_networks),
        senders=tuple(
            SenderRule(fa.id, fa.senders, fa.auth_users) for fa in config.functional_addresses
        ),
        users=smtp.users,
        forbidden_types=smtp.forbidden_types,
        secrecy_tags=smtp.secrecy_tags,
        max_recipients=smtp.max_recipients,
        idle_timeout=smtp.idle_timeout,
        max_connections=min(smtp.max_connections, _connection_budget()),
        max_connections_per_client=smtp.max_connections_per_client,
    )


def _connection_budget() -> int:
    """How many SMTP connections the process's file descriptors allow, the soft limit
    raised to the hard one first: each takes a socket and, in DATA, a spool file, and
    `FD_RESERVE` stay for the spool, the access point, the mailboxes and the admin port."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(1, (soft - FD_RESERVE) // 2)


def _inbound_settings(running: DaemonConfig) -> InboundSettings:
    config, domain = running.config, running.sdk_domain
    tags = running.smtp.secrecy_tags
    return InboundSettings(
        organisation_id=config.organisation_id,
        sdk_domain=domain,
        mailbox_addresses={fa.id: fa.mailbox_address(domain) for fa in config.functional_addresses},
        decryption_keys=config.decryption,
        signer=config.signing,
        trust_anchors=config.trust_anchors,
        federation=config.federation,
        forbidden_types=running.smtp.forbidden_types,
        # With no tags configured, secrecy still shows: Digg requires clients to show it.
        secrecy_prefix=f"{tags[0]} " if tags else SECRECY_PREFIX,
        first_look=timedelta(seconds=config.outbound.poll_seconds),
    )


def _outbound_settings(running: DaemonConfig) -> OutboundSettings:
    config = running.config
    return OutboundSettings(
        config.organisation_id,
        lifetime=config.outbound.lifetime,
        first_look=config.outbound.status_after,
        secrecy_tags=running.smtp.secrecy_tags,
        shared_mailboxes=frozenset(
            fa.mailbox_address(running.sdk_domain).casefold() for fa in config.functional_addresses
        ),
    )


@dataclass
class _Reloadable:
    """What SIGHUP changes without dropping a session: the SMTP TLS certificate, relay
    control (networks, users, who may send as which functional address), attachment
    policy and secrecy tags, and the functional addresses with their mailboxes. Anything
    else (listeners, spool, keys, registry, access point) is reported as needing a
    restart. A configuration that does not load is refused and the running one kept."""

    file: Path
    running: DaemonConfig
    ingress: IngressHandler
    tls: ssl.SSLContext | None
    inbound: Inbound
    worker: Worker
    delivery: MailboxDelivery
    health: Health | None
    book: AddressBook

    async def reload(self) -> None:
        systemd.notify("RELOADING=1")
        try:
            await self._reload()
        finally:
            systemd.notify("READY=1")

    async def _reload(self) -> None:
        try:
            new = required(await asyncio.to_thread(load_config, self.file))
            smtp = new.smtp
            if smtp.tls_cert is not None and smtp.tls_key is not None:  # one that fails is refused
                await asyncio.to_thread(tls_context, str(smtp.tls_cert), str(smtp.tls_key))
            mailboxes = await asyncio.to_thread(_mailboxes, new)
        except (ConfigError, ConfigurationMissing, plugin.PluginError, ssl.SSLError, OSError) as e:
            log.error("reload refused; the running configuration stays", reason=str(e))
            return
        restart = _needs_restart(self.running, new)
        if self.tls is not None and smtp.tls_cert is not None and smtp.tls_key is not None:
            self.tls.load_cert_chain(str(smtp.tls_cert), str(smtp.tls_key))
        self.ingress.settings = _ingress_settings(new)
        self.inbound.reconfigure(_inbound_settings(new))
        self.worker.settings = _outbound_settings(new)
        await self.delivery.replace(mailboxes)
        self.running = new
        log.info("configuration reloaded", file=str(self.file), needs_restart=restart or None)
        for warning in checks.certificate_warnings(new.config):
            log.warning(warning)
        if self.health is not None:  # a new TLS certificate, say
            self.health.certificates = checks.certificates(new.config)
            metrics.watch(self.health.spool, self.health.certificates, self.book)


def _needs_restart(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """The sections that changed but only take effect after a restart."""
    before, after = _restart_sections(old), _restart_sections(new)
    return [name for name in before if before[name] != after[name]]


def _restart_sections(running: DaemonConfig) -> dict[str, object]:
    """What a reload cannot change, comparably (certificates, not key objects)."""
    config, smtp = running.config, running.smtp
    pairs = [config.signing, *config.decryption]
    return {
        "organisation": (config.organisation_id, config.sdk_domain, config.federation),
        "keys": [pair.cert.public_bytes(serialization.Encoding.DER) for pair in pairs],
        "registry": config.registry,
        "access_point": config.access_point,
        "spool": (config.spool, config.spool_backend),
        "smtp.listen": (smtp.listen, smtp.listen_tls, smtp.tls_cert is None),
        "smtp.scanner": smtp.scanner,
        "outbound": config.outbound,
        "admin": config.admin,
    }


def _mailboxes(running: DaemonConfig) -> dict[str, plugin.Mailbox]:
    """Each functional address's mailbox; without `deliver_to`, a Maildir in the spool."""
    mailboxes = {}
    for address in running.config.functional_addresses:
        choice = address.deliver_to
        if choice is None:
            path = running.spool / "mailboxes" / address.id
            log.warning("no deliver_to: incoming mail goes to a Maildir", id=address.id, path=path)
            choice = ("maildir", {"path": str(path)})
        mailboxes[address.id] = plugin.load(plugin.MAILBOXES, *choice)
    return mailboxes


class StageFailed(RuntimeError):
    """A stage died; the daemon exits non-zero so systemd restarts it."""


class ConfigurationMissing(ValueError):
    pass


class SpoolInUse(ValueError):
    """Another bridge runs on this spool directory."""


def _address(listening: socket.socket) -> str:
    host, port = listening.getsockname()[:2]
    return f"{host}:{port}"


def _hold_spool_directory(directory: Path) -> IO[bytes]:
    """One bridge per spool directory: two would discard each other's mail still arriving
    and, on a shared database, carry one name on their leases and take each other's work.
    The lock (flock) is held as long as the process lives: a killed bridge's successor
    gets it at once."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / "bridge.lock").open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolInUse(
            f"another sdk-bridge runs on the spool directory {directory} (it holds"
            f" {directory / 'bridge.lock'}): each bridge needs a spool directory of its own"
        ) from None
    return handle


async def run(config: Config, file: Path) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and finish in-flight work;
    SIGHUP reloads `file` (see _Reloadable), SIGUSR1 asks the access point at once."""
    running = required(config)
    asyncio.get_running_loop().set_exception_handler(loop_errors())
    for warning in checks.certificate_warnings(config) + checks.exposure_warnings(config, file):
        log.warning(warning)
    memory.return_large_buffers()
    smtp = running.smtp
    held = _hold_spool_directory(running.spool)
    spool = open_spool(config)
    spool.discard_partial()
    released = spool.release_leases()
    registry = open_registry(config, spool.registry_cache())  # shared, on a database spool
    registry.start_background_refresh()
    access_point = plugin.load(
        plugin.ACCESS_POINTS, running.access_point.plugin, running.access_point.plugin_settings()
    )
    scanner = plugin.load(plugin.SCANNERS, *smtp.scanner) if smtp.scanner else None
    tls = tls_context(str(smtp.tls_cert), str(smtp.tls_key)) if smtp.tls_cert else None
    premapped = Premapped()  # what ingress mapped, so the worker need not map it again
    ingress = IngressHandler(
        _ingress_settings(running), registry, spool, scanner, premapped=premapped
    )
    if ingress.settings.max_connections < smtp.max_connections:
        log.warning(
            "smtp.max_connections lowered to what the file descriptor limit allows",
            max_connections=ingress.settings.max_connections,
        )
    # RSA private-key work in other processes: the event loop never waits for it. Started
    # before SMTP listens; should one fail, they end with this process.
    carried = (Worker, Inbound, config.signing, *config.decryption, *config.trust_anchors)
    crypto = workers.CryptoWorkers(os.cpu_count() or 2, *carried)  # the tasks' modules, keys
    await crypto.start()
    servers = await serve(ingress, smtp.listen, smtp.listen_tls, tls)
    reporter = DsnReporter(
        spool,
        config.outbound.smart_host,
        config.outbound.postmaster or f"postmaster@{smtp.hostname}",
        smtp.hostname,
        config.outbound.lifetime,
        report_domains=config.outbound.report_domains
        or sender_domains(tuple(p for fa in config.functional_addresses for p in fa.senders)),
        tls=ssl.create_default_context(cafile=config.outbound.smart_host_cafile)
        if config.outbound.smart_host_cafile
        else None,
    )
    report = Stage("report", reporter.round, config.outbound.poll_seconds, interruptible=True)

    def owed(_: Delivery) -> None:  # settling a delivery never waits for the smart host
        report.wake()

    receipts = Receipts(config.organisation_id, spool, registry, config.trust_anchors, owed)
    inbound = Inbound(_inbound_settings(running), spool, registry, access_point, scanner, crypto)
    health, admin_server = None, None
    if config.admin is not None:
        health = Health(
            spool,
            checks.certificates(config),
            config.admin.certificate_warning,
            access_point_grace=timedelta(seconds=max(3 * config.outbound.poll_seconds, 60)),
        )
        metrics.watch(spool, health.certificates, registry.book)
        admin_server = await admin.serve(*config.admin.listen, health)
    delivery = MailboxDelivery(spool, _mailboxes(running))
    worker = Worker(
        _outbound_settings(running),
        spool,
        registry,
        access_point,
        config.signing,
        crypto,
        notify=owed,
        premapped=premapped,
    )
    intake = Intake(access_point, spool, [config.organisation_id])
    stages = _stages(
        config,
        spool,
        access_point,
        intake,
        inbound,
        receipts,
        report,
        worker,
        delivery,
        health,
    )
    ingress.accepted = stages.submit.wake  # mail just accepted goes out without a poll
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def look_now() -> None:
        for stage in stages.all():
            stage.wake()

    loop.add_signal_handler(signal.SIGUSR1, look_now)
    reloadable = _Reloadable(
        file, running, ingress, tls, inbound, worker, delivery, health, registry.book
    )
    reloads: set[asyncio.Task[None]] = set()
    one_at_a_time = asyncio.Lock()

    async def reload_now() -> None:
        async with one_at_a_time:
            await reloadable.reload()

    def reload() -> None:
        task = asyncio.create_task(reload_now())
        reloads.add(task)  # kept until done, so it is not collected midway
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    failed: list[asyncio.Task[None]] = []
    running_stages = {asyncio.create_task(stage.run(stop)): stage for stage in stages.all()}
    listening = [_address(s.sockets[0]) for s in servers]
    admin_at = _address(admin_server.sockets[0]) if admin_server is not None else None
    log.info("sdk-bridge ready", smtp=listening, admin=admin_at, released_leases=released)
    # Where it listens, also on port 0 (the kernel's choice): lab.launch reads this line.
    admin_on = f"; admin on {admin_at}" if admin_at else ""
    print(f"sdk-bridge ready: SMTP on {', '.join(listening)}{admin_on}", flush=True)
    systemd.notify("READY=1")
    for task in running_stages:  # if a stage dies, the whole bridge stops (and restarts)
        task.add_done_callback(lambda _: stop.set())
    pulse = systemd.watchdog_interval()
    watchdog = asyncio.create_task(systemd.feed_watchdog(pulse, stop)) if pulse else None
    try:
        await stop.wait()
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopping: no new mail, finishing in-flight work")
        for server in servers:
            server.close()
        if admin_server is not None:
            admin_server.close()
        stop.set()
        for task, stage in running_stages.items():
            if stage.interruptible:  # a smart host that hangs does not hold up the stop
                task.cancel()
        if not await ingress.drained(SHUTDOWN_SECONDS):
            log.warning("messages still arriving at shutdown; their senders will retry")
        done, pending = await asyncio.wait(running_stages, timeout=SHUTDOWN_SECONDS)
        for task in pending:
            log.warning("in-flight work did not finish in time; it will be retried")
            task.cancel()
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if intake.unstored:
            log.error(
                "alert: stopping with retrieved messages that could not be stored; recover"
                " them at the access point and run `sdk-bridge inbound import`",
                ebms_ids=sorted(intake.unstored),
            )
        if watchdog is not None:
            await watchdog
        await crypto.close()
        await access_point.close()
        await delivery.close()
        registry.close()
        spool.close()
        held.close()
        log.info("stopped")
    if failed:
        raise StageFailed(f"a stage of the bridge failed: {failed[0].exception()!r}")
