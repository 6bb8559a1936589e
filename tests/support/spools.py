"""A mail's envelope and recipients as the spool keeps them, and retention at once."""

from datetime import timedelta

from sdk_bridge.spool import (
    Envelope,
    RecipientRecord,
    Retention,
)

ENVELOPE = Envelope(
    mail_from="anna@kommun.se",
    client="127.0.0.1:50000",
    helo="exchange.kommun.se",
    envid="ENV-1",
    ret="HDRS",
    mail_message_id="abc@kommun.se",
    sender_address="a.registrator",
)


RECIPIENTS = [
    RecipientRecord(
        "registrator@b.se.sdk.kommun.se", "0203:b.se", "b.registrator", None, ("SUCCESS", "FAILURE")
    ),
    RecipientRecord("ekonomi@c.se.sdk.kommun.se", "0203:c.se", "c.ekonomi"),
]


AT_ONCE = Retention(content=timedelta(0), held=timedelta(0), reports=timedelta(0))


NOTHING_YET = Retention(content=timedelta(hours=1), held=timedelta(days=1))
