"""FastAPI service for the production model: dynamic batching, limits, API key, hot reload and a demo page.

The model is loaded once in the lifespan and reached through a dependency. Requests are queued and batched for a
few milliseconds so concurrent callers share one forward pass, which runs in a worker thread so the event loop
never blocks. `POST /admin/reload` (or polling the alias) loads the new model beside the old one and swaps the
reference: requests already batched finish on the model they started with.

Where things are: `app` (the factory and its lifespan), `routes/` (ops, predict, demo page), `deps` (the service
state and the API key as dependencies), `state` (the loaded model, reload, alias polling), `batcher` (dynamic
batching), `loading` (what to serve, on which backend), `schemas` (request and response models) and `context`
(request ids on every log line).
"""

from ner_pipeline.serve.app import build_app, create_app
from ner_pipeline.serve.context import RequestIdFilter
from ner_pipeline.serve.loading import choose_backend, load_handle
from ner_pipeline.serve.state import ModelHandle, ServiceState

__all__ = ["ModelHandle", "RequestIdFilter", "ServiceState", "build_app", "choose_backend", "create_app", "load_handle"]
