"""The commands an administrator runs the bridge with: `run`, `check-config`, `lookup`,
`queue`, `quarantine`, `inbound import`, `purge`, `db upgrade`, `export-contacts`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .. import config
from ..sdk.xmlsafe import UnsafeXML
from ..sdk.xmlsafe import parse as parse_xml
from .common import UsageError, _spool, _spool_config

if TYPE_CHECKING:  # imported when used: most commands need no registry
    from ..registry.client import Found


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = config.load(Path(args.config))
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from ..ops import checks

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

    from .. import plugin
    from ..daemon import ConfigurationMissing, SpoolInUse, StageFailed, run

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
    from ..retrieval.intake import recovered

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


def cmd_purge(args: argparse.Namespace) -> int:
    """Apply the configuration's retention now, as the daemon does every minute."""
    from ..spool import STORAGE_ERRORS

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
    from .. import plugin

    backend, settings = _spool_config(args.config).spool_plugin()
    spool = plugin.migrations(backend)
    if spool is None:
        print(f"the {backend} spool keeps its schema up to date itself: nothing to do")
        return 0
    try:
        applied = spool.upgrade(settings)
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

    from ..ops import queueadmin as queue
    from ..spool import ContentRemoved

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
    from ..sdk import xhe

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
    from ..registry import contacts
    from ..registry.errors import RegistryUnavailable

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


def cmd_lookup(args: argparse.Namespace) -> int:
    from ..registry.errors import NotFound, RegistryUnavailable

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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
