"""Layering: the library imports without Prefect, and the orchestration code is installed under its own names."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_library_module_imports_without_prefect():
    out = run_python(
        "import importlib, json, pkgutil, sys\n"
        "import ner_pipeline\n"
        "names = [m.name for m in pkgutil.walk_packages(ner_pipeline.__path__, 'ner_pipeline.')\n"
        "         if not m.name.endswith('.__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'modules': names, 'prefect': sorted(m for m in sys.modules if m.startswith('prefect'))}))\n"
    )
    found = json.loads(out)
    assert {"ner_pipeline.cli", "ner_pipeline.cli.training", "ner_pipeline.pipeline", "ner_pipeline.serve"} <= set(
        found["modules"]
    )
    assert found["prefect"] == []


def test_flow_loads_by_its_deployment_entrypoint_with_tasks_under_their_installed_name():
    out = run_python(
        "import json, sys\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "flow = load_flow_from_entrypoint('flows/training.py:training_flow')\n"
        "print(json.dumps({'flow': flow.name, 'top_level': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    found = json.loads(out)
    assert found["flow"] == "ner-training"
    assert "ner_pipeline_tasks" in found["top_level"]
    assert "tasks" not in found["top_level"] and "flows" not in found["top_level"]
