"""What the service holds between requests: the model (loaded in the background), its reload, the alias poller."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from ner_pipeline.config import ServeConfig
from ner_pipeline.errors import NerPipelineError
from ner_pipeline.serve.batcher import Batcher
from ner_pipeline.serve.context import request_id_var
from ner_pipeline.serve.gate import PassGate
from ner_pipeline.serve.schemas import ModelInfo

logger = logging.getLogger(__name__)


@dataclass
class ModelHandle:
    """A loaded predictor and what the service reports about it."""

    predictor: Any  # ner_pipeline.predict.Predictor: predict(texts, aggregation=...) -> list[list[Entity]]
    info: ModelInfo
    workdir: Path | None = None  # the download of a registry model, ours to delete

    @property
    def label(self) -> str:
        return f"{self.info.name}/{self.info.version}" if self.info.version else self.info.name

    def close(self) -> None:
        """Delete the downloaded files; the loaded model stays usable (it is in memory)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@dataclass
class ServiceState:
    """What the app holds between requests."""

    settings: ServeConfig
    loader: Callable[[], ModelHandle]
    current_version: Callable[[], str | None] | None = None
    handle: ModelHandle | None = None
    batcher: Batcher | None = None
    gate: PassGate = field(default_factory=PassGate)  # shared by every model served, so reloads take turns too
    load_failure: str | None = None  # why the model cannot be served (an error retrying will not fix)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reloads: int = 0

    def require_handle(self) -> ModelHandle:
        """The model being served; 503 until it is loaded."""
        if self.handle is None:
            raise HTTPException(
                503, "model failed to load (see the service log)" if self.load_failure else "model not loaded yet"
            )
        return self.handle

    def require_batcher(self) -> Batcher:
        """The batcher, when the model is loaded and both its lanes run; 503 otherwise."""
        self.require_handle()
        if self.batcher is None or not self.batcher.alive:
            raise HTTPException(503, "the batching loop is restarting")
        return self.batcher

    def install(self, handle: ModelHandle) -> ModelHandle | None:
        """Serve `handle` from now on (its forward passes taking turns at the gate); returns the one it replaces."""
        self.gate.wrap(handle.predictor)
        old, self.handle = self.handle, handle
        return old

    async def load(self, first_retry_s: float = 1.0, max_retry_s: float = 60.0) -> None:
        """Load the model in a worker thread, trying again (with backoff) while the failure may pass."""
        request_id_var.set("load")
        delay = first_retry_s
        while True:
            try:
                handle = await asyncio.to_thread(self.loader)
            except NerPipelineError as exc:
                if not exc.transient:  # a missing folder or alias does not appear by waiting
                    self.load_failure = str(exc)
                    logger.error("cannot serve the model: %s", exc)
                    return
                logger.warning("loading the model failed (%s); trying again in %.0f s", exc, delay)
            except Exception:
                logger.exception("loading the model failed; trying again in %.0f s", delay)
            else:
                self.install(handle)
                logger.info("serving %s on backend %s", handle.label, handle.info.backend)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry_s)

    async def reload(self) -> ModelHandle:
        """Load the model again (e.g. after `production` moved) and swap it in once it is ready."""
        async with self.reload_lock:
            fresh = await asyncio.to_thread(self.loader)
            old = self.install(fresh)
            self.reloads += 1
            logger.info("model reloaded: %s -> %s", old.label if old else "-", fresh.label)
            if old is not None:
                old.close()  # batches still running on it have it in memory
            return fresh

    async def poll(self, every: float) -> None:
        """Reload when the alias points at another version than the one served."""
        request_id_var.set("poll")  # this task's own context: its log lines are not any request's
        while True:
            await asyncio.sleep(every)
            if self.current_version is None or self.handle is None:
                continue
            try:
                latest = await asyncio.to_thread(self.current_version)
            except Exception as exc:  # a registry hiccup must not kill the poller
                logger.warning("alias poll failed: %s", exc)
                continue
            if latest is not None and latest != self.handle.info.version:
                try:
                    await self.reload()
                except Exception:  # keep serving the old model and try again at the next poll
                    logger.exception("reloading version %s failed; still serving %s", latest, self.handle.label)
