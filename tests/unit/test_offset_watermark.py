"""What push delivery may commit when patients' changes finish out of log order."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from consumers.offset_watermark import OffsetWatermark

# Per partition, offsets taken in increasing order (gaps: compacted or filtered away), then
# finished in any order; partitions interleaved.
_taken = st.dictionaries(st.integers(0, 3), st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True)
                         .map(sorted), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_taken, st.randoms(use_true_random=False))
def test_the_commit_never_passes_an_unfinished_change_and_reaches_every_finished_run(taken, rnd):
    mark = OffsetWatermark()
    messages = [(p, o) for p, offsets in taken.items() for o in offsets]
    for p, o in messages:
        mark.take(p, o)
    order = list(messages)
    rnd.shuffle(order)
    finished: set[tuple[int, int]] = set()
    for p, o in order:
        mark.finish(p, o)
        finished.add((p, o))
        committed = mark.to_commit()
        for part, offsets in taken.items():
            done_run = 0
            for x in offsets:          # the longest finished run from the oldest
                if (part, x) not in finished:
                    break
                done_run = x + 1
            if done_run:
                assert committed.get(part, done_run) == done_run
                if committed:
                    assert committed[part] == done_run
            else:
                assert part not in committed
        if committed:
            mark.committed(committed)
    assert mark.in_flight == 0
    assert mark.to_commit() == {}      # all committed, nothing moved since


def test_what_finishes_during_a_commit_is_still_to_commit():
    mark = OffsetWatermark()
    for o in (5, 6, 7):
        mark.take(0, o)
    mark.finish(0, 5)
    offsets = mark.to_commit()
    assert offsets == {0: 6}
    mark.finish(0, 6)                   # while the commit of 6 was under way
    mark.committed(offsets)
    assert mark.to_commit() == {0: 7}
    mark.finish(0, 7)
    assert mark.to_commit() == {0: 8} and mark.in_flight == 0
