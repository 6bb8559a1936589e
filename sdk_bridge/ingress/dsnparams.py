"""RFC 3461 DSN parameters on MAIL (RET, ENVID) and RCPT (NOTIFY, ORCPT).

aiosmtpd answers 555 to parameters it does not know, so the bridge takes these off the
command line before aiosmtpd parses it, checks them, and keeps them with the message.
"""

import re

MAIL_PARAMS = ("RET", "ENVID")
RCPT_PARAMS = ("NOTIFY", "ORCPT")
NOTIFY_VALUES = {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
_XTEXT = re.compile(r"\+([0-9A-F]{2})")


class ParameterError(ValueError):
    """Reported as `501 5.5.4` with this text."""


def xtext_decode(text: str) -> str:
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), text)


def take(arg: str, names: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """Split `FROM:<a@b> SIZE=1 RET=HDRS` into (`FROM:<a@b> SIZE=1`, {"RET": "HDRS"})."""
    address_end = arg.find(">") + 1 if ">" in arg else len(arg.split(" ", 1)[0])
    address, rest = arg[:address_end], arg[address_end:]
    kept, taken = [], {}
    for token in rest.split():
        key, _, value = token.partition("=")
        if key.upper() in names:
            if key.upper() in taken:
                raise ParameterError(f"{key.upper()} given twice")
            taken[key.upper()] = value
        else:
            kept.append(token)
    return " ".join([address, *kept]), _checked(taken)


def _checked(params: dict[str, str]) -> dict[str, str]:
    if "RET" in params:
        params["RET"] = params["RET"].upper()
        if params["RET"] not in ("FULL", "HDRS"):
            raise ParameterError("RET must be FULL or HDRS")
    if "ENVID" in params:
        if not params["ENVID"] or len(params["ENVID"]) > 100:
            raise ParameterError("ENVID must be 1 to 100 characters")
        params["ENVID"] = xtext_decode(params["ENVID"])
    if "NOTIFY" in params:
        values = params["NOTIFY"].upper().split(",")
        if not set(values) <= NOTIFY_VALUES or ("NEVER" in values and len(values) > 1):
            raise ParameterError("NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY")
        params["NOTIFY"] = ",".join(values)
    if "ORCPT" in params:
        kind, _, address = params["ORCPT"].partition(";")
        if not kind or not address:
            raise ParameterError("ORCPT must be addr-type;address")
        params["ORCPT"] = f"{kind.lower()};{xtext_decode(address)}"
    return params
