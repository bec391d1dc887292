"""Ingest: CoNLL/JSONL readers, IOB normalisation, sources, clear errors, and the CoNLL-2003 counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError
from ner_pipeline.ingest import (
    build_splits,
    ingest_key,
    load_splits,
    read_conll,
    read_evaluation_data,
    read_jsonl,
    read_labels,
    run_ingest,
    stats_table,
)

IOB1_DOC = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP I-LOC
1996-08-22 CD I-NP O
"""


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def conll_folder(folder: Path, train: str, validation: str | None = None, test: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "train.txt", train)
    write(folder / "validation.txt", validation or train)
    write(folder / "test.txt", test or train)
    return folder


def test_reader_keeps_documents_and_positions(tmp_path: Path):
    sentences = read_conll(write(tmp_path / "a.txt", IOB1_DOC))
    assert [s.tokens for s in sentences] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "1996-08-22"],
    ]
    assert [(s.document_id, s.position) for s in sentences] == [(0, 0), (0, 1), (1, 0)]
    assert sentences[0].tags == ["I-ORG", "O", "I-MISC", "O", "O"]


def test_iob1_is_converted_to_iob2_and_counted(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", IOB1_DOC)
    splits, labels, stats = build_splits(DataConfig(source="conll", path=str(folder), scheme="iob1"))
    assert splits["train"][0].tags == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert splits["train"][1].tags == ["B-PER", "I-PER"]
    assert stats["train"]["iob1_conversions"] == 4
    assert stats["train"]["entities"] == {"LOC": 1, "MISC": 1, "ORG": 1, "PER": 1}
    assert labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_iob2_input_is_unchanged_and_broken_iob2_is_repaired(tmp_path: Path):
    good = "John B-PER\nSmith I-PER\nsaid O\n\n"
    broken = "John I-PER\nSmith I-PER\nin O\nParis I-LOC\n\n"
    folder = conll_folder(tmp_path / "d", good + broken)
    splits, _, stats = build_splits(DataConfig(source="conll", path=str(folder), scheme="iob2"))
    assert splits["train"][0].tags == ["B-PER", "I-PER", "O"]
    assert splits["train"][1].tags == ["B-PER", "I-PER", "O", "B-LOC"]
    assert stats["train"]["repairs"] == 2


def test_crlf_tabs_spaces_and_trailing_blank_lines(tmp_path: Path):
    text = "Angela\tB-PER\nMerkel  I-PER\n \t \nBerlin \t B-LOC\n\n\n\n"
    sentences = read_conll(write(tmp_path / "a.txt", text, newline="\r\n"))
    assert [s.tokens for s in sentences] == [["Angela", "Merkel"], ["Berlin"]]
    assert [s.tags for s in sentences] == [["B-PER", "I-PER"], ["B-LOC"]]


def test_line_with_one_column_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "train.txt", "John B-PER\n\nlonely\n")
    with pytest.raises(DataError, match=r"train\.txt line 3: expected at least 2 columns"):
        read_conll(path)


def test_bad_tag_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "train.txt", "John B-PER\nSmith X-PER\n")
    with pytest.raises(DataError, match=r"train\.txt line 2: tag 'X-PER' is not O, B-<type> or I-<type>"):
        read_conll(path)


def test_non_utf8_bytes_name_the_line(tmp_path: Path):
    path = tmp_path / "train.txt"
    path.write_bytes("John B-PER\n\nM\u00fcnchen B-LOC\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train\.txt line 3: bytes that are not UTF-8"):
        read_conll(path)


def test_empty_split_is_an_error(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", "John B-PER\n", test="\n\n")
    with pytest.raises(DataError, match="the test split is empty"):
        build_splits(DataConfig(source="conll", path=str(folder)))


def test_types_missing_from_train_are_named(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", "John B-PER\n", validation="Acme B-ORG\nParis B-LOC\n")
    with pytest.raises(DataError, match="validation uses entity types that never occur in train: LOC, ORG"):
        build_splits(DataConfig(source="conll", path=str(folder)))


def test_jsonl_reader_and_its_errors(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"tokens": ["Ada", "Lovelace"], "tags": ["B-PER", "I-PER"]}) + "\n")
    assert read_jsonl(path)[0].tags == ["B-PER", "I-PER"]
    path.write_text(json.dumps({"tokens": ["Ada"], "tags": ["B-PER", "O"]}) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl line 1: 1 tokens but 2 tags"):
        read_jsonl(path)
    path.write_text('{"tokens": [\n')
    with pytest.raises(DataError, match=r"data\.jsonl line 1: not valid JSON"):
        read_jsonl(path)


def test_wnut16_split_is_deterministic_disjoint_and_complete():
    cfg = DataConfig(source="wnut16", path=None, scheme="iob2")
    splits, labels, _ = build_splits(cfg)
    again, _, _ = build_splits(cfg)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 2394
    assert sizes == {"train": 1915, "validation": 239, "test": 240}
    assert [s.tokens for s in splits["test"]] == [s.tokens for s in again["test"]]
    assert "B-person" in labels and labels[0] == "O"
    other, _, _ = build_splits(cfg.model_copy(update={"split_seed": 99}))
    assert [s.tokens for s in other["test"]] != [s.tokens for s in splits["test"]]


def test_hub_source_maps_class_label_ids_to_names(monkeypatch: pytest.MonkeyPatch):
    """The Hub is unreachable here: only `datasets.load_dataset` is replaced; the conversion below is ours."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {"tokens": [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]], "ner_tags": [[3, 0, 7, 0], [1, 2]]}
    fake = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "validation", "test")}
    )
    calls = []

    def fake_load_dataset(path, name=None, revision=None):
        calls.append((path, name, revision))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits, labels, _ = build_splits(DataConfig(source="hub", path="conll2003", revision="abc123"))
    assert calls == [("conll2003", None, "abc123")]
    assert splits["train"][0].tags == ["B-ORG", "O", "B-MISC", "O"]
    assert labels == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_artifact_is_cached_and_a_changed_file_is_ingested_again(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", IOB1_DOC)
    cfg = DataConfig(source="conll", path=str(folder), scheme="iob1")
    store = ArtifactStore(tmp_path / "artifacts")
    first = run_ingest(cfg, store)
    assert not first.cached and run_ingest(cfg, store).cached
    assert read_labels(first)[0] == "O"
    data = load_splits(first)
    assert data["train"].features["ner_tags"].feature.names == read_labels(first)
    assert data["train"]["document_id"] == [0, 0, 1]
    write(folder / "test.txt", IOB1_DOC.replace("Peter", "Paul"))
    assert ingest_key(cfg) != first.key
    assert run_ingest(cfg, store).stats["fingerprint"] != first.stats["fingerprint"]


def test_single_file_is_scored_as_a_test_split(tmp_path: Path):
    path = write(tmp_path / "new.conll", "Acme I-ORG\nhired O\nBob I-PER\n\n")
    splits = read_evaluation_data(str(path), DataConfig())
    assert list(splits) == ["test"]
    assert splits["test"][0].tags == ["B-ORG", "O", "B-PER"]


@pytest.mark.slow
def test_conll2003_counts_match_the_published_ones(conll_dir: Path, tmp_path: Path):
    cfg = DataConfig(source="conll", path=str(conll_dir), scheme="iob1")
    artifact = run_ingest(cfg, ArtifactStore(tmp_path))
    stats = artifact.stats
    assert {s: (stats[s]["sentences"], stats[s]["tokens"]) for s in ("train", "validation", "test")} == {
        "train": (14041, 203621),
        "validation": (3250, 51362),
        "test": (3453, 46435),
    }
    assert stats["train"]["entities"] == {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}
    assert stats["validation"]["entities"] == {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}
    assert stats["test"]["entities"] == {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}
    assert stats["train"]["documents"] == 946 and stats["test"]["documents"] == 231
    table = stats_table(stats)
    assert "14,041" in table and "7,140" in table


def test_cli_ingest_prints_one_line_for_a_malformed_file(tmp_path: Path):
    from typer.testing import CliRunner

    from ner_pipeline.cli import app

    folder = conll_folder(tmp_path / "d", "John B-PER\nbroken\n")
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--set",
            "data.source=conll",
            "--set",
            f"data.path={folder}",
            "--set",
            f"artifacts_root={tmp_path}/a",
        ],
    )
    assert result.exit_code == 1
    assert "train.txt line 2: expected at least 2 columns" in result.output
    assert "Traceback" not in result.output
