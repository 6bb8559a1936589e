"""Room on the spool's disk. Nothing is taken from the access point while the disk has less
than the largest envelope and as much again for the mail it becomes: the access point keeps
it meanwhile, and /readyz says why."""

from ..sdk.sealing import MAX_ENVELOPE_BYTES
from . import Spool

MIN_FREE_BYTES = 2 * MAX_ENVELOPE_BYTES


def room_needed(total: int) -> int:
    """Free bytes a disk of `total` bytes must keep for the intake to take more:
    `MIN_FREE_BYTES`, or a quarter of a disk too small for that (a test's tmpfs)."""
    return min(MIN_FREE_BYTES, total // 4)


def room_wanted(spool: Spool) -> int | None:
    """The room the intake waits for while the spool's disk has less; None while there is
    room, or where the spool cannot tell."""
    disk = spool.disk()
    if disk is None:
        return None
    free, total = disk
    return room_needed(total) if free < room_needed(total) else None
