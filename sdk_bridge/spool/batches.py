"""Taking work in batches bounded by size as well as count."""

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def first_within(sized: Iterable[tuple[T, int]], max_bytes: int) -> list[T]:
    """The leading items whose sizes add up to at most `max_bytes`, and always the first:
    one item larger than the bound is still taken, alone."""
    taken: list[T] = []
    total = 0
    for item, size in sized:
        if taken and total + size > max_bytes:
            break
        taken.append(item)
        total += size
    return taken
