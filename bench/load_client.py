"""Load for bench/serve_load.py: concurrent HTTP clients against one server, and the server process they measure.

Each client sends one text per request, back to back, for a bounded time. A client can be told to poison every
n-th request with a text the service must refuse on its own (a lone surrogate: valid JSON, not encodable text);
good and poisoned requests are counted apart, so a poisoned request that takes its batch-mates down shows.

The clients are aiohttp's: on these 2 cores httpx's async client, with the same 16 clients, capped one server at
about 350 requests/s that aiohttp's drove to about 500 (its connection pool, not the server, set the pace), and a
load generator must never be what a serving benchmark measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

# JSON escapes the lone surrogate as \ud800: the body is valid JSON and ASCII, the text it holds is not valid Unicode.
POISON = "Angela Merkel \ud800 visited Paris"
READY_TIMEOUT_S = 300


@dataclass
class Tally:
    """What one load run saw."""

    latencies: list[float] = field(default_factory=list)  # good requests answered 200, seconds
    good_errors: Counter = field(default_factory=Counter)  # status (or exception name) of failed good requests
    poisoned: Counter = field(default_factory=Counter)  # status of each poisoned request
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        row: dict[str, Any] = {
            "requests": len(ordered),
            "requests_per_s": round(len(ordered) / self.wall_s, 2) if self.wall_s else 0.0,
            "p50_ms": round(statistics.median(ordered) * 1000, 1) if ordered else None,
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1) if ordered else None,
            "errors": sum(self.good_errors.values()),
        }
        if self.good_errors:
            row["error_kinds"] = dict(self.good_errors)
        if self.poisoned:
            row["poisoned_requests"] = sum(self.poisoned.values())
            row["poisoned_statuses"] = dict(self.poisoned)
        return row


def body(text: str) -> bytes:
    """A /predict request body; ASCII JSON, so a lone surrogate travels as its escape."""
    return json.dumps({"texts": [text]}).encode()


async def _client(
    http: aiohttp.ClientSession, url: str, texts: list[str], seed: int, poison_every: int, stop_at: float, tally: Tally
) -> None:
    rng = random.Random(seed)
    sent = 0
    while time.monotonic() < stop_at:
        sent += 1
        poisoned = poison_every > 0 and (sent + seed) % poison_every == 0
        started = time.perf_counter()
        try:
            async with http.post(url, data=body(POISON if poisoned else rng.choice(texts))) as response:
                status: int | str = response.status
                answer = await response.read()
            ok = status == 200 and len(json.loads(answer).get("entities", [])) == 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            status, ok = type(exc).__name__, False
        if poisoned:
            tally.poisoned[str(status)] += 1
        elif ok:
            tally.latencies.append(time.perf_counter() - started)
        else:
            tally.good_errors[str(status)] += 1


async def run_load(url: str, texts: list[str], clients: int, seconds: float, poison_every: int = 0) -> Tally:
    """`clients` concurrent clients posting to `url` for `seconds`; every `poison_every`-th request poisoned."""
    tally = Tally()
    stop_at = time.monotonic() + seconds
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients),
        headers={"content-type": "application/json"},
        timeout=aiohttp.ClientTimeout(total=120),
    )
    async with session as http:
        started = time.monotonic()
        await asyncio.gather(*(_client(http, url, texts, i, poison_every, stop_at, tally) for i in range(clients)))
        tally.wall_s = time.monotonic() - started
    return tally


def start_server(cmd: list[str], port: int, log: Path, cwd: Path) -> subprocess.Popen:
    """Start a server process and wait for its /ready; exits with the end of its log if it dies or never gets ready."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("NER_API_KEY", None)  # every server is measured without authentication
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[1:3]} exited: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server on {port} not ready within {READY_TIMEOUT_S} s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
