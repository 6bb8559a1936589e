"""The pause before trying again, one rule for every stage that retries."""

import random
from datetime import timedelta


def pause(failures: int, first: timedelta, longest: timedelta) -> timedelta:
    """After `failures` failed attempts (1 or more): `first`, doubling each time up to
    `longest`, give or take a fifth so that retries of many messages spread out."""
    doublings = min(max(failures - 1, 0), 20)  # the cap is reached long before: no overflow
    return min(first * 2**doublings, longest) * random.uniform(0.8, 1.2)
