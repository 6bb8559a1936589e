"""The lab's commands: `demo`, `sandbox`, `bench`, `bench-core`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime import logs as bridge_logging
from .common import UsageError

if TYPE_CHECKING:  # imported when used: most commands need no registry
    pass


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab import demo

    bridge_logging.configure("warning")  # the sandbox in this process: only its troubles
    directory = Path(args.dir) if args.dir else None
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty: the demo starts from nothing")
    return demo.run(directory)


def cmd_sandbox(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..lab.sandbox.federation import Sandbox

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


def cmd_bench(args: argparse.Namespace) -> int:
    import imaplib

    from ..lab import bench
    from ..lab.acceptbench import AcceptBenchFailed
    from ..lab.local import LocalRunFailed
    from ..lab.running import Unusable

    bridge_logging.configure("warning")  # the sandbox in this process: only its troubles
    for option, given in (
        ("--key-size", args.key_size),
        ("--dir", args.dir),
        ("--postgres", args.postgres),
        ("--instances", args.instances != 1),
        ("--smtp-source", args.smtp_source),
        ("--postfix", args.postfix),
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
    if args.postfix and args.profile not in bench.SIZES:
        raise UsageError("--postfix takes --profile 10kb or 1mb (Postfix's one payload size)")
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
            postfix=args.postfix,
        )
    except Unusable as e:
        raise UsageError(str(e)) from None
    except (LocalRunFailed, AcceptBenchFailed, OSError, imaplib.IMAP4.error) as e:
        print(f"sdk-bridge bench: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else bench.format_table(result))
    return 0


def _bench_smtp_source(args: argparse.Namespace) -> int:
    """SMTP accept alone, measured with Postfix's smtp-source (and Postfix beside it)."""
    from ..lab import acceptbench
    from ..lab.local import LocalRunFailed

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
    from ..lab.benchmark import format_table, run_core_benchmark

    result = run_core_benchmark(seconds=args.seconds, key_size=args.key_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="show the whole loop on this machine: SMTP -> SDK -> Maildir, kvittens, reply",
    )
    demo.add_argument("--dir", help="where to put its files (default: a new temporary directory)")
    demo.set_defaults(run=cmd_demo)

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
        help="beside the run, throw-away Postfixes (needs root): Postfix relaying as many mails"
        " to Postfix, and SMTP accept beside Postfix; each bridge's CPU over Postfix's."
        " With --smtp-source: the accept run against Postfix alone",
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
