"""What the bridge lends its plugins beside their interface, so that a plugin imports
nothing but `sdk_bridge.plugin`: the rest of the bridge may change shape without breaking one.

Durable files for a mailbox that writes them (`runtime.files`), secrets read from files
(`sdk.keys`), and what an access point connector needs of SDK: its names, the largest
envelope, and hardened XML parsing (`sdk.xmlsafe`).
"""

from ..runtime.files import move_durably, sync_directory
from ..sdk.keys import KeyError_, read_passphrase
from ..sdk.names import KVITTENS_ACTION, PARTY_SCHEME, PROCESS_ID, PROCESS_ID_SCHEME
from ..sdk.sealing import MAX_ENVELOPE_BYTES
from ..sdk.xmlsafe import Apart, UnsafeXML, decode_base64, parse, parse_apart, parse_beginning

__all__ = [
    "KVITTENS_ACTION",
    "MAX_ENVELOPE_BYTES",
    "PARTY_SCHEME",
    "PROCESS_ID",
    "PROCESS_ID_SCHEME",
    "Apart",
    "KeyError_",
    "UnsafeXML",
    "decode_base64",
    "move_durably",
    "parse",
    "parse_apart",
    "parse_beginning",
    "read_passphrase",
    "sync_directory",
]
