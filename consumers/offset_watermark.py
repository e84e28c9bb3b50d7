"""What a consumer that finishes messages out of order may commit. Pure.

Push delivery finishes changes out of log order (patients in parallel lanes), but a Kafka offset
means "everything before this is done": per partition, only the offset after the longest run of
finished messages from the oldest one taken may be committed. A restart then replays at most
the messages taken but not yet all finished before them (at-least-once, as a crash always was).
"""
from __future__ import annotations

from collections import deque


class OffsetWatermark:
    def __init__(self) -> None:
        self._taken: dict[int, deque[int]] = {}       # partition -> offsets taken, oldest first
        self._finished: dict[int, set[int]] = {}      # partition -> offsets finished, not yet passed
        self._committable: dict[int, int] = {}        # partition -> next offset to read after a restart
        self._moved = False
        self.in_flight = 0

    def take(self, partition: int, offset: int) -> None:
        """A message taken from the log (offsets of one partition are taken in increasing order)."""
        self._taken.setdefault(partition, deque()).append(offset)
        self._finished.setdefault(partition, set())
        self.in_flight += 1

    def finish(self, partition: int, offset: int) -> None:
        """A message done with (delivered, filtered out or parked), in any order."""
        taken, finished = self._taken[partition], self._finished[partition]
        finished.add(offset)
        self.in_flight -= 1
        while taken and taken[0] in finished:
            finished.discard(taken[0])
            self._committable[partition] = taken.popleft() + 1
            self._moved = True

    def to_commit(self) -> dict[int, int]:
        """Partition -> offset to commit, if any moved since `committed` was last called; else {}."""
        return dict(self._committable) if self._moved else {}

    def committed(self, offsets: dict[int, int]) -> None:
        """`offsets` (from to_commit) are committed; anything finished since is still to commit."""
        self._moved = self._committable != offsets
