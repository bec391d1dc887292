"""What the console shows: our own log lines, warnings and errors, and third-party chatter only with --verbose.

Prefect reports every finished task at INFO ("Finished in state Completed()") and a failed flow run at ERROR
with its traceback, onnxruntime's quantizer logs dozens of INFO lines on the root logger, libraries raise
Python warnings meant for their developers, and so on. Those records still reach Prefect's own handlers (the
flow run's logs in its API/UI); the console handler set up here drops them unless `--verbose`, and a failure is
printed once, as the CLI's one-line error.

During `run` and `stage` the stages' start and end lines (from `pipeline.walk`) are the command's output: they
go to stdout, so stderr holds only warnings and errors (a failed run's stderr is its one-line error).
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
from typing import Any

OURS = "ner_pipeline"
#: During `run` and `stage` the console tells the story of the stages: the walk's start and end lines.
STAGE_STORY = ("ner_pipeline.pipeline", "ner_pipeline.cli")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STORY_FORMAT = "%(asctime)s %(message)s"


#: Warnings libraries give on every run that nobody can act on, as (logger name prefix, message fragment): the base
#: model's new classification head (we train it), transformers' own deprecated argument, the ONNX opset we pin,
#: the quantizer's pre-processing advice. They still reach Prefect's logs and show with --verbose.
EXPECTED_WARNINGS = (
    ("transformers.modeling_utils", "newly initialized"),
    ("transformers.configuration_utils", "`torch_dtype` is deprecated"),
    ("optimum.exporters.onnx", "is lower than the recommended minimum opset"),
    ("root", "Please consider to run pre-processing before quantization"),
)
#: Libraries that log to stderr through a handler of their own (not propagating): routed to the root logger.
OWN_HANDLER_LOGGING = ("transformers.utils.logging", "optimum.utils.logging")


class ConsoleFilter(logging.Filter):
    """Pass our INFO records (all, or only `story` loggers), everyone's warnings, and errors not from Prefect."""

    def __init__(self) -> None:
        super().__init__()
        self.story: tuple[str, ...] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("prefect"):
            # A failed task or flow arrives here at ERROR with its traceback; the CLI prints that error itself.
            return record.levelno == logging.WARNING
        if record.name == "py.warnings":  # Python warnings: advice for library developers, not for our users
            return False
        if record.levelno >= logging.WARNING:
            return record.levelno > logging.WARNING or not _expected(record)
        if record.levelno < logging.INFO or not (record.name == OURS or record.name.startswith(OURS + ".")):
            return False
        return self.story is None or record.name in self.story


def _expected(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name.startswith(name) and part in message for name, part in EXPECTED_WARNINGS)


class RouteLibraryLogging(importlib.abc.MetaPathFinder):
    """When transformers' or optimum's logging module is imported, drop its own stderr handler and let its records
    propagate to the root logger, so the console filter (and Prefect's handlers) see them like everyone's.

    An import hook, because importing transformers up front would cost every command seconds.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in OWN_HANDLER_LOGGING:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _then_route(spec.loader.exec_module)  # type: ignore[method-assign]
                return spec
        return None


def _then_route(exec_module: Any) -> Any:
    def run_and_route(module: Any) -> None:
        exec_module(module)
        _route(module)

    return run_and_route


def _route(module: Any) -> None:
    module.disable_default_handler()
    module.enable_propagation()


def route_library_logging() -> None:
    """Route transformers' and optimum's logs through the root logger, now or when they are imported."""
    for name in OWN_HANDLER_LOGGING:
        if name in sys.modules:
            _route(sys.modules[name])
    if not any(isinstance(finder, RouteLibraryLogging) for finder in sys.meta_path):
        sys.meta_path.insert(0, RouteLibraryLogging())


class ConsoleFormatter(logging.Formatter):
    """Our format, without the tracebacks Prefect attaches to its retry warnings (the error is in the line)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.name.startswith("prefect"):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr through one console handler; library modules only emit records, the CLI decides where they go.

    Args:
        verbose: Show every record at DEBUG, third-party ones and Prefect's tracebacks included.
    """
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    else:
        handler.setFormatter(ConsoleFormatter(FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(ConsoleFilter())
        route_library_logging()
        # MLflow logs through a handler of its own, past ours: quiet it at the source.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    for noisy in ("httpx", "httpcore", "urllib3", "alembic", "filelock", "mlflow.store.db.utils", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tell_stage_story() -> None:
    """Print the stages' start and end lines on stdout, and only those of our INFO lines (for `run` and `stage`)."""
    root = logging.getLogger()
    filters = [f for handler in root.handlers for f in handler.filters if isinstance(f, ConsoleFilter)]
    if not filters:  # --verbose: everything on stderr already
        return
    for flt in filters:
        flt.story = ()
    story = logging.StreamHandler(sys.stdout)
    story.setFormatter(logging.Formatter(STORY_FORMAT, datefmt="%H:%M:%S"))
    story.addFilter(lambda record: record.levelno == logging.INFO and record.name in STAGE_STORY)
    root.addHandler(story)
