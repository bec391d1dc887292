"""FastAPI service for the production model: batching, fair scheduling, limits, API key, hot reload, a demo page.

The model is loaded in a worker thread after start-up (`/health` answers at once, `/ready` once it is loaded)
and reached through a dependency. Requests are queued (at most `serve.max_queue`; past it 503 with Retry-After),
each with a deadline (`serve.request_timeout_s`, 504).

What a "batch" is: the small requests that arrived while the previous batch ran (or within `serve.batch_wait_ms`
of the first), up to `serve.max_batch_size` texts and `serve.max_batch_chars` characters, given to the
predictor in one call. The predictor packs the token windows of all of them, by length, into forward passes of at
most the backend's token budget: one batch is as few forward passes as that budget allows, often several, not one.
A request over `serve.max_batch_chars` runs alone in a second lane; forward passes of both lanes take turns
(`gate`), so a small request waits at most one forward pass behind a large one. A batch that fails is run again
request by request, so only the request that fails alone gets the error. The batching lanes are supervised: one
that dies is logged and restarted, and `/ready` answers 503 meanwhile.

`POST /admin/reload` (or polling the alias) loads the new model beside the old one and swaps the reference:
requests already batched finish on the model they started with. With an API key, every route but `/health` and
`/ready` needs it, checked with the body size from the headers before the body is read (`guard`). Entity offsets
count Unicode code points. `/docs` serves Swagger UI from the fastapi-offline package, not a CDN.

Where things are: `app` (the factory and its lifespan), `routes/` (ops, predict, demo page), `deps` (the service
state, model and batcher as dependencies), `state` (the loaded model, background load, reload, alias polling),
`batcher` (the lanes and their supervisor), `gate` (forward passes in turn), `guard` (API key and body size),
`loading` (what to serve, on which backend), `schemas` (request and response models) and `context` (request ids
on every log line).
"""

from ner_pipeline.serve.app import build_app, create_app
from ner_pipeline.serve.context import RequestIdFilter
from ner_pipeline.serve.loading import choose_backend, load_handle
from ner_pipeline.serve.state import ModelHandle, ServiceState

__all__ = ["ModelHandle", "RequestIdFilter", "ServiceState", "build_app", "choose_backend", "create_app", "load_handle"]
