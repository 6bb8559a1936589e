"""The `sdk-bridge` command as an administrator uses it.

Most cases call `sdk_bridge.cli.main` in-process; one runs the installed console script to
prove it is wired. Exit codes: 0 success / valid, 1 not valid, 2 usage error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree
from support import digg
from support.configs import write_config
from support.parties import ADDRESS_A, ORG_A, ORG_B, keypair, make_message

from sdk_bridge import cli
from sdk_bridge.lab.testpki import PASSPHRASE, Identity, TestPKI
from sdk_bridge.sdk import kvittens as kv
from sdk_bridge.sdk import message as msg
from sdk_bridge.sdk import sealing
from sdk_bridge.sdk.names import MSG_NS
from sdk_bridge.sdk.verdict import ACCEPTED, Detail, Outcome, Reason, Verdict

# The message format keeps milliseconds only: a whole-millisecond time survives a round trip.
CREATED = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
DIGG_AT = "2022-10-14T12:00:00Z"
O2O_CAS = (
    "certificate-chains",
    "Certifikatkedjor OpenTest",
    "CAs",
    "Certifikatskedjor O2O",
)
KVITTENS_EXAMPLES = ("kvittens", "C3.2.4 Meddelandekvittens_exempel_v1.0")


@pytest.fixture(autouse=True)
def _no_passphrase_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A passphrase set where the tests run would change how every key file is read."""
    monkeypatch.delenv(cli.PASSPHRASE_ENV, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    """Exit code and stderr of `sdk-bridge argv...` run in-process."""
    capsys.readouterr()  # drop anything captured before
    try:
        code = cli.main(strings(*argv))
    except SystemExit as e:  # argparse and usage errors
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def strings(*argv: object) -> list[str]:
    return [str(a) for a in argv]


def trust(pki: TestPKI) -> list[object]:
    return ["--trust", pki.root_pem, "--trust", pki.issuing_ca.cert_pem]


def signer(identity: Identity) -> list[object]:
    return ["--sign-key", identity.key_pem, "--sign-cert", identity.cert_pem]


def encrypt_to(identity: Identity) -> list[object]:
    return ["--encrypt-cert", identity.cert_pem]


def decrypt_with(identity: Identity) -> list[object]:
    return ["--decrypt-key", f"{identity.key_pem},{identity.cert_pem}"]


def sender(identity: Identity) -> list[object]:
    return ["--sender-cert", identity.cert_pem]


@pytest.fixture
def message() -> msg.BusinessMessage:
    return make_message(created=CREATED)


@pytest.fixture
def sealed(tmp_path: Path, message: msg.BusinessMessage, alice: Identity, bob: Identity) -> Path:
    """A message from A to B, sealed by the library (the CLI's seal is tested on its own)."""
    path = tmp_path / "sealed.xml"
    path.write_bytes(
        sealing.seal_message(msg.to_xml(message), signer=keypair(alice), recipient_cert=bob.cert)
    )
    return path


@pytest.fixture
def digg_vector(tmp_path: Path) -> Path:
    """The signed, encrypted XHE inside Digg's Domibus submitRequest example."""
    path = tmp_path / "digg-xhe.xml"
    path.write_bytes(digg.signed_vector())
    return path


# --- xhe seal / xhe open ---------------------------------------------------------------


def test_seal_then_open(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    pki: TestPKI,
    alice: Identity,
    bob: Identity,
    message: msg.BusinessMessage,
) -> None:
    source, out, plain = tmp_path / "message.xml", tmp_path / "out.xml", tmp_path / "plain.xml"
    source.write_bytes(msg.to_xml(message))
    code, err = run(capsys, "xhe", "seal", source, *signer(alice), *encrypt_to(bob), "-o", out)
    assert code == 0, err
    assert b"<xenc:EncryptedData" in out.read_bytes()
    assert "Ansökan om bygglov".encode() not in out.read_bytes()

    argv = ["xhe", "open", out, *decrypt_with(bob), *trust(pki), *sender(alice), "-o", plain]
    code, err = run(capsys, *argv)
    assert code == 0, err
    assert one_line(err).startswith("ACCEPTED")
    assert msg.parse(plain.read_bytes()) == message


@pytest.mark.parametrize("form", ["p12", "key_pem_encrypted"])
@pytest.mark.parametrize("via", ["environment", "passphrase-file"])
def test_seal_with_protected_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    alice: Identity,
    bob: Identity,
    message: msg.BusinessMessage,
    form: str,
    via: str,
) -> None:
    source, out = tmp_path / "message.xml", tmp_path / "out.xml"
    source.write_bytes(msg.to_xml(message))
    key = getattr(alice, form)
    options: list[object] = []
    if via == "environment":
        monkeypatch.setenv(cli.PASSPHRASE_ENV, PASSPHRASE.decode())
    else:
        secret = tmp_path / "passphrase"
        secret.write_bytes(PASSPHRASE + b"\n")  # as `echo secret > file` writes it
        options = ["--passphrase-file", secret]
        monkeypatch.setenv(cli.PASSPHRASE_ENV, "wrong")  # the file takes precedence
    cert = [] if form == "p12" else ["--sign-cert", alice.cert_pem]
    argv = [*options, "xhe", "seal", source, "--sign-key", key, *cert, *encrypt_to(bob)]
    code, err = run(capsys, *argv, "-o", out)
    assert code == 0, err
    opened = sealing.open_envelope(out.read_bytes(), sealing.Receiver([keypair(bob)]))
    assert opened.verdict == ACCEPTED
    assert opened.signer == alice.cert
    assert opened.message == message


@pytest.mark.parametrize("form", ["p12", "key_pem_encrypted"])
@pytest.mark.parametrize("passphrase", ["wrong", None])
def test_seal_with_wrong_passphrase_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    alice: Identity,
    bob: Identity,
    message: msg.BusinessMessage,
    form: str,
    passphrase: str | None,
) -> None:
    source, out = tmp_path / "message.xml", tmp_path / "out.xml"
    source.write_bytes(msg.to_xml(message))
    if passphrase is not None:
        monkeypatch.setenv(cli.PASSPHRASE_ENV, passphrase)
    key = getattr(alice, form)
    cert = [] if form == "p12" else ["--sign-cert", alice.cert_pem]
    argv = ["xhe", "seal", source, "--sign-key", key, *cert, *encrypt_to(bob)]
    code, err = run(capsys, *argv, "-o", out)
    assert code == 2
    line = one_line(err)
    assert line.startswith("sdk-bridge: error:")
    assert str(key) in line
    assert not out.exists()


def test_open_during_rollover_with_two_keys(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    sealed: Path,
    bob: Identity,
    bob_next: Identity,
    message: msg.BusinessMessage,
) -> None:
    plain = tmp_path / "plain.xml"
    argv = ["xhe", "open", sealed, *decrypt_with(bob_next), *decrypt_with(bob), "-o", plain]
    code, err = run(capsys, *argv)
    assert code == 0, err
    assert one_line(err).startswith("ACCEPTED (signer not checked against a CA")
    assert msg.parse(plain.read_bytes()) == message

    # The old key is the one that decrypts: the new one alone does not.
    code, err = run(capsys, "xhe", "open", sealed, *decrypt_with(bob_next))
    assert code == 1
    assert one_line(err).startswith("NO-KVITTENS quarantine:")


def test_open_without_decrypt_key_checks_the_envelope_only(
    capfdbinary: pytest.CaptureFixture[bytes],
    pki: TestPKI,
    sealed: Path,
    alice: Identity,
) -> None:
    code = cli.main(strings("xhe", "open", sealed, *trust(pki), *sender(alice)))
    out, err = capfdbinary.readouterr()
    assert code == 0, err
    assert out == b""  # nothing decrypted, nothing printed
    line = err.decode().strip()
    assert line.startswith("ACCEPTED envelope")
    assert "not decrypted" in line


def test_open_writes_the_message_to_stdout_without_output_option(
    capfdbinary: pytest.CaptureFixture[bytes],
    sealed: Path,
    bob: Identity,
    message: msg.BusinessMessage,
) -> None:
    code = cli.main(strings("xhe", "open", sealed, *decrypt_with(bob)))
    out, err = capfdbinary.readouterr()
    assert code == 0, err
    assert err.strip().startswith(b"ACCEPTED")
    assert msg.parse(out) == message


def _tampered(sealed: Path) -> Path:
    data = sealed.read_bytes()
    changed = data.replace(
        b"<HandlingServiceID>registrator.b<", b"<HandlingServiceID>registrator.x<"
    )
    assert changed != data
    path = sealed.with_name("tampered.xml")
    path.write_bytes(changed)
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param(case, expected, id=case)
        for case, expected in (
            ("mallory-decrypts", "NO-KVITTENS quarantine:"),
            ("mallory-published", "REJECTED SIG security:"),
            ("tampered", "REJECTED SIG security:"),
            ("before-validity", "REJECTED SIG security:"),
        )
    ],
)
def test_wrong_outcomes_print_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    pki: TestPKI,
    sealed: Path,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    case: str,
    expected: str,
) -> None:
    plain = tmp_path / "plain.xml"
    key, published, path, extra = bob, alice, sealed, []
    if case == "mallory-decrypts":
        key = mallory
    elif case == "mallory-published":
        published = mallory
    elif case == "tampered":
        path = _tampered(sealed)
    else:
        extra = ["--at", "2000-01-01T00:00:00Z"]
    argv = ["xhe", "open", path, *decrypt_with(key), *trust(pki), *sender(published), *extra]
    code, err = run(capsys, *argv, "-o", plain)
    assert code == 1
    line = one_line(err)
    assert line.startswith(expected)
    if case == "before-validity":
        assert "not valid at 2000-01-01" in line
    if case == "tampered":
        assert "digest" in line
    assert not plain.exists()  # nothing is released from an envelope that fails


# --- Digg's own vector -----------------------------------------------------------------


def test_digg_vector_opens_at_its_time(
    capsys: pytest.CaptureFixture[str], digg_vector: Path
) -> None:
    code, err = run(capsys, "xhe", "open", digg_vector, "--at", DIGG_AT)
    assert code == 0, err
    assert one_line(err).startswith("ACCEPTED envelope")


def test_digg_vector_chains_to_the_opentest_o2o_cas(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, digg_vector: Path
) -> None:
    names = ("testsithseidfunctioncav1.cer", "testsithseidrootcav2.cer")
    cas = [digg.spec_file(*O2O_CAS, name) for name in names]
    assert all(ca.read_bytes()[:1] == b"\x30" for ca in cas)  # DER, not PEM
    code, err = run(
        capsys, "xhe", "open", digg_vector, "--at", DIGG_AT, "--trust", cas[0], "--trust", cas[1]
    )
    assert code == 0, err
    assert one_line(err).startswith("ACCEPTED envelope")

    # Our test CA is not the issuer: the same vector does not chain there.
    code, err = run(capsys, "xhe", "open", digg_vector, "--at", DIGG_AT, *trust(pki))
    assert code == 1
    assert one_line(err).startswith("REJECTED SIG security:")


def test_digg_vector_today_has_an_expired_certificate(
    capsys: pytest.CaptureFixture[str], digg_vector: Path
) -> None:
    code, err = run(capsys, "xhe", "open", digg_vector)
    assert code == 1
    line = one_line(err)
    assert line.startswith("REJECTED SIG security:")
    assert "not valid" in line


# --- invalid messages ------------------------------------------------------------------


def _empty_label(tmp_path: Path) -> Path:
    root = etree.fromstring(msg.to_xml(make_message()))
    label = root.find(f"{{{MSG_NS}}}message/{{{MSG_NS}}}messageHeader/{{{MSG_NS}}}label")
    assert label is not None and label.text
    label.text = ""
    path = tmp_path / "empty-label.xml"
    path.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return path


@pytest.mark.parametrize("which", ["TF2.4.2", "empty-label"])
def test_seal_refuses_an_invalid_message(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    alice: Identity,
    bob: Identity,
    which: str,
) -> None:
    if which == "TF2.4.2":
        source = digg.spec_file(
            "message-v3", "sdk-meddelande-testdata-v3.1", "felhantering", "TF2.4.2.xml"
        )
    else:
        source = _empty_label(tmp_path)
    out = tmp_path / "out.xml"
    code, err = run(capsys, "xhe", "seal", source, *signer(alice), *encrypt_to(bob), "-o", out)
    assert code == 1
    line = one_line(err)
    assert line.startswith("INVALID BV invariant")
    assert ("senderID/root" if which == "TF2.4.2" else "messageHeader/label") in line
    assert not out.exists()


# --- kvittens --------------------------------------------------------------------------


@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "rejected"])
def test_kvittens_seal_then_open(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    pki: TestPKI,
    bob: Identity,
    mallory: Identity,
    accepted: bool,
) -> None:
    verdict = (
        ACCEPTED
        if accepted
        else Verdict(Outcome.REJECTED, Reason.SIG, Detail.SECURITY, "signature: digest", "NA")
    )
    refers_to = str(uuid.uuid4())
    kvittens = kv.Kvittens.answering(verdict, refers_to=refers_to, sender=ORG_B, receiver=ORG_A)
    source, sealed = tmp_path / "kvittens.xml", tmp_path / "kvittens-xhe.xml"
    source.write_bytes(
        etree.tostring(kv.to_element(kvittens), xml_declaration=True, encoding="UTF-8")
    )
    argv = ["kvittens", "seal", source, *signer(bob), "--handling-service-id", ADDRESS_A]
    code, err = run(capsys, *argv, "-o", sealed)
    assert code == 0, err

    code, err = run(capsys, "kvittens", "open", sealed, *trust(pki), *sender(bob))
    assert code == 0, err
    line = one_line(err)
    assert line.startswith("ACCEPTED kvittens:")
    assert line.endswith(kvittens.summary())
    assert refers_to in line
    assert ("REJECTED SIG security" in line) != accepted

    # Signed with a certificate the sender does not publish: kept, never answered.
    code, err = run(capsys, "kvittens", "open", sealed, *sender(mallory))
    assert code == 1
    assert one_line(err).startswith("NO-KVITTENS quarantine: invalid kvittens: REJECTED SIG")


@pytest.mark.parametrize(
    "name",
    digg.KVITTENS_EXAMPLES,
)
def test_kvittens_open_on_a_bare_digg_example(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, err = run(capsys, "kvittens", "open", digg.spec_file(*KVITTENS_EXAMPLES, name))
    assert code == 0, err
    line = one_line(err)
    assert line.startswith("VALID kvittens")
    assert " for ID-FROM-XHE-12354689" in line
    assert (": ACCEPTED for " in line) == ("_AP-" in name)
    assert (": REJECTED " in line) == ("_RE-" in name)


def test_kvittens_open_on_a_bare_kvittens_breaking_the_profile(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    example = digg.spec_file(*KVITTENS_EXAMPLES, "Kvittens_AP-Accepterat.xml").read_bytes()
    broken = tmp_path / "broken.xml"
    broken.write_bytes(example.replace(b">ACCEPTED<", b">MAYBE<"))
    code, err = run(capsys, "kvittens", "open", broken)
    assert code == 1
    assert one_line(err).startswith("INVALID kvittens BV invariant: R5-APP")


def test_kvittens_open_on_a_business_message(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, sealed: Path, alice: Identity
) -> None:
    code, err = run(capsys, "kvittens", "open", sealed, *trust(pki), *sender(alice))
    assert code == 1
    assert one_line(err).startswith("NOT A KVITTENS")


# --- usage errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param(case, expected, id=case)
        for case, expected in (
            ("missing-file", "missing.xml: No such file or directory"),
            ("missing-key", "missing.key.pem"),
            ("unknown-option", "unrecognized arguments: --no-such-option"),
            ("non-iso-at", "--at: not an ISO 8601 time: yesterday"),
        )
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    sealed: Path,
    bob: Identity,
    case: str,
    expected: str,
) -> None:
    argv: list[object] = ["xhe", "open", sealed]
    if case == "missing-file":
        argv = ["xhe", "open", tmp_path / "missing.xml"]
    elif case == "missing-key":
        argv += ["--decrypt-key", f"{tmp_path / 'missing.key.pem'},{bob.cert_pem}"]
    elif case == "unknown-option":
        argv += ["--no-such-option"]
    else:
        argv += ["--at", "yesterday"]
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.splitlines()[-1].startswith("sdk-bridge: error:")
    assert expected in err


# --- the installed command -------------------------------------------------------------


def test_installed_console_script(
    pki: TestPKI, sealed: Path, alice: Identity, bob: Identity, message: msg.BusinessMessage
) -> None:
    script = Path(sys.executable).parent / "sdk-bridge"
    assert script.is_file(), f"{script} not installed: pip install -e ."
    env = {k: v for k, v in os.environ.items() if k != cli.PASSPHRASE_ENV}
    proc = subprocess.run(
        [script, *strings("xhe", "open", sealed, *decrypt_with(bob), *trust(pki), *sender(alice))],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().strip() == "ACCEPTED"
    assert msg.parse(proc.stdout) == message  # the message, as bytes on stdout


def test_passphrase_is_ignored_for_keys_that_are_not_encrypted(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    message: msg.BusinessMessage,
    alice: Identity,
    bob: Identity,
) -> None:
    """One passphrase for the protected keys must not break the plain ones beside them."""
    monkeypatch.setenv(cli.PASSPHRASE_ENV, PASSPHRASE.decode())
    message_file = tmp_path / "message.xml"
    message_file.write_bytes(msg.to_xml(message))
    out = tmp_path / "sealed.xml"
    code, err = run(
        capsys, "xhe", "seal", message_file, *signer(alice), *encrypt_to(bob), "-o", out
    )
    assert code == 0, err
    code, err = run(capsys, "xhe", "open", out, "--decrypt-key", bob.p12, *decrypt_with(bob))
    assert code == 0, err


def test_unwritable_output_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sealed: Path, bob: Identity
) -> None:
    target = tmp_path / "no" / "such" / "dir" / "message.xml"
    code, err = run(capsys, "xhe", "open", sealed, *decrypt_with(bob), "-o", target)
    assert code == 2
    assert "No such file or directory" in err and "ACCEPTED" not in err


def test_kvittens_seal_refuses_an_id_that_is_not_a_uuid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bob: Identity
) -> None:
    """Digg's examples use cbc:ID KVT-1; the envelope ID must be a UUID (C3.2.2)."""
    example = digg.spec_file(*KVITTENS_EXAMPLES, "Kvittens_AP-Accepterat.xml")
    code, err = run(capsys, "kvittens", "seal", example, *signer(bob), "-o", tmp_path / "k.xml")
    assert code == 1
    assert one_line(err) == (
        "INVALID kvittens: the kvittens ID must be a UUID: it becomes the envelope's Header ID"
    )
    assert not (tmp_path / "k.xml").exists()


def test_unusable_encryption_certificate_and_log_level_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    message: msg.BusinessMessage,
    pki: TestPKI,
    alice: Identity,
) -> None:
    message_file = tmp_path / "message.xml"
    message_file.write_bytes(msg.to_xml(message))
    sign_only = pki.issue("sign-only.example.se", key_size=2048, key_usage="sign")
    code, err = run(capsys, "xhe", "seal", message_file, *signer(alice), *encrypt_to(sign_only))
    assert code == 2
    assert "not for key encipherment" in err
    code, err = run(capsys, "--log-level", "loud", "xhe", "open", message_file)
    assert code == 2
    assert "invalid choice: 'loud'" in err
    code, err = run(
        capsys,
        "--passphrase-file",
        tmp_path / "none",
        "xhe",
        "seal",
        message_file,
        "--sign-key",
        alice.p12,
        *encrypt_to(alice),
    )
    assert code == 2
    assert "cannot read the passphrase" in err


def test_the_callers_umask_comes_back_whatever_happens() -> None:
    """main() writes under umask 077; called in-process, it leaves the caller's as it was,
    also when argparse exits."""
    previous = os.umask(0o022)
    try:
        with pytest.raises(SystemExit):
            cli.main(["no-such-command"])
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(previous)


def test_run_names_the_sections_the_daemon_needs(
    tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration with keys only is good for `xhe` and `lookup`, not for the daemon."""
    config_file = write_config(tmp_path, pki, alice, bob)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "-c", str(config_file)])
    assert exit_.value.code == 2
    assert (
        "the daemon needs these sections: registry, access_point, smtp, spool,"
        " organisation.sdk_domain" in capsys.readouterr().err
    )
