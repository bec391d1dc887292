"""Free TCP ports on loopback, for servers started beside the pipeline: `ner-pipeline serve` in the tests and the
serving benchmark, a Prefect server, torchrun's rendezvous."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody listens on now, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
