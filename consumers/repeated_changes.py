"""Which record changes a reader of the change feed has already passed on, so it passes each on once.

The change feed can hold a change twice: a link worker that stops (or loses its partitions) after
Kafka stored a batch's outputs and before it could say so publishes them again when the batch is
replayed, under the same event ids and versions. Two workers can also publish versions of one
person out of order (v5 stored before v4). A subscriber would get the repeat, or an older record
after a newer one. A version at or below one already passed on for that person says nothing new:
each change carries the whole record, and versions of a person only grow.

Only the most recent `capacity` persons are remembered (about 18 MB at 100,000): a replay's
repeats follow their first copies within seconds, or after a crashed link worker's session
timeout (10 s), and 100,000 persons is 100 s of changes at 1,000 a second. Pure: no I/O. A
reader that starts again from its committed offset starts with an empty memory, so what it had
not finished is passed on again (at least once).
"""
from __future__ import annotations

from collections import OrderedDict

CAPACITY = 100_000


class RepeatedChanges:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._newest: OrderedDict[str, tuple[int, int]] = OrderedDict()    # person: (version, changed_at)

    def is_repeat(self, person_id: str, version: int, changed_at: int) -> bool:
        """True if this version of the person's record is at or below one passed on already; if
        not, it is remembered as passed on."""
        newest = self._newest.get(person_id)
        if newest is not None and version <= newest[0] and not (version == 1 and changed_at > newest[1]):
            return True
        # A version 1 made after the newest one passed on is the person's history begun again:
        # `carebus rebuild-index` replays the log into an empty index, and subscribers receive
        # records from version 1. A replayed copy keeps its first version's time.
        self._newest[person_id] = (version, changed_at)
        self._newest.move_to_end(person_id)
        if len(self._newest) > self.capacity:
            self._newest.popitem(last=False)
        return False

    def forget(self) -> None:
        self._newest.clear()
