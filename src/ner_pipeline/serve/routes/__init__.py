"""The service's routes, one router per concern: `ops` (health, readiness, model, reload), `predict`, `demo`."""
