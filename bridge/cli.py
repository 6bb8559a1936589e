"""The `sdk-bridge` command.

Exit codes: 0 success (for `open`: the input is valid), 1 the input is not valid,
2 usage errors (bad options, unreadable files or keys).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from . import __version__, config
from .runtime import logs as bridge_logging
from .sdk import kvittens as kv
from .sdk import sealing
from .sdk.certs import CertificateProblem
from .sdk.keys import KeyError_, KeyPair, load_certificates, load_keypair, read_passphrase
from .sdk.message import InvalidMessage
from .sdk.names import APP_NS, q
from .sdk.verdict import Outcome, Rejected
from .sdk.xmlsafe import UnsafeXML
from .sdk.xmlsafe import parse as parse_xml

if TYPE_CHECKING:  # imported when used: most commands need no registry
    from .registry.client import Found
    from .spool import Spool

PASSPHRASE_ENV = "SDK_BRIDGE_KEY_PASSPHRASE"


class UsageError(Exception):
    """Reported as `sdk-bridge: error: ...` with exit code 2."""


def _keypair(key: str, cert: str | None, args: argparse.Namespace) -> KeyPair:
    try:
        if args.passphrase_file:
            passphrase: bytes | None = read_passphrase(Path(args.passphrase_file))
        else:
            passphrase = os.environ.get(PASSPHRASE_ENV, "").encode() or None
        return load_keypair(Path(key), Path(cert) if cert else None, passphrase)
    except (KeyError_, OSError) as e:
        raise UsageError(str(e)) from None


def _certificates(paths: Sequence[str] | None) -> list[x509.Certificate] | None:
    if not paths:
        return None
    try:
        return [c for p in paths for c in load_certificates(Path(p))]
    except (KeyError_, OSError) as e:
        raise UsageError(str(e)) from None


def _read(path: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None


def _write(data: bytes | bytearray, output: str | None) -> None:
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as e:
            raise UsageError(f"{output}: {e.strerror}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def _at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {value}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_xhe_seal(args: argparse.Namespace) -> int:
    signer = _keypair(args.sign_key, args.sign_cert, args)
    recipient = _certificates([args.encrypt_cert])[0]  # type: ignore[index]
    try:
        sealed = sealing.seal_message(
            _read(args.message), signer=signer, recipient_cert=recipient, federation=args.federation
        )
    except CertificateProblem as e:
        raise UsageError(f"{args.encrypt_cert}: {e}") from None
    except InvalidMessage as e:
        print(f"INVALID {e.problem.reason} {e.problem.detail}: {e.problem.text}", file=sys.stderr)
        return 1
    except UnsafeXML as e:
        print(f"INVALID: {e}", file=sys.stderr)
        return 1
    _write(sealed, args.output)
    return 0


def _receiver(args: argparse.Namespace, keys: list[KeyPair]) -> sealing.Receiver:
    return sealing.Receiver(
        decryption_keys=keys,
        sender_signing_certs=_certificates(args.sender_cert),
        trust_anchors=_certificates(args.trust),
        at=_at(args.at),
    )


def cmd_xhe_open(args: argparse.Namespace) -> int:
    keys = [_keypair(*_key_and_cert(value), args) for value in args.decrypt_key]
    opened = sealing.open_envelope(_read(args.xhe), _receiver(args, keys), decrypt=bool(keys))
    accepted = opened.verdict.outcome is Outcome.ACCEPTED
    if accepted and opened.plaintext is not None:
        _write(opened.plaintext, args.output)
    line = opened.verdict.line()
    if accepted and opened.is_kvittens:
        line = f"ACCEPTED kvittens: {opened.kvittens.summary()}"  # type: ignore[union-attr]
    elif accepted and not keys:
        line = "ACCEPTED envelope (payload not decrypted: no --decrypt-key)"
    print(line + _unchecked_signer_note(args, opened), file=sys.stderr)
    return 0 if accepted else 1


def _key_and_cert(value: str) -> tuple[str, str | None]:
    """`KEY` or `KEY,CERT`, as xmlsec1 takes them."""
    key, _, cert = value.partition(",")
    return key, cert or None


def _unchecked_signer_note(args: argparse.Namespace, opened: sealing.Opened) -> str:
    if opened.signer is None or args.trust or args.sender_cert:
        return ""
    return (
        " (signer not checked against a CA or published certificate: give --trust or --sender-cert)"
    )


def cmd_kvittens_seal(args: argparse.Namespace) -> int:
    signer = _keypair(args.sign_key, args.sign_cert, args)
    try:
        kvittens = kv.from_element(parse_xml(_read(args.kvittens), max_bytes=1_000_000))
    except (UnsafeXML, Rejected) as e:
        print(f"INVALID kvittens: {e}", file=sys.stderr)
        return 1
    try:
        sealed = sealing.seal_kvittens(
            kvittens,
            signer=signer,
            handling_service_id=args.handling_service_id,
            federation=args.federation,
        )
    except ValueError as e:
        print(f"INVALID kvittens: {e}", file=sys.stderr)
        return 1
    _write(sealed, args.output)
    return 0


def cmd_kvittens_open(args: argparse.Namespace) -> int:
    """A kvittens in its signed XHE, or a bare ApplicationResponse (profile checks only)."""
    data = _read(args.kvittens)
    try:
        root = parse_xml(data, max_bytes=sealing.MAX_ENVELOPE_BYTES)
    except UnsafeXML as e:
        print(f"NO-KVITTENS quarantine: {e}", file=sys.stderr)
        return 1
    if root.tag == q(APP_NS, "ApplicationResponse"):
        try:
            kvittens = kv.from_element(root)
        except Rejected as e:
            print(f"INVALID kvittens {e.reason} {e.detail}: {e.text}", file=sys.stderr)
            return 1
        print(f"VALID kvittens (not signed: no envelope): {kvittens.summary()}", file=sys.stderr)
        return 0
    opened = sealing.open_envelope(data, _receiver(args, []))
    if not opened.is_kvittens and opened.header is not None:
        print("NOT A KVITTENS: the envelope carries a business message", file=sys.stderr)
        return 1
    if opened.verdict.outcome is Outcome.ACCEPTED:
        summary = opened.kvittens.summary()  # type: ignore[union-attr]
        print(
            f"ACCEPTED kvittens: {summary}{_unchecked_signer_note(args, opened)}", file=sys.stderr
        )
        return 0
    print(opened.verdict.line(), file=sys.stderr)
    return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(Path(args.config))
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from .ops import checks

    for line in config.describe(loaded):
        print(line)
    for warning in checks.certificate_warnings(loaded) + checks.exposure_warnings(
        loaded, Path(args.config)
    ):
        print(f"warning: {warning}")
    if not args.online:
        print(f"{args.config}: OK")
        return 0
    findings = checks.online(loaded)
    for finding in findings:
        print(f"{'ok  ' if finding.ok else 'FAIL'}  {finding.what}: {finding.detail}")
    failed = [f for f in findings if not f.ok]
    print(f"{args.config}: {'OK' if not failed else f'{len(failed)} checks failed'}")
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from . import plugin
    from .daemon import ConfigurationMissing, SpoolInUse, StageFailed, run

    try:
        loaded = config.load(Path(args.config))
    except config.ConfigError as e:
        raise UsageError(str(e)) from None
    try:
        asyncio.run(run(loaded, Path(args.config)))
    except (ConfigurationMissing, SpoolInUse, plugin.PluginError) as e:
        raise UsageError(f"{args.config}: {e}") from None
    except StageFailed as e:
        print(f"sdk-bridge: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_inbound_import(args: argparse.Namespace) -> int:
    from .retrieval.intake import recovered

    try:
        item = recovered(args.ebms_id, Path(args.envelope).read_bytes())
    except OSError as e:
        raise UsageError(f"{args.envelope}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise UsageError(f"{args.envelope}: {e}") from None
    spool = _spool(args.config)
    try:
        if not spool.import_received(item):
            print(f"{args.ebms_id}: the spool already has it; nothing done")
            return 1
    finally:
        spool.close()
    print(f"{args.ebms_id}: stored; the bridge judges and answers it in its next round")
    return 0


def _spool_config(config_file: str) -> config.Config:
    try:
        loaded = config.load(Path(config_file))
    except config.ConfigError as e:
        raise UsageError(str(e)) from None
    if loaded.spool is None:
        raise UsageError(f"{config_file}: the configuration has no spool")
    return loaded


def _spool(config_file: str, loaded: config.Config | None = None) -> Spool:
    from .plugin import PluginError

    try:
        return config.open_spool(loaded or _spool_config(config_file))
    except PluginError as e:
        raise UsageError(f"{config_file}: {e}") from None


def cmd_purge(args: argparse.Namespace) -> int:
    """Apply the configuration's retention now, as the daemon does every minute."""
    from .spool import STORAGE_ERRORS

    loaded = _spool_config(args.config)
    spool = _spool(args.config, loaded)
    try:
        purged = spool.purge(loaded.retention)
    except STORAGE_ERRORS as e:
        print(f"sdk-bridge: the spool could not be purged now: {e}", file=sys.stderr)
        return 1
    finally:
        spool.close()
    if args.json:
        print(json.dumps(purged.summary()))
    else:
        for name, count in purged.summary().items():
            print(f"{name.replace('_', ' ')}: {count}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring a database spool's schema up to date (a spool back end's `upgrade`)."""
    from . import plugin

    backend, settings = _spool_config(args.config).spool_plugin()
    upgrade = getattr(plugin.factory(plugin.SPOOLS, backend), "upgrade", None)
    if upgrade is None:
        print(f"the {backend} spool keeps its schema up to date itself: nothing to do")
        return 0
    try:
        applied = upgrade(settings)
    except plugin.PluginError as e:
        print(f"sdk-bridge: {e}", file=sys.stderr)
        return 1
    for step in applied:
        print(f"applied schema version {step}")
    if not applied:
        print("the spool database schema is up to date: nothing to do")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    """The spool as postqueue and postsuper show and steer it."""
    import dataclasses

    from .ops import queueadmin as queue
    from .spool import ContentRemoved

    spool = _spool(args.config)
    try:
        if args.action == "list":
            found = queue.entries(spool, args.state)
            if args.json:
                print(json.dumps([dataclasses.asdict(e) for e in found], indent=2))
                return 0
            for e in found:
                print(
                    f"{e.direction:<3} {e.id:<36} {e.state:<10} {e.attempts:>3}  {e.created[:19]}"
                    f"  {e.sender or '-'} -> {e.recipient}"
                )
                if e.last_error:
                    print(f"    {e.last_error}")
            print(f"-- {len(found)} entries", file=sys.stderr)
            return 0
        if args.action == "show":
            entry = queue.find(spool, args.id)
            for key, value in dataclasses.asdict(entry).items():
                if key != "details":
                    print(f"{key}: {value if value not in (None, '') else '-'}")
            for key, value in entry.details.items():
                print(f"{key}: {value if value not in (None, '', [], {}) else '-'}")
            if args.body:
                try:
                    body = (
                        spool.body(entry.details["spool_id"])
                        if entry.direction == "out"
                        else spool.inbound_mail(entry.id)
                    )
                except ContentRemoved as e:
                    raise queue.QueueError(str(e)) from None
                sys.stdout.write("\n" + body.decode("utf-8", "replace"))
            return 0
        if args.action == "retry" and args.all:
            print(queue.retry_all(spool))
            return 0
        if not args.id:
            raise UsageError(f"queue {args.action}: give an ID (from queue list)")
        change = {
            "retry": queue.retry,
            "hold": queue.hold,
            "release": queue.release,
            "delete": queue.delete,
            "bounce": queue.bounce,
        }[args.action]
        print(change(spool, args.id))
        return 0
    except queue.QueueError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        spool.close()


def cmd_quarantine(args: argparse.Namespace) -> int:
    """Envelopes held for an administrator: no kvittens was sent for them."""
    spool = _spool(args.config)
    try:
        held = {row["id"]: row for row in spool.held_received()}
        if args.action == "list":
            if args.json:
                print(json.dumps(list(held.values()), indent=2, ensure_ascii=False))
            for row in [] if args.json else held.values():
                sender = row["original_sender"] or "-"
                print(f"{row['received_at'][:19]}  {row['state']:<11}  {row['id']}  from {sender}")
                print(f"    {row['note'] or ''}")
            return 0
        if args.id not in held:
            print(f"{args.id}: no such envelope in quarantine", file=sys.stderr)
            return 1
        if args.action == "show":
            for key, value in held[args.id].items():
                print(f"{key}: {value if value is not None else '-'}")
            print(f"envelope: {_describe_envelope(spool.received_payload(args.id))}")
            return 0
        done = (spool.release_received if args.action == "release" else spool.delete_received)(
            args.id
        )
        if not done:
            print(f"{args.id}: only a quarantined envelope can be released", file=sys.stderr)
            return 1
        what = "judged again in the bridge's next round" if args.action == "release" else "deleted"
        print(f"{args.id}: {what}")
        return 0
    finally:
        spool.close()


def _describe_envelope(payload: bytes) -> str:
    """What can be read of an envelope without trusting or decrypting it."""
    from .sdk import xhe

    if not payload:
        return "(none kept)"
    try:
        root = parse_xml(payload, max_bytes=len(payload))
    except UnsafeXML as e:
        return f"{len(payload)} bytes, not readable XML ({e})"
    envelope_id, sender, recipient = xhe.identity(root)
    kind = "kvittens" if xhe.carries_kvittens(root) else "message"
    return f"{len(payload)} bytes, XHE {kind} {envelope_id or '?'} from {sender} to {recipient}"


def cmd_export_contacts(args: argparse.Namespace) -> int:
    from .registry import contacts
    from .registry.errors import RegistryUnavailable

    try:
        loaded = config.load(Path(args.config))
    except config.ConfigError as e:
        raise UsageError(str(e)) from None
    if loaded.registry is None or loaded.sdk_domain is None:
        raise UsageError(f"{args.config}: needs a registry section and organisation.sdk_domain")
    with config.open_registry(loaded) as registry:
        assert registry.addresses is not None
        try:
            registry.book.refresh_if_due()
            chosen = contacts.matching(registry.book.organisations(), args.org)
            found = contacts.contacts(chosen, registry.addresses)
        except RegistryUnavailable as e:
            print(f"temporary failure: {e}", file=sys.stderr)
            return 75
    data = contacts.render(found, args.format)
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"{len(found)} contacts written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .lab import demo

    bridge_logging.configure("warning")  # the sandbox in this process: only its troubles
    directory = Path(args.dir) if args.dir else None
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty: the demo starts from nothing")
    return demo.run(directory)


def cmd_sandbox(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .lab.sandbox.federation import Sandbox

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before anything starts: always clean up
        signal.signal(signum, lambda *_: stop.set())
    try:
        sandbox = Sandbox(
            Path(args.dir),
            args.orgs,
            args.key_size,
            sml=args.sml,
            conversation_id_rule=args.conversation_id_rule,
            retention_minutes=args.retention_minutes,
            shared_access_point=args.shared_access_point,
            admin_plugin_users=args.admin_plugin_users,
            interface=args.interface,
            mtom=args.mtom,
            domibus=args.domibus,
            intermediate_statuses=args.intermediate_statuses,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        sandbox.start()
        if not stop.is_set():
            configs = ", ".join(str(sandbox.config_path(label)) for label in sandbox.organisations)
            print(f"sandbox ready at {sandbox.https.url}; configurations: {configs}", flush=True)
            stop.wait()
    finally:
        sandbox.stop()
    print("sandbox stopped", flush=True)
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    from .registry.errors import NotFound, RegistryUnavailable

    try:
        loaded = config.load(Path(args.config))
    except config.ConfigError as e:
        raise UsageError(str(e)) from None
    if loaded.registry is None:
        raise UsageError(f"{args.config}: no registry section")
    with config.open_registry(loaded) as registry:
        try:
            registry.book.refresh_if_due()
            found = registry.lookup(args.address)
        except NotFound as e:
            print(f"not found: {e}", file=sys.stderr)
            return 1
        except RegistryUnavailable as e:
            print(f"temporary failure: {e}", file=sys.stderr)
            return 75  # EX_TEMPFAIL, as sendmail-style tools answer
    for result in found:
        print("\n".join(_describe_found(result)))
    problems = [p for result in found for p in result.problems]
    if any(isinstance(p, RegistryUnavailable) for p in problems):
        return 75
    return 1 if problems else 0


def _describe_found(found: Found) -> list[str]:
    organisation = found.organisation
    lines = [f"{organisation.name} ({organisation.id})", "  functional addresses:"]
    for address in organisation.addresses:
        lines.append(f"    {address.name} [{address.identifier}]")
        lines += [f"      {email}" for email in found.emails.get(address.identifier, [])]
    for endpoint in found.endpoints:
        until = f", until {endpoint.expiration:%Y-%m-%d}" if endpoint.expiration else ""
        lines.append(f"  access point: {endpoint.url} ({endpoint.transport_profile}{until})")
    for title, certificates in (
        ("encryption certificates", found.encryption_certificates),
        ("signing certificates", found.signing_certificates),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {line}" for cert in certificates for line in _certificate_lines(cert)]
    lines += [f"  problem: {problem}" for problem in found.problems]
    return lines


def _certificate_lines(cert: x509.Certificate) -> list[str]:
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return [
        cert.subject.rfc4514_string(),
        f"  SHA-256 {fingerprint}",
        f"  valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}",
    ]


def cmd_bench(args: argparse.Namespace) -> int:
    import imaplib

    from .lab import bench
    from .lab.local import LocalRunFailed
    from .lab.running import Unusable

    bridge_logging.configure("warning")  # the sandbox in this process: only its troubles
    for option, given in (
        ("--key-size", args.key_size),
        ("--dir", args.dir),
        ("--postgres", args.postgres),
        ("--instances", args.instances != 1),
        ("--smtp-source", args.smtp_source),
    ):
        if args.running and given:
            raise UsageError(f"{option} is not for --running: those bridges are set up already")
    args.key_size = args.key_size or 3072
    if args.messages < 1 or args.concurrency < 1:
        raise UsageError("--messages and --concurrency must be at least 1")
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be above 0")
    if args.instances < 1:
        raise UsageError("--instances must be at least 1")
    if args.instances > 1 and not args.postgres:
        raise UsageError("--instances above 1 needs --postgres: the instances share a database")
    if args.imap:
        try:
            bench.Mailbox(args.imap)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.smtp_source:
        if args.postgres:
            raise UsageError("--smtp-source measures the SQLite spool; not with --postgres")
        return _bench_smtp_source(args)
    if args.postfix:
        raise UsageError("--postfix goes with --smtp-source")
    try:
        result = bench.run(
            args.messages,
            args.concurrency,
            args.profile,
            args.key_size,
            Path(args.dir) if args.dir else None,
            progress=sys.stderr.isatty(),
            rate=args.rate,
            imap=args.imap,
            postgres=args.postgres,
            instances=args.instances,
            running=(Path(args.running[0]), Path(args.running[1])) if args.running else None,
        )
    except Unusable as e:
        raise UsageError(str(e)) from None
    except (LocalRunFailed, OSError, imaplib.IMAP4.error) as e:  # IMAP: --imap's server
        print(f"sdk-bridge bench: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else bench.format_table(result))
    return 0


def _bench_smtp_source(args: argparse.Namespace) -> int:
    """SMTP accept alone, measured with Postfix's smtp-source (and Postfix beside it)."""
    from .lab import acceptbench
    from .lab.local import LocalRunFailed

    sizes = {"10kb": 10_240, "1mb": 1_048_576}  # smtp-source sends one payload size
    if args.profile not in sizes:
        raise UsageError("--smtp-source takes --profile 10kb or 1mb")
    try:
        result = acceptbench.run(
            args.messages,
            args.concurrency,
            sizes[args.profile],
            postfix=args.postfix,
            key_size=args.key_size,
            directory=Path(args.dir) if args.dir else None,
        )
    except (acceptbench.AcceptBenchFailed, LocalRunFailed) as e:
        print(f"sdk-bridge bench: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else acceptbench.format_table(result))
    return 0


def cmd_bench_core(args: argparse.Namespace) -> int:
    from .lab.benchmark import format_table, run_core_benchmark

    result = run_core_benchmark(seconds=args.seconds, key_size=args.key_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def _add_trust_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust",
        action="append",
        metavar="CA.pem",
        help="CA certificates the signer must chain to (repeatable)",
    )
    parser.add_argument(
        "--sender-cert",
        action="append",
        metavar="CERT",
        help="the sender's published signing certificates; the signer must be one (repeatable)",
    )
    parser.add_argument(
        "--at", metavar="ISO-TIME", help="check certificate validity at this time (default: now)"
    )


def _add_signer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sign-key",
        required=True,
        metavar="KEY",
        help="signing key: PEM, or PKCS#12 (.p12/.pfx) with its certificate",
    )
    parser.add_argument("--sign-cert", metavar="CERT", help="certificate for a PEM signing key")
    parser.add_argument(
        "--federation",
        default=sealing.SDK_FEDERATION,
        help="FEDERATIONID of the envelope (default: %(default)s)",
    )
    parser.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdk-bridge",
        description="Connects an organisation's e-mail to SDK, Säker digital kommunikation.",
    )
    parser.add_argument("--version", action="version", version=f"sdk-bridge {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument("--log-json", action="store_true", help="log JSON lines")
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"passphrase for encrypted keys (default: ${PASSPHRASE_ENV})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show the whole loop on this machine: SMTP -> SDK -> Maildir, kvittens, reply",
    )
    demo.add_argument("--dir", help="where to put its files (default: a new temporary directory)")
    demo.set_defaults(run=cmd_demo)

    xhe = commands.add_parser("xhe", help="seal and open SDK envelopes (XHE)")
    xhe_commands = xhe.add_subparsers(dest="action", required=True, metavar="ACTION")
    seal = xhe_commands.add_parser(
        "seal",
        help="encrypt and sign a business message into an XHE",
        description="Parties, HandlingServiceID and the XHE ID come from the message header.",
    )
    seal.add_argument("message", metavar="MESSAGE.xml")
    seal.add_argument(
        "--encrypt-cert",
        required=True,
        metavar="CERT",
        help="the recipient's encryption certificate",
    )
    _add_signer_options(seal)
    seal.set_defaults(run=cmd_xhe_seal)

    open_ = xhe_commands.add_parser(
        "open",
        help="verify, decrypt and validate an XHE; print the business message",
        description="Prints one line naming the outcome (ACCEPTED, REJECTED <reason> <detail>, "
        "NO-KVITTENS quarantine) on stderr, the decrypted message on stdout.",
    )
    open_.add_argument("xhe", metavar="XHE.xml")
    open_.add_argument(
        "--decrypt-key",
        action="append",
        default=[],
        metavar="KEY[,CERT]",
        help="decryption key: PKCS#12, or a PEM key and its certificate "
        "(repeatable, for a certificate rollover)",
    )
    open_.add_argument("-o", "--output", metavar="OUT", help="write the message here")
    _add_trust_options(open_)
    open_.set_defaults(run=cmd_xhe_open)

    kvittens = commands.add_parser("kvittens", help="seal and open kvittens")
    kvittens_commands = kvittens.add_subparsers(dest="action", required=True, metavar="ACTION")
    kseal = kvittens_commands.add_parser("seal", help="sign an ApplicationResponse into an XHE")
    kseal.add_argument("kvittens", metavar="KVITTENS.xml")
    kseal.add_argument(
        "--handling-service-id",
        metavar="ADDRESS",
        help="the functional address the original message was sent to (its HandlingServiceID)",
    )
    _add_signer_options(kseal)
    kseal.set_defaults(run=cmd_kvittens_seal)
    kopen = kvittens_commands.add_parser("open", help="verify and validate a kvittens")
    kopen.add_argument("kvittens", metavar="FILE", help="an XHE, or a bare ApplicationResponse")
    _add_trust_options(kopen)
    kopen.set_defaults(run=cmd_kvittens_open)

    inbound = commands.add_parser("inbound", help="messages received from the access point")
    inbound_commands = inbound.add_subparsers(dest="action", required=True, metavar="ACTION")
    recover = inbound_commands.add_parser(
        "import",
        help="hand over an envelope recovered from the access point (a message recorded lost)",
        description="For a message the bridge recorded as lost (retrieved before a crash and "
        "not stored): download its payload from the access point during its retention and "
        "give it here with its ebMS MessageId. Works while the daemon runs.",
    )
    recover.add_argument("-c", "--config", required=True, metavar="FILE")
    recover.add_argument("--ebms-id", required=True, help="the ebMS MessageId the alert named")
    recover.add_argument("envelope", metavar="XHE.xml", help="the payload (the signed XHE)")
    recover.set_defaults(run=cmd_inbound_import)

    queue_parser = commands.add_parser(
        "queue",
        help="the queue in both directions: list, show, retry, hold, release, delete, bounce",
        description="Outbound deliveries (by number or SDK messageId) and received mail on its "
        "way to a mailbox (by SDK messageId). Works while the daemon runs.",
    )
    queue_commands = queue_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "every entry, or those in one --state"),
        ("show", "one entry: envelope, SDK ids, attempts, last error (the mail with --body)"),
        ("retry", "try now instead of at the next scheduled attempt (--all: every waiting one)"),
        ("hold", "stop a queued delivery until released"),
        ("release", "let a held delivery go"),
        ("delete", "drop a queued or held delivery without telling its sender"),
        ("bounce", "fail a delivery and send its sender a delivery report"),
    ):
        sub = queue_commands.add_parser(name, help=text)
        sub.add_argument("-c", "--config", required=True, metavar="FILE")
        if name == "list":
            sub.add_argument("--state", help="queued, submitted, delivered, failed, held, …")
            sub.add_argument("--json", action="store_true", help="as JSON")
        elif name == "retry":
            sub.add_argument("id", nargs="?", metavar="ID")
            sub.add_argument("--all", action="store_true", help="every waiting entry")
        else:
            sub.add_argument("id", metavar="ID")
        if name == "show":
            sub.add_argument("--body", action="store_true", help="print the mail too")
        sub.set_defaults(run=cmd_queue)

    quarantine = commands.add_parser(
        "quarantine",
        help="received envelopes held for an administrator (no kvittens was sent)",
        description="Envelopes Digg says get no kvittens (not well-formed, not decryptable, "
        "not for us, sender not in SMP), unreadable answers of the access point, and messages "
        "lost in a crash. Works while the daemon runs.",
    )
    quarantine_commands = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "list them, newest first"),
        ("show", "one of them: its record and what its envelope says (never decrypted)"),
        ("release", "judge a quarantined one again (say, after adding a decryption key)"),
        ("delete", "remove one that has been dealt with"),
    ):
        sub = quarantine_commands.add_parser(name, help=text)
        sub.add_argument("-c", "--config", required=True, metavar="FILE")
        if name == "list":
            sub.add_argument("--json", action="store_true", help="as JSON")
        else:
            sub.add_argument("id", metavar="EBMS-ID", help="the ebMS MessageId (from list)")
        sub.set_defaults(run=cmd_quarantine)

    export = commands.add_parser(
        "export-contacts",
        help="the address book as contacts for Exchange, Outlook or a directory",
        description="One contact per functional address, with the e-mail alias that reaches "
        "it through the bridge. csv: columns for Exchange's New-MailContact; vcard: for "
        "Outlook and Thunderbird; ldif: for an LDAP directory.",
    )
    export.add_argument("-c", "--config", required=True, metavar="FILE")
    export.add_argument("--format", choices=("csv", "vcard", "ldif"), default="csv")
    export.add_argument(
        "--org", metavar="PATTERN", help="only organisations whose name or id matches (* ?)"
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    export.set_defaults(run=cmd_export_contacts)

    db = commands.add_parser("db", help="the spool database (a PostgreSQL spool)")
    db_commands = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser(
        "upgrade",
        help="apply the schema migrations the database lacks",
        description="Needed once before the first start on a new database and after each "
        "sdk-bridge upgrade that brings migrations; running it again does nothing. Safe "
        "while other instances run or upgrade at the same time.",
    )
    upgrade.add_argument("-c", "--config", required=True, metavar="FILE")
    upgrade.set_defaults(run=cmd_db_upgrade)

    purge = commands.add_parser(
        "purge",
        help="remove now what the retention settings no longer keep",
        description="The daemon does this every minute: mail content once delivered and its "
        "kvittens settled, quarantined envelopes and reports after their time, records of "
        "settled messages after records_days. Works while the daemon runs.",
    )
    purge.add_argument("-c", "--config", required=True, metavar="FILE")
    purge.add_argument("--json", action="store_true", help="the counts as JSON")
    purge.set_defaults(run=cmd_purge)

    run = commands.add_parser("run", help="run the bridge (the daemon)")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.set_defaults(run=cmd_run)

    sandbox = commands.add_parser(
        "sandbox", help="run a complete local SDK federation for trying and testing"
    )
    sandbox.add_argument("--dir", required=True, help="where its state and configurations live")
    sandbox.add_argument("--orgs", type=int, help="how many organisations, a, b, … (default 2)")
    sandbox.add_argument("--key-size", type=int, help="RSA key size of new keys (default 3072)")
    sandbox.add_argument(
        "--sml", action="store_true", default=None, help="also run an SML zone in DNS (dnsmasq)"
    )
    sandbox.add_argument(
        "--conversation-id-rule",
        choices=("business", "envelope", "optional"),
        help="what the access points require of the ebMS ConversationId (default business: "
        "present; envelope: the XHE ID; optional: made up when missing, as Domibus does)",
    )
    sandbox.add_argument(
        "--retention-minutes",
        type=int,
        help="keep downloaded messages this long (default 0, Digg's retention_downloaded)",
    )
    sandbox.add_argument(
        "--shared-access-point",
        action="store_true",
        default=None,
        help="one access point for every organisation, as a service provider runs",
    )
    sandbox.add_argument(
        "--admin-plugin-users",
        action="store_true",
        default=None,
        help="the bridges' plugin users are administrators (they see every organisation's"
        " messages) instead of users with their organisation as originalUser",
    )
    sandbox.add_argument(
        "--interface",
        choices=("wsplugin", "backend"),
        default="wsplugin",
        help="the WS plugin interface the configurations name (default wsplugin, Domibus"
        " 5.x; backend: the deprecated one of 4.x); the access points serve both",
    )
    sandbox.add_argument(
        "--mtom", action="store_true", help="answer retrieveMessage as MTOM/XOP, as CXF can"
    )
    sandbox.add_argument(
        "--domibus",
        choices=("5", "4"),
        default="5",
        help="answer as Domibus 5.2 (default) or as 4.x: only the deprecated interface, and"
        " its fault shapes (use with --interface backend)",
    )
    sandbox.add_argument(
        "--intermediate-statuses",
        action="store_true",
        help="report each submission SEND_ENQUEUED, SEND_ATTEMPT_FAILED and WAITING_FOR_RETRY"
        " before its final status, as a busy access point does",
    )
    sandbox.set_defaults(run=cmd_sandbox)

    lookup = commands.add_parser(
        "lookup", help="look up an e-mail address, 0203: organisation id or name in SDK"
    )
    lookup.add_argument("-c", "--config", required=True, metavar="FILE")
    lookup.add_argument("address", metavar="ADDRESS")
    lookup.set_defaults(run=cmd_lookup)

    check = commands.add_parser(
        "check-config", help="check a configuration file, its keys and certificates"
    )
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    check.add_argument(
        "--online",
        action="store_true",
        help="also reach the address book, SMP/CertPub, revocation services, the access point "
        "and the mailboxes, and report each",
    )
    check.set_defaults(run=cmd_check_config)

    load = commands.add_parser(
        "bench",
        help="the whole path under load: SMTP at A to B's mailbox and the kvittens back",
    )
    load.add_argument("--messages", type=int, default=200, help="how many mails (default 200)")
    load.add_argument("--concurrency", type=int, default=8, help="SMTP sessions (default 8)")
    load.add_argument(
        "--profile",
        choices=("10kb", "1mb", "max", "mixed"),
        default="10kb",
        help="10kb text mails; 1mb with a PDF; max: one 30 MB message; mixed: nine to one",
    )
    load.add_argument(
        "--key-size", type=int, help="RSA key size (default 3072; with --running, A's)"
    )
    load.add_argument(
        "--running",
        nargs=2,
        metavar=("A_CONFIG", "B_CONFIG"),
        help="measure two bridges already running with these configurations instead of"
        " starting a sandbox: mail from A's first sender to B's first functional address,"
        " sent from this machine without AUTH (A's smtp.allowed_networks must allow it)",
    )
    load.add_argument(
        "--imap",
        metavar="URL",
        help="B delivers into this running IMAP folder, watched there:"
        " imap://user:password@127.0.0.1:143/INBOX (or imaps://...?cafile=PATH)",
    )
    load.add_argument(
        "--rate",
        type=float,
        help="offer mails at this many per second, all sessions together (default: open rate)",
    )
    load.add_argument(
        "--postgres",
        metavar="DSN",
        help="spools on PostgreSQL instead of SQLite: through DSN (a libpq connection string"
        " or URL, of a role that may CREATE DATABASE) the run makes a throw-away database for"
        " A and one for B, and drops them when it ends",
    )
    load.add_argument(
        "--instances",
        type=int,
        default=1,
        help="bridges of A on its one database, the SMTP sessions spread over them"
        " (default 1; more needs --postgres)",
    )
    load.add_argument(
        "--smtp-source",
        action="store_true",
        help="SMTP accept to durable spool alone, sent by Postfix's smtp-source",
    )
    load.add_argument(
        "--postfix",
        action="store_true",
        help="with --smtp-source: the same run against a throw-away Postfix (needs root)",
    )
    load.add_argument("--dir", help="where to keep the run's files (default: a temporary one)")
    load.add_argument("--json", action="store_true", help="print JSON")
    load.set_defaults(run=cmd_bench)

    bench = commands.add_parser(
        "bench-core", help="micro-benchmark: seal/open throughput vs raw RSA signing"
    )
    bench.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    bench.add_argument("--key-size", type=int, default=3072)
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(run=cmd_bench_core)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever it writes (spool, mail, keys, the sandbox's passwords) is its owner's alone,
    # as Postfix does it, also when started by hand from a shell with umask 022.
    previous = os.umask(0o077)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        bridge_logging.configure(args.log_level, args.log_json)
        run: Callable[[argparse.Namespace], int] = args.run
        try:
            return run(args)
        except UsageError as e:
            parser.exit(2, f"sdk-bridge: error: {e}\n")
    finally:
        os.umask(previous)  # called in-process (tests), the caller's umask comes back


if __name__ == "__main__":
    sys.exit(main())
