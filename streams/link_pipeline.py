"""Batches in flight: one's Redis ingest runs while Python works on the batches before it.

A link worker alone would leave a core idle most of the time: its Python waits while Redis runs
a batch's ingest script (a third of a batch's time on a million-record index), and Redis waits
while the Python decides, builds records and encodes them. So each step of the worker does, in
this order:
  1. prepare batch N+2: decode, fold, send its ingest script on a connection of its own;
  2. publish batch N: encode its outputs, produce them, wait for Kafka (Python and the broker);
  3. link batch N+1: read its candidates, decide, write states and links, rebuild its records.
Redis runs N+2's ingest during 2 and the deciding part of 3; the writes of 3 then find it free.
Measured at a million records: with step 2 after step 3, as before, the first write of 3 waited
for the ingest some 39 us per event.

Why it is safe: batch N+2's ingest running before batch N+1's apply is what happens between two
workers on different partitions (identity_graph: a decision skipped because the other record
moved is made again by whoever moved it), and two such workers reach the same people as one. What
two workers never see is one source record in two batches at once, so a batch that shares a
source key with the one ahead of it, or carries merges or review decisions (which reach records
beyond its own), waits until everything in flight is finished. Publishing N after N+1 is linked
changes no Redis state N+1 reads except the marks saying N's records were published, and those
are written first thing in N+1's writes (LinkStage.publish, settle). Offsets are committed by
the caller for published batches only: a crash replays every batch in flight, idempotently, as
it would one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from streams.link_stage import BatchStats, InboundMessage, LinkedBatch, LinkStage, PreparedBatch

Finished = list[tuple[Sequence[InboundMessage], BatchStats]]


@dataclass(eq=False)
class PipelineInterrupted(Exception):
    """A step failed. `finished`: batches done before it (commit them); `unfinished`: batches to
    process again, one at a time (link_worker.process_with_retry), in this order."""
    cause: BaseException
    finished: Finished = field(default_factory=list)
    unfinished: list[Sequence[InboundMessage]] = field(default_factory=list)

    def __str__(self) -> str:
        # The kind of failure only: an error's text can carry a source key or a value.
        return type(self.cause).__name__


class LinkPipeline:
    def __init__(self, stage: LinkStage, overlap_from: int = 1) -> None:
        """`overlap_from`: the least batch size kept in flight. Smaller batches are processed
        start to finish at once: they come when traffic is light, when overlapping them would
        only make more, smaller batches (each with its fixed cost: commit, flush, round trips)."""
        self.stage = stage
        self.overlap_from = overlap_from
        self.ahead: PreparedBatch | None = None      # prepared, its ingest under way, not linked
        self.linked: LinkedBatch | None = None       # linked, its outputs not yet published

    @property
    def in_flight(self) -> bool:
        return self.ahead is not None or self.linked is not None

    def step(self, messages: Sequence[InboundMessage]) -> Finished:
        """Take the next batch (empty: nothing new, so finish what is in flight). Returns the
        batches published by this step, oldest first."""
        finished: Finished = []
        new_done = False
        try:
            batch = self.stage.decode(messages) if messages else None
            small = batch is not None and len(messages) < self.overlap_from
            if self.ahead is not None and (batch is None or small or batch.exclusive or self.ahead.batch.exclusive
                                           or not batch.keys.isdisjoint(self.ahead.batch.keys)):
                self._publish_linked(finished)
                self._link_ahead()
            if batch is None or small:
                self._publish_linked(finished)
                if batch is not None:
                    finished.append((messages, self.stage.finish(self.stage.prepare(batch))))
                    new_done = True
            else:
                prepared = self.stage.prepare(batch)
                # While Redis runs the new batch's ingest: publish (no Redis call), then link, whose
                # deciding needs only Redis's earlier answer.
                self._publish_linked(finished, settle=False)
                if self.ahead is not None:
                    self._link_ahead()
                self.ahead = prepared
        except Exception as exc:  # noqa: BLE001 - handed back with what is left to do
            # The new batch becomes `ahead` only at the very end: on any failure it is unfinished,
            # and so is every batch still in flight, oldest first.
            unfinished = [self.linked.messages] if self.linked is not None else []
            if self.ahead is not None:
                unfinished.append(self.ahead.batch.messages)
            if messages and not new_done:
                unfinished.append(messages)
            self.abandon()
            raise PipelineInterrupted(exc, finished, unfinished) from exc
        return finished

    def drain(self) -> Finished:
        return self.step(())

    def abandon(self) -> None:
        """Forget the batches in flight (their partitions were taken away, or a step failed):
        their offsets were never committed, so they are consumed again, by this worker or another
        (a batch linked and not published has its records written and not marked as published: its
        replay publishes them)."""
        self.ahead = None
        self.linked = None
        self.stage.graph.abandon_ingests()

    def _publish_linked(self, finished: Finished, settle: bool = True) -> None:
        if self.linked is not None:
            stats = self.stage.publish(self.linked, settle)
            finished.append((self.linked.messages, stats))
            self.linked = None

    def _link_ahead(self) -> None:
        assert self.ahead is not None
        self.linked = self.stage.link(self.ahead)
        self.ahead = None
