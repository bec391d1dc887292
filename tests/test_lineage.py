"""Keys that see code and library versions: fingerprints, which keys a change moves, staleness, and a damaged
model file in a real pipeline run being rebuilt instead of served."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import shlex
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_artifacts import invoke_cli

from ner_pipeline import lineage, pipeline
from ner_pipeline.artifacts import MANIFEST, Artifact, ArtifactStore, artifact_key
from ner_pipeline.config import PipelineConfig
from ner_pipeline.pruning import staleness

ALL = {"ingest", "tokenize", "train", "evaluate", "export", "register"}
FROM_TOKENIZE = ALL - {"ingest"}
FROM_TRAIN = FROM_TOKENIZE - {"tokenize"}

MODULE = '''
"""A module."""

import math


def area(r):
    """The area."""
    return math.pi * r**2  # pi r squared


class Shape:
    """A shape."""

    sides = 0
'''


def test_fingerprint_ignores_comments_docstrings_and_formatting():
    reformatted = MODULE.replace('"""A module."""', '"""Another docstring."""').replace("  # pi r squared", "")
    reformatted = reformatted.replace("math.pi * r**2", "math.pi  *  r ** 2").replace('"""A shape."""\n', "")
    reformatted = "# a comment\n" + reformatted.replace("\n\n\n", "\n\n")
    assert lineage.source_fingerprint(reformatted) == lineage.source_fingerprint(MODULE)


def test_fingerprint_sees_a_code_change():
    assert lineage.source_fingerprint(MODULE.replace("r**2", "r**3")) != lineage.source_fingerprint(MODULE)
    assert lineage.source_fingerprint(MODULE.replace("sides = 0", "sides = 1")) != lineage.source_fingerprint(MODULE)


def test_fingerprint_of_one_definition_ignores_the_rest_of_the_module():
    changed_class = MODULE.replace("sides = 0", "sides = 1")
    assert lineage.source_fingerprint(changed_class, "area") == lineage.source_fingerprint(MODULE, "area")
    assert lineage.source_fingerprint(MODULE.replace("r**2", "r**3"), "area") != lineage.source_fingerprint(
        MODULE, "area"
    )
    with pytest.raises(KeyError, match="no top-level definition 'volume'"):
        lineage.source_fingerprint(MODULE, "volume")


def test_every_declared_module_and_library_exists():
    for entries in lineage.STAGE_CODE.values():
        for entry in entries:
            assert len(lineage.module_fingerprint(entry)) == lineage.FINGERPRINT_LENGTH, entry
    declared = {d for libs in lineage.STAGE_LIBRARIES.values() for d in libs}
    declared |= {d for _, libs in lineage.CONDITIONAL_LIBRARIES.values() for d in libs}
    assert {d: lineage.library_version(d) for d in declared if lineage.library_version(d) == lineage.ABSENT} == {}


def imported_modules(module: str) -> set[str]:
    """The ner_pipeline modules a module imports (anywhere in it), relative to the package."""
    path = lineage.PACKAGE_DIR.joinpath(*module.split(".")).with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ner_pipeline"):
            inner = node.module.removeprefix("ner_pipeline").lstrip(".")
            names = [inner] if inner else [a.name for a in node.names]  # `from ner_pipeline import registry`
            found |= {n for n in names if lineage.PACKAGE_DIR.joinpath(*n.split(".")).with_suffix(".py").is_file()}
            found |= {f"{n}.__init__" for n in names if (lineage.PACKAGE_DIR / n / "__init__.py").is_file()}
    return found


def upstream_stages(stage: str) -> set[str]:
    direct = set(pipeline.spec(stage).upstream)
    return direct.union(*(upstream_stages(u) for u in direct))


@pytest.mark.parametrize("stage", pipeline.STAGES)
def test_every_module_a_stage_imports_is_covered_or_said_not_to_decide(stage: str):
    """A stage's logic moved into a new module (a split, a helper module) must be declared, or it escapes keys."""
    covered = {e.partition(":")[0] for s in {stage, *upstream_stages(stage)} for e in lineage.STAGE_CODE[s]}
    whole = [e for e in lineage.STAGE_CODE[stage] if ":" not in e]
    imported = {m for module in whole for m in imported_modules(module)}
    assert imported - covered - set(lineage.NOT_DECIDING) == set()


def all_keys(config: PipelineConfig) -> dict[str, str]:
    """Every stage's key through the pipeline's keyers, each upstream a fake artifact carrying only its key."""
    keys: dict[str, str] = {}
    ctx = pipeline.RunContext(tracking_uri="sqlite:////tmp/ner-lineage-keys.db")
    for stage in pipeline.STAGES:
        upstream = {u: Artifact(u, keys[u], Path("/nonexistent")) for u in pipeline.spec(stage).upstream}
        keys[stage] = pipeline.stage_key(stage, config, upstream, ctx)
    return keys


@pytest.fixture(scope="module")
def local_config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"data": {"source": "conll", "path": str(REPO_ROOT / "tests" / "data" / "conll_iob1"), "scheme": "iob1"}}
    )


def changed_stages(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("readers", ALL),
        ("spans", ALL),
        ("tokenize", FROM_TOKENIZE),
        ("train", FROM_TRAIN),
        ("checkpoints", FROM_TRAIN),
        ("evaluate:entity_scores", FROM_TRAIN),
        ("evaluate", {"evaluate", "register"}),
        ("report", {"evaluate", "register"}),
        ("predict", {"evaluate", "export", "register"}),
        ("export", {"export", "register"}),
        ("registry.pyfunc", {"register"}),
    ],
)
def test_a_code_change_moves_exactly_the_keys_downstream_of_it(
    monkeypatch: pytest.MonkeyPatch, local_config: PipelineConfig, entry: str, expected: set[str]
):
    before = all_keys(local_config)
    real = lineage.module_fingerprint
    monkeypatch.setattr(lineage, "module_fingerprint", lambda e: "0" * 16 if e == entry else real(e))
    assert changed_stages(before, all_keys(local_config)) == expected


@pytest.mark.parametrize(
    ("distribution", "expected"),
    [
        ("tokenizers", FROM_TOKENIZE),
        ("transformers", FROM_TOKENIZE),
        ("torch", FROM_TRAIN),
        ("accelerate", FROM_TRAIN),
        ("seqeval", FROM_TRAIN),
        ("onnxruntime", {"export", "register"}),
        ("optimum-onnx", {"export", "register"}),
        ("mlflow", {"register"}),
        ("datasets", set()),  # local CoNLL files: our readers parse them
        ("numpy", set()),  # declared nowhere
    ],
)
def test_a_library_upgrade_moves_exactly_the_keys_downstream_of_it(
    monkeypatch: pytest.MonkeyPatch, local_config: PipelineConfig, distribution: str, expected: set[str]
):
    before = all_keys(local_config)
    real = lineage.library_version
    monkeypatch.setattr(lineage, "library_version", lambda d: "99.0" if d == distribution else real(d))
    assert changed_stages(before, all_keys(local_config)) == expected


def test_a_hub_source_is_keyed_by_the_datasets_version(monkeypatch: pytest.MonkeyPatch):
    config = PipelineConfig.model_validate({"data": {"source": "hub", "path": "conll2003", "revision": "abc"}})
    before = all_keys(config)
    real = lineage.library_version
    monkeypatch.setattr(lineage, "library_version", lambda d: "99.0" if d == "datasets" else real(d))
    assert changed_stages(before, all_keys(config)) == ALL


def test_the_manifest_records_the_lineage_that_went_into_the_key(tmp_path: Path):
    key = artifact_key("ingest", "1", {"data": {"source": "hub"}})
    built = ArtifactStore(tmp_path).build("ingest", key, lambda folder: {})
    manifest = json.loads((built.path / MANIFEST).read_text())
    assert manifest["lineage"] == lineage.stage_lineage("ingest", {"data": {"source": "hub"}})
    assert manifest["lineage"]["libraries"] == {"datasets": lineage.library_version("datasets")}
    assert set(manifest["lineage"]["code"]) == set(lineage.STAGE_CODE["ingest"])


def build_chain(store: ArtifactStore, n: int = 1) -> dict[str, Artifact]:
    """tokenize → train → evaluate artifacts keyed as the stages key them, with lineage in their manifests."""
    built: dict[str, Artifact] = {}
    for stage, upstream in (("tokenize", {}), ("train", {"tokenize"}), ("evaluate", {"train"})):
        inputs = {u: built[u].key for u in upstream}
        key = artifact_key(stage, "1", {"n": n}, inputs)
        built[stage] = store.build(stage, key, lambda folder: {}, inputs=inputs)
    return built


def test_staleness_names_what_changed_and_reaches_downstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = ArtifactStore(tmp_path)
    built = build_chain(store)
    assert staleness(store.list()) == {a.key: [] for a in built.values()}

    real_version, real_code = lineage.library_version, lineage.module_fingerprint
    monkeypatch.setattr(lineage, "library_version", lambda d: "99.0" if d == "accelerate" else real_version(d))
    stale = staleness(store.list())
    assert stale[built["tokenize"].key] == []
    assert stale[built["train"].key] == [f"accelerate {real_version('accelerate')} -> 99.0"]
    assert stale[built["evaluate"].key] == [f"built from stale train {built['train'].key}"]

    monkeypatch.setattr(lineage, "module_fingerprint", lambda e: "f" * 16 if e == "tokenize" else real_code(e))
    assert stale != (stale := staleness(store.list()))
    assert stale[built["tokenize"].key] == ["code of tokenize changed"]
    assert all(stale.values())


def test_prune_stale_removes_stale_artifacts_but_not_a_registered_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = ArtifactStore(tmp_path)
    registered = build_chain(store)
    other = build_chain(store, n=2)
    real = lineage.module_fingerprint
    monkeypatch.setattr(lineage, "module_fingerprint", lambda e: "f" * 16 if e == "train" else real(e))
    current = build_chain(store)  # what the changed code builds: the same tokenize, a new train and evaluate
    assert current["tokenize"] == registered["tokenize"] and current["train"].key != registered["train"].key

    removed = store.prune_stale(protected={registered["evaluate"].key})
    assert [a.key for a in removed] == [other["train"].key, other["evaluate"].key]
    kept = [*registered.values(), *current.values(), other["tokenize"]]
    assert {a.key for a in store.list()} == {a.key for a in kept}
    assert [a.key for a in store.prune_stale()] == [registered["train"].key, registered["evaluate"].key]


def test_artifacts_written_before_lineage_are_stale_and_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    store = ArtifactStore(tmp_path)
    key = artifact_key("tokenize", "1", {"n": 1})

    def produce(folder: Path) -> dict:
        (folder / "x.txt").write_text("x")
        return {}

    built = store.build("tokenize", key, produce)
    manifest = json.loads((built.path / MANIFEST).read_text())
    for field in ("lineage", "files"):
        del manifest[field]
    (built.path / MANIFEST).write_text(json.dumps(manifest))
    assert staleness(store.list())[key] == [
        "no code/library lineage recorded (written by an older ner-pipeline)",
        "no file hashes in the manifest (written by an older ner-pipeline)",
    ]
    with caplog.at_level(logging.WARNING, logger="ner_pipeline.artifacts"):
        assert not store.build("tokenize", key, lambda folder: {}).cached
    assert "no file hashes in the manifest" in caplog.text


# --- a real pipeline run whose model file is damaged -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> PipelineConfig:
    """A tiny real ingest → tokenize → train run, tracking off (no register stage)."""
    from conftest import write_tiny_config

    from ner_pipeline.config import load_config

    folder = tmp_path_factory.mktemp("damaged")
    path = write_tiny_config(folder, tiny_base_dir, tracking={"enabled": False}, train={"max_train_sentences": 80})
    config = load_config(path, [])
    pipeline.run_pipeline(config, pipeline.open_store(config), stages=["ingest", "tokenize", "train"])
    return config


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def overwrite_same_size(path: Path) -> None:
    with path.open("r+b") as handle:  # flip bytes in the middle: same size, different content
        handle.seek(path.stat().st_size // 2)
        chunk = handle.read(4096)
        handle.seek(path.stat().st_size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [Path.unlink, truncate, overwrite_same_size], ids=["deleted", "truncated", "same"])
def test_a_damaged_model_file_is_reported_and_rebuilt_not_served(
    trained: PipelineConfig, damage, caplog: pytest.LogCaptureFixture
):
    store = pipeline.open_store(trained)
    before = {a.stage: a for a in store.list()}
    weights = before["train"].path / "model" / "model.safetensors"
    sha_before = hashlib.sha256(weights.read_bytes()).hexdigest()
    damage(weights)

    args = ["artifacts", "verify", "--set", f"artifacts_root={trained.artifacts_root}"]
    verified = invoke_cli(args)
    assert verified.exit_code == 1, verified.output
    damaged_lines = [line for line in verified.output.splitlines() if line.startswith("damaged")]
    assert damaged_lines == [damaged_lines[0]] and str(weights) in damaged_lines[0]

    with caplog.at_level(logging.WARNING, logger="ner_pipeline.artifacts"):
        rerun = pipeline.run_pipeline(trained, store, stages=["ingest", "tokenize", "train"])
    assert str(weights) in caplog.text
    assert [rerun[s].cached for s in ("ingest", "tokenize", "train")] == [True, True, False]
    assert rerun["train"].key == before["train"].key and weights.is_file()
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == sha_before  # seeded: the same model again
    assert invoke_cli(args).exit_code == 0


def test_cli_lists_stale_artifacts_and_prunes_them_except_a_registered_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ner_pipeline import registry
    from ner_pipeline.registry.tags import ARTIFACT_TAG

    store = ArtifactStore(tmp_path / "artifacts")
    registered, other = build_chain(store), build_chain(store, n=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = registry.client_for(uri)
    client.create_registered_model("ner-x")
    (tmp_path / "model").mkdir()
    tags = {f"{ARTIFACT_TAG}evaluate": registered["evaluate"].key}  # what registering that evaluation records
    client.create_model_version("ner-x", str(tmp_path / "model"), tags=tags)
    common = ["--set", f"artifacts_root={tmp_path / 'artifacts'}", "--set", f"tracking.tracking_uri={uri}"]
    assert "stale" not in invoke_cli(["artifacts", "list", *common]).output

    real = lineage.library_version
    monkeypatch.setattr(lineage, "library_version", lambda d: "99.0" if d == "torch" else real(d))
    listed = invoke_cli(["artifacts", "list", *common])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if line.startswith(("train", "evaluate"))}
    assert f"stale: torch {real('torch')} -> 99.0" in rows[registered["train"].key]
    assert f"built from stale train {other['train'].key}" in rows[other["evaluate"].key]
    hint = listed.output.splitlines()[-1]
    assert hint.startswith("4 stale artifact(s): ner-pipeline artifacts prune --stale --config ")

    pruned = invoke_cli(shlex.split(hint.partition(": ner-pipeline ")[2]))  # the hint as printed, flags and all
    assert pruned.exit_code == 0, pruned.output
    assert f"removed train/{other['train'].key}" in pruned.output and "removed 2 artifact(s)" in pruned.output
    assert {a.key for a in store.list()} == {a.key for a in [*registered.values(), other["tokenize"]]}
