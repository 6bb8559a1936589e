"""SIGHUP: a good configuration takes effect for new commands without dropping an open
SMTP session; a broken one is refused with its reason logged, and the old one stays."""

import signal
import smtplib
import ssl
import time
from pathlib import Path

import yaml
from cryptography import x509
from support.daemon import FROM, TO_B, mail, on_any_port

from sdk_bridge.lab.launch import BridgeProcess
from sdk_bridge.lab.sandbox.federation import Sandbox


def wait_for_log(log: Path, text: str, count: int = 1, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while log.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log.read_text()[-2000:]}"
        time.sleep(0.1)


def test_sighup_reloads_or_refuses(sandbox: Sandbox, tmp_path: Path) -> None:
    settings = on_any_port(sandbox.config_path("a"))
    config_file = sandbox.directory / "org-a-reload.yaml"
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    log = tmp_path / "bridge.log"
    bridge = BridgeProcess(config_file, log)
    bridge.start()
    process = bridge.process
    assert process is not None
    try:
        port = bridge.smtp_port
        open_session = smtplib.SMTP("127.0.0.1", port, timeout=30)
        open_session.ehlo()

        # 1. Loopback no longer allowed to relay: new commands see it, the session stays.
        settings["smtp"]["allowed_networks"] = ["10.0.0.0/8"]
        settings["smtp"]["listen"] = [f"127.0.0.1:{port + 1}"]  # takes a restart
        config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
        process.send_signal(signal.SIGHUP)
        wait_for_log(log, "configuration reloaded")
        assert "smtp.listen" in log.read_text()  # named as needing a restart
        assert open_session.noop()[0] == 250
        assert open_session.docmd(f"MAIL FROM:<{FROM}>")[0] == 250
        refused = open_session.docmd(f"RCPT TO:<{TO_B}>")
        assert refused[0] == 554 and b"5.7.1" in refused[1]  # relay control is at RCPT
        open_session.quit()

        # 2. A broken file is refused; the configuration that runs stays.
        config_file.write_text("smtp: [this is not: valid")
        process.send_signal(signal.SIGHUP)
        wait_for_log(log, "reload refused")
        assert "not valid YAML" in log.read_text()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.docmd(f"MAIL FROM:<{FROM}>")
            assert smtp.docmd(f"RCPT TO:<{TO_B}>")[0] == 554

        # 3. Back to loopback: mail flows again.
        settings["smtp"]["allowed_networks"] = ["127.0.0.1/32"]
        config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
        process.send_signal(signal.SIGHUP)
        wait_for_log(log, "configuration reloaded", count=2)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            assert smtp.send_message(mail("Efter omläsning"), FROM, [TO_B]) == {}
        assert bridge.stop() == 0
    finally:
        bridge.close()


def test_sighup_takes_a_new_tls_certificate(sandbox: Sandbox, tmp_path: Path) -> None:
    """A renewed certificate, put in place of the old files, is served after SIGHUP."""
    first = sandbox.tls_pki.issue("smtp-first", key_usage="sign", hosts=["127.0.0.1"])
    second = sandbox.tls_pki.issue("smtp-second", key_usage="sign", hosts=["127.0.0.1"])
    cert, key = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert.write_bytes(first.cert_pem.read_bytes())
    key.write_bytes(first.key_pem.read_bytes())
    settings = on_any_port(sandbox.config_path("a"))
    settings["smtp"].update(tls_cert=str(cert), tls_key=str(key))
    config_file = sandbox.directory / "org-a-tls.yaml"
    config_file.write_text(yaml.safe_dump(settings, allow_unicode=True))
    trust = ssl.create_default_context(cafile=str(sandbox.tls_pki.chain_pem))

    def served_serial() -> int:
        with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as smtp:
            smtp.starttls(context=trust)
            assert isinstance(smtp.sock, ssl.SSLSocket)
            der = smtp.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    log = tmp_path / "bridge.log"
    bridge = BridgeProcess(config_file, log)
    bridge.start()
    process = bridge.process
    assert process is not None
    try:
        assert served_serial() == first.cert.serial_number
        cert.write_bytes(second.cert_pem.read_bytes())
        key.write_bytes(second.key_pem.read_bytes())
        process.send_signal(signal.SIGHUP)
        wait_for_log(log, "configuration reloaded")
        assert served_serial() == second.cert.serial_number
        assert bridge.stop() == 0
    finally:
        bridge.close()
