"""The attack catalogue's count: tests marked `hostile(category)` count as cases tried, and
handled when they pass; the run's summary shows them."""

import collections

HOSTILE_CASES: collections.defaultdict[str, collections.Counter[str]] = collections.defaultdict(
    collections.Counter
)
