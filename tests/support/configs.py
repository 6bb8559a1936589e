"""A small configuration file for organisation A."""

from pathlib import Path

from sdk_bridge.lab.testpki import PASSPHRASE, Identity, TestPKI


def write_config(tmp_path: Path, pki: TestPKI, alice: Identity, bob: Identity) -> Path:
    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    (tmp_path / "pass").chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""\
organisation:
  id: "0203:a.example.se"
keys:
  signing:
    key: {alice.p12}
    passphrase_file: pass
  decryption:
    - key: {alice.key_pem}
      cert: {alice.cert_pem}
    - key: {bob.key_pem_encrypted}
      cert: {bob.cert_pem}
      passphrase_file: pass
  trust_anchors:
    - {pki.chain_pem}
""",
        encoding="utf-8",
    )
    return path
