"""Commands the CLI suggests: each runs as printed, with the user's `--config` and `--set` flags carried along."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROGRAM = "ner-pipeline"


@dataclass(frozen=True)
class Invocation:
    """The config file and overrides a command was given, to repeat in the commands it suggests."""

    config: Path
    overrides: tuple[str, ...] = ()

    def command(self, *args: str, positional: Sequence[str] = ()) -> str:
        """`ner-pipeline <args> --config <file> [--set k=v ...] [positional ...]`, quoted for a POSIX shell."""
        words = [PROGRAM, *args, "--config", str(self.config)]
        for override in self.overrides:
            words += ["--set", override]
        if any(word.startswith("-") for word in positional):
            words.append("--")  # a text such as "-1 point" is not an option
        return shlex.join([*words, *positional])


def invocation(config: Path, overrides: Sequence[str] | None) -> Invocation:
    return Invocation(config, tuple(overrides or ()))
