"""Dynamic batching: requests that arrive within a few milliseconds share one forward pass."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ner_pipeline.serve.context import request_id_var

if TYPE_CHECKING:
    from ner_pipeline.serve.state import ModelHandle

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    texts: list[str]
    aggregation: str
    future: asyncio.Future[tuple[str, list[list[Any]]]]
    request_id: str = "-"


@dataclass
class MicroBatcher:
    """Collects requests for up to `wait_ms` (or `max_batch` texts) and runs them as one forward pass."""

    handle_ref: Callable[[], ModelHandle]
    max_batch: int
    wait_ms: float
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    batches: int = 0

    async def submit(self, texts: list[str], aggregation: str) -> tuple[str, list[list[Any]]]:
        """Queue texts and wait for their entities; returns the answering model's label and one list per text."""
        future: asyncio.Future[tuple[str, list[list[Any]]]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(texts, aggregation, future, request_id_var.get()))
        return await future

    async def run(self) -> None:
        """Serve the queue until cancelled."""
        while True:
            first = await self.queue.get()
            jobs = [first]
            size = len(first.texts)
            deadline = time.monotonic() + self.wait_ms / 1000
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
                jobs.append(job)
                size += len(job.texts)
            await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        handle = self.handle_ref()  # one model for the whole batch, even if a reload swaps it meanwhile
        by_aggregation: dict[str, list[_Job]] = {}
        for job in jobs:
            by_aggregation.setdefault(job.aggregation, []).append(job)
        for aggregation, group in by_aggregation.items():
            texts = [t for job in group for t in job.texts]
            # Log lines of a batch (ours and the predictor's, in its worker thread) name the requests it serves.
            request_id_var.set(",".join(dict.fromkeys(job.request_id for job in group)))
            logger.debug("batch of %d texts from %d requests on %s", len(texts), len(group), handle.label)
            try:
                results = await asyncio.to_thread(handle.predictor.predict, texts, aggregation=aggregation)
            except Exception as exc:  # answer every waiting request instead of hanging them
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            offset = 0
            for job in group:
                if not job.future.done():
                    job.future.set_result((handle.label, results[offset : offset + len(job.texts)]))
                offset += len(job.texts)
