"""Dynamic batching in two lanes, a bounded queue, deadlines, and a supervisor that restarts a lane that dies.

What a batch is: the requests of the *batch lane* that arrived while the previous batch ran (or within
`serve.batch_wait_ms` of the first), up to `serve.max_batch_size` texts and `serve.max_batch_chars` characters,
handed to the predictor in one `predict` call per aggregation. The predictor cuts their texts into token windows
and packs the windows of all requests together, by length, into forward passes of at most the backend's token
budget (`Predictor.max_batch_tokens`), so coalesced requests share as few forward passes as that budget allows;
a batch of short sentences on onnx-int8 is therefore several small passes, not one.

A request larger than `serve.max_batch_chars` goes to the *large lane* and runs alone; both lanes' forward passes
take turns at the service's `PassGate`, so a small request waits at most one forward pass of a large one.

When a batch fails, each of its requests is run again alone: only the request that fails alone gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ner_pipeline.config import ServeConfig
from ner_pipeline.serve.context import request_id_var
from ner_pipeline.serve.gate import Abandoned, PassGate, abandoned_var

if TYPE_CHECKING:
    from ner_pipeline.serve.state import ModelHandle

logger = logging.getLogger(__name__)
Answer = tuple[str, list[list[Any]]]  # the answering model's label, and the entities of each text


class QueueFull(Exception):  # an answer (503), not a fault
    """More requests are waiting or running than `serve.max_queue` allows."""


class LaneDied(RuntimeError):
    """The lane that held the request failed (a bug, logged with its traceback); the request was not run."""


@dataclass
class _Job:
    texts: list[str]
    aggregation: str
    future: asyncio.Future[Answer]
    request_id: str = "-"

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.texts)


@dataclass
class Batcher:
    """Coalesces small requests into batches and runs large ones alone, pass by pass beside them."""

    handle_ref: Callable[[], ModelHandle]
    settings: ServeConfig
    gate: PassGate = field(default_factory=PassGate)
    restart_delay: float = 1.0  # seconds a dead lane stays down before its restart (a crash loop logs slowly)
    small: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    large: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    running: dict[str, bool] = field(default_factory=lambda: {"batch": False, "large": False})
    pending: int = 0  # requests submitted and not answered yet
    batches: int = 0  # predict calls that succeeded
    retried: int = 0  # batches that failed and were run again request by request
    restarts: int = 0

    @property
    def alive(self) -> bool:
        """Both lanes are running."""
        return all(self.running.values())

    async def submit(self, texts: list[str], aggregation: str) -> Answer:
        """Queue texts and wait for their entities.

        Raises:
            QueueFull: `serve.max_queue` requests are already waiting or running.
            TimeoutError: no answer within `serve.request_timeout_s` (the work left is then skipped).
        """
        if self.pending >= self.settings.max_queue:
            raise QueueFull(f"{self.pending} requests waiting or running; the limit is {self.settings.max_queue}")
        job = _Job(texts, aggregation, asyncio.get_running_loop().create_future(), request_id_var.get())
        self.pending += 1
        try:
            (self.small if job.chars <= self.settings.max_batch_chars else self.large).put_nowait(job)
            # On timeout wait_for cancels the future: the lanes skip it, and its batch stops at its next pass.
            return await asyncio.wait_for(job.future, self.settings.request_timeout_s)
        finally:
            self.pending -= 1

    async def run(self) -> None:
        """Run both lanes until cancelled, restarting a lane that dies."""
        await asyncio.gather(self._supervise("batch", self.small, True), self._supervise("large", self.large, False))

    async def _supervise(self, name: str, queue: asyncio.Queue[_Job], coalesce: bool) -> None:
        request_id_var.set(f"lane-{name}")  # this task's own context: its log lines are not any request's
        try:
            while True:
                self.running[name] = True
                try:
                    await self._lane(queue, coalesce)
                except Exception:
                    self.running[name] = False  # `/ready` answers 503 until the lane runs again
                    self.restarts += 1
                    logger.exception("the %s lane died; restarting it in %.1f s", name, self.restart_delay)
                    await asyncio.sleep(self.restart_delay)
                    logger.info("the %s lane restarted", name)
        finally:
            self.running[name] = False

    async def _lane(self, queue: asyncio.Queue[_Job], coalesce: bool) -> None:
        held: list[_Job] = []  # taken off the queue and not answered: failed if the lane dies with them
        carry: _Job | None = None  # a request that did not fit the last batch: it opens the next one
        try:
            while True:
                held = [carry or await queue.get()]
                carry = None
                if coalesce:
                    carry = await self._coalesce(queue, held)
                    if carry is not None:
                        held.append(carry)  # held, so a dying lane answers it too
                await self._serve([job for job in held if job is not carry])
                held = [carry] if carry is not None else []
        finally:
            for job in held:
                if isinstance(job, _Job) and not job.future.done():
                    job.future.set_exception(LaneDied("the batching lane failed while holding this request"))

    async def _coalesce(self, queue: asyncio.Queue[_Job], jobs: list[_Job]) -> _Job | None:
        """Add to `jobs` what arrives within the wait and fits the batch; returns the first request that did not."""
        texts, chars = len(jobs[0].texts), jobs[0].chars
        if texts >= self.settings.max_batch_size or chars >= self.settings.max_batch_chars:
            return None  # full already: waiting for more would only delay it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.batch_wait_ms / 1000
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    return None
            if (
                texts + len(job.texts) > self.settings.max_batch_size
                or chars + job.chars > self.settings.max_batch_chars
            ):
                return job
            jobs.append(job)
            texts, chars = texts + len(job.texts), chars + job.chars

    async def _serve(self, jobs: list[_Job]) -> None:
        """Answer `jobs` (one batch), each with its own entities, or with its own error if it fails alone."""
        waiting = [job for job in jobs if not job.future.done()]  # a request past its deadline is skipped
        if not waiting:
            return
        handle = self.handle_ref()  # one model for the whole batch, even if a reload swaps it meanwhile
        by_aggregation: dict[str, list[_Job]] = {}
        for job in waiting:
            by_aggregation.setdefault(job.aggregation, []).append(job)
        for aggregation, group in by_aggregation.items():
            try:
                results = await self._predict(handle, group, aggregation)
            except Abandoned:  # every request of the batch is past its deadline: nobody to answer
                continue
            except Exception as exc:
                if len(group) == 1:
                    _answer(group[0], exc)
                    continue
                self.retried += 1
                logger.warning("a batch of %d requests failed (%r); running each alone", len(group), exc)
                for job in group:
                    await self._serve_alone(handle, job, aggregation)
                continue
            offset = 0
            for job in group:
                _answer(job, (handle.label, results[offset : offset + len(job.texts)]))
                offset += len(job.texts)

    async def _serve_alone(self, handle: ModelHandle, job: _Job, aggregation: str) -> None:
        if job.future.done():
            return
        try:
            results = await self._predict(handle, [job], aggregation)
        except Exception as exc:
            _answer(job, exc)
        else:
            _answer(job, (handle.label, results))

    async def _predict(self, handle: ModelHandle, jobs: list[_Job], aggregation: str) -> list[list[Any]]:
        texts = [t for job in jobs for t in job.texts]
        # Log lines of a batch (ours and the predictor's, in its worker thread) name the requests it serves.
        ids = request_id_var.set(",".join(dict.fromkeys(job.request_id for job in jobs)))
        abandoned = abandoned_var.set(lambda: all(job.future.done() for job in jobs))
        logger.debug("batch of %d texts from %d requests on %s", len(texts), len(jobs), handle.label)
        try:
            results = await asyncio.to_thread(handle.predictor.predict, texts, aggregation=aggregation)
        finally:
            abandoned_var.reset(abandoned)
            request_id_var.reset(ids)
        self.batches += 1
        return results


def _answer(job: _Job, outcome: Answer | BaseException) -> None:
    if job.future.done():  # past its deadline: nobody waits for it
        return
    if isinstance(outcome, Abandoned):
        outcome = TimeoutError("the request's deadline passed")
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
