"""What a spool back end raises for the stages to act on, whichever back end it is."""

import sqlite3


class SpoolUnavailable(Exception):
    """The store cannot be reached or written now (a database down, a disk full): what a
    back end raises for it, so that the stages wait and try again instead of failing."""


class SpoolFull(SpoolUnavailable):
    """No room in the store (its disk or quota): SMTP answers 452 4.3.1 for it."""


class DuplicateMessage(Exception):
    """The inbox already holds a message with this SDK messageId: a copy of it was judged
    at the same moment (by this instance or another). Nothing was recorded."""


class ContentRemoved(LookupError):
    """The mail's content is gone: its retention ran out after it settled. Its record
    (ids, addresses, states) is still there."""


# What the stages treat as "the spool cannot do it now": the SQLite default's own errors,
# and what any other back end raises.
STORAGE_ERRORS = (OSError, sqlite3.Error, SpoolUnavailable)
