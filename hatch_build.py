"""Editable installs: `ner_pipeline_flows` and `ner_pipeline_tasks` resolve to flows/ and tasks/ in the checkout.

A wheel copies flows/ and tasks/ under those names (`force-include` in pyproject.toml). hatchling cannot rename
a folder in an editable install (it would copy it, and edits would not show), so for `pip install -e .` this hook
installs instead, for each name, a package of one line whose `__path__` is the folder in the checkout.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableFolderNamesHook(BuildHookInterface):
    """Replace the force-included copies by `__path__` redirects when building an editable wheel."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        self._shims = Path(tempfile.mkdtemp(prefix="ner-pipeline-editable-"))
        for source, name in self.build_config.get_force_include().items():
            init = self._shims / name / "__init__.py"
            init.parent.mkdir(parents=True)
            init.write_text(
                f'"""Editable install: the modules of `{name}` are the files in {source}."""\n\n'
                f"__path__ = [{str(Path(source).resolve())!r}]\n",
                encoding="utf-8",
            )
            build_data["force_include_editable"][str(init)] = f"{name}/__init__.py"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if version == "editable":
            shutil.rmtree(self._shims, ignore_errors=True)
