"""IMAP's modified UTF-7 for mailbox names (RFC 3501 §5.1.3).

IMAP servers, and Dovecot's Maildir++ folder directories, name mailboxes in this
encoding, so "Ärenden" must be written "&AMQ-renden" for Outlook to show it as "Ärenden".
"""

import base64


def encode(name: str) -> str:
    """`name` in modified UTF-7: printable ASCII as itself ("&" as "&-"), every other run
    of characters as "&" + modified base64 of its UTF-16BE + "-"."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            wide = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(wide).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)
