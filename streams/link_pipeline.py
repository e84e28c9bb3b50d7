"""Two batches in flight: one's Redis ingest runs while the batch before it is finished.

A link worker alone would leave a core idle most of the time: its Python waits while Redis runs
a batch's ingest script (a third of a batch's time on a million-record index), and Redis waits
while the Python decides, builds records and encodes them. So the worker prepares batch N+1
(decode, fold, start the ingest on a connection of its own) before it finishes batch N (read
N's candidates, decide, apply, rebuild, publish): Redis works on N+1 while Python decides N.

Why it is safe: batch N+1's ingest running before batch N's apply is what happens between two
workers on different partitions (identity_graph: a decision skipped because the other record
moved is made again by whoever moved it), and two such workers reach the same people as one. What
two workers never see is one source record in two batches at once, so a batch that shares a
source key with the one in flight, or carries merges or review decisions (which reach records
beyond its own), waits until the one in flight is finished. Offsets are committed by the caller
for finished batches only: a crash replays both batches, idempotently, as it would one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from streams.link_stage import BatchStats, InboundMessage, LinkStage, PreparedBatch

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
        self.ahead: PreparedBatch | None = None      # prepared, its ingest under way, not finished

    def step(self, messages: Sequence[InboundMessage]) -> Finished:
        """Take the next batch (empty: nothing new, so finish the one in flight). Returns the
        batches finished by this step, oldest first."""
        finished: Finished = []
        try:
            batch = self.stage.decode(messages) if messages else None
            small = batch is not None and len(messages) < self.overlap_from
            if self.ahead is not None and (batch is None or small or batch.exclusive or self.ahead.batch.exclusive
                                           or not batch.keys.isdisjoint(self.ahead.batch.keys)):
                finished.append(self._finish_ahead())
            if small:
                finished.append((messages, self.stage.finish(self.stage.prepare(batch))))
            elif batch is not None:
                prepared = self.stage.prepare(batch)
                if self.ahead is not None:
                    finished.append(self._finish_ahead())
                self.ahead = prepared
        except Exception as exc:  # noqa: BLE001 - handed back with what is left to do
            # The new batch becomes `ahead` only at the very end: on any failure it is unfinished,
            # and so is the batch in flight if it is still there.
            unfinished = [self.ahead.batch.messages] if self.ahead is not None else []
            if messages:
                unfinished.append(messages)
            self.abandon()
            raise PipelineInterrupted(exc, finished, unfinished) from exc
        return finished

    def drain(self) -> Finished:
        return self.step(())

    def abandon(self) -> None:
        """Forget the batch in flight (its partitions were taken away, or a step failed): its
        offsets were never committed, so it is consumed again, by this worker or another."""
        self.ahead = None
        self.stage.graph.abandon_ingests()

    def _finish_ahead(self) -> tuple[Sequence[InboundMessage], BatchStats]:
        prepared, self.ahead = self.ahead, None
        assert prepared is not None
        try:
            return prepared.batch.messages, self.stage.finish(prepared)
        except BaseException:
            self.ahead = prepared      # still to do: the caller's handler hands it back
            raise
