"""A reader of the change feed passes each version of a person's record on once, and never an
older version after a newer one, whatever copies a replayed batch added to the feed."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumers.repeated_changes import RepeatedChanges


@st.composite
def feeds_with_copies(draw):
    """A feed of several persons' versions (each person's in order), with copies of earlier changes
    put back in after them, as a replayed batch's outputs follow their originals."""
    picks = draw(st.lists(st.sampled_from(["p0", "p1", "p2", "p3"]), min_size=1, max_size=15))
    # (person, that person's next version, when it was made)
    feed = [(person, picks[:n + 1].count(person), 1000 + n) for n, person in enumerate(picks)]
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(feed) - 1))
        feed.insert(at + 1, feed[draw(st.integers(0, at))])
    return feed


@given(feeds_with_copies())
def test_each_version_passes_once_and_in_order(feed):
    repeats = RepeatedChanges()
    passed = [change for change in feed if not repeats.is_repeat(*change)]
    assert sorted(set(passed)) == sorted(set(feed)), "every version passes"
    assert len(passed) == len(set(passed)), "once"
    for person in {p for p, _, _ in feed}:
        versions = [v for p, v, _ in passed if p == person]
        assert versions == sorted(versions)


def test_an_older_version_after_a_newer_one_is_held_back():
    repeats = RepeatedChanges()
    made = {1: 10, 2: 20, 3: 30, 4: 40}
    assert [repeats.is_repeat("p", v, made[v]) for v in (1, 3, 2, 3, 1, 4)] == [False, False, True, True, True, False]


def test_only_the_most_recent_persons_are_remembered_and_forget_starts_afresh():
    repeats = RepeatedChanges(capacity=2)
    for person in ("a", "b", "c"):
        assert not repeats.is_repeat(person, 1, 10)
    assert not repeats.is_repeat("a", 1, 10), "a, the least recent, was let go: at least once"
    assert repeats.is_repeat("c", 1, 10)
    repeats.forget()
    assert not repeats.is_repeat("c", 1, 10)


def test_after_an_index_rebuild_a_persons_versions_pass_again_from_one():
    """`carebus rebuild-index` replays the log into an empty index: a person's records come again
    from version 1, and subscribers receive them (README, rebuilding the index)."""
    repeats = RepeatedChanges()
    assert [repeats.is_repeat("p", v, 10 * v) for v in (1, 2, 3)] == [False, False, False]
    assert repeats.is_repeat("p", 1, 10), "the first history's version 1 again: a replayed copy"
    rebuilt = [repeats.is_repeat("p", v, 100 + 10 * v) for v in (1, 1, 2, 2, 3, 4)]
    assert rebuilt == [False, True, False, True, False, False]
