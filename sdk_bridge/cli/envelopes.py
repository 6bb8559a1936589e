"""`sdk-bridge xhe` and `sdk-bridge kvittens`: SDK envelopes and kvittens sealed and
opened by hand."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..sdk import kvittens as kv
from ..sdk import sealing
from ..sdk.certs import CertificateProblem
from ..sdk.keys import KeyPair
from ..sdk.message import InvalidMessage
from ..sdk.names import APP_NS, q
from ..sdk.verdict import Outcome, Rejected
from ..sdk.xmlsafe import UnsafeXML
from ..sdk.xmlsafe import parse as parse_xml
from .common import UsageError, _at, _certificates, _keypair, _read, _write

if TYPE_CHECKING:  # imported when used: most commands need no registry
    pass


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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
