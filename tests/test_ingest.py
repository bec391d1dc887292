"""Ingest and its readers: CoNLL/JSONL, IOB normalisation, sources, clear errors, caching and the CoNLL-2003 counts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from ner_pipeline.artifacts import ArtifactStore
from ner_pipeline.config import DataConfig
from ner_pipeline.errors import DataError, SourceUnavailableError
from ner_pipeline.ingest import (
    build_splits,
    fingerprint,
    ingest_key,
    load_splits,
    read_evaluation_data,
    read_labels,
    read_single_file,
    run_ingest,
    stats_table,
)
from ner_pipeline.readers import read_conll, read_jsonl

FIXTURE = Path(__file__).parent / "data" / "conll_iob1"
CONLL_LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]

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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def conll_folder(folder: Path, train: str, validation: str | None = None, test: str | None = None) -> Path:
    write(folder / "train.txt", train)
    write(folder / "validation.txt", validation or train)
    write(folder / "test.txt", test or train)
    return folder


def jsonl_lines(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- the CoNLL reader ----------------------------------------------------------------------------------------


def test_reader_keeps_documents_and_positions(tmp_path: Path):
    sentences = read_conll(write(tmp_path / "a.txt", IOB1_DOC))
    assert [s.tokens for s in sentences] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "1996-08-22"],
    ]
    assert [(s.document_id, s.position) for s in sentences] == [(0, 0), (0, 1), (1, 0)]
    assert sentences[0].tags == ["I-ORG", "O", "I-MISC", "O", "O"]
    assert sentences[1].origin == "a.txt line 9"


def test_file_without_docstart_is_one_document(tmp_path: Path):
    sentences = read_conll(write(tmp_path / "a.txt", "Ann B-PER\n\nBob B-PER\n\nCy B-PER\n"))
    assert [(s.document_id, s.position) for s in sentences] == [(0, 0), (0, 1), (0, 2)]


def test_sentences_before_the_first_docstart_form_their_own_document(tmp_path: Path):
    sentences = read_conll(write(tmp_path / "a.txt", "Ann B-PER\n\n-DOCSTART- O\n\nBob B-PER\n"))
    assert [(s.document_id, s.position) for s in sentences] == [(0, 0), (1, 0)]


def test_crlf_tabs_spaces_and_trailing_blank_lines(tmp_path: Path):
    text = "Angela\tB-PER\nMerkel  I-PER\n \t \nBerlin \t B-LOC\n\n\n\n"
    sentences = read_conll(write(tmp_path / "a.txt", text, newline="\r\n"))
    assert [s.tokens for s in sentences] == [["Angela", "Merkel"], ["Berlin"]]
    assert [s.tags for s in sentences] == [["B-PER", "I-PER"], ["B-LOC"]]


def test_middle_columns_are_ignored_and_unicode_spaces_stay_inside_tokens(tmp_path: Path):
    # A no-break space or a line separator is part of a token, not a column or line break.
    text = "New\u00a0York NNP B-NP B-LOC\nsaid\u2028it VBD B-VP O\n"
    sentences = read_conll(write(tmp_path / "a.txt", text))
    assert sentences[0].tokens == ["New\u00a0York", "said\u2028it"]
    assert sentences[0].tags == ["B-LOC", "O"]


def test_utf8_bom_does_not_hide_the_first_docstart(tmp_path: Path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + IOB1_DOC.encode())
    sentences = read_conll(path)
    assert sentences[0].tokens[0] == "EU" and len(sentences) == 3


def test_line_with_one_column_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "train.txt", "John B-PER\n\nlonely\n")
    with pytest.raises(DataError, match=r"train\.txt line 3: expected at least 2 columns \(token \.\.\. tag\), got 1"):
        read_conll(path)


def test_bad_tag_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "train.txt", "John B-PER\nSmith X-PER\n")
    with pytest.raises(DataError, match=r"train\.txt line 2: tag 'X-PER' is not O, B-<type> or I-<type>"):
        read_conll(path)


@pytest.mark.parametrize(
    ("hidden", "name"), [("\u00a0", "no-break space (U+00A0)"), ("\u200b", "zero width space (U+200B)")]
)
def test_a_tag_with_an_invisible_character_names_file_and_line(tmp_path: Path, hidden: str, name: str):
    # Pasted from a web page: without the check, 'B-ORG\xa0' became an entity type of its own next to ORG.
    path = write(tmp_path / "train.txt", f"Acme B-ORG\n\nthe O\nBank B-ORG{hidden}\n")
    with pytest.raises(DataError) as caught:
        read_conll(path)
    assert str(caught.value) == (
        f"{path} line 4: tag {'B-ORG' + hidden!r} contains {name}; remove it, or it becomes an entity type of its own"
    )


def test_a_chunk_column_read_as_tags_is_an_error(tmp_path: Path):
    # CoNLL-2003 with its NER column cut off: the last column is now the chunk column (B-NP, I-VP, ...).
    without_ner = "".join(" ".join(line.split()[:3]) + "\n" if line.strip() else "\n" for line in IOB1_DOC.splitlines())
    path = write(tmp_path / "train.txt", without_ner)
    with pytest.raises(DataError) as caught:
        read_conll(path)
    assert str(caught.value) == (
        f"{path} line 3: tag 'B-NP' is a phrase-chunk tag: every type in this column (NP, VP) is a chunk type, so "
        "the NER column is missing; the NER tag must be the last column"
    )
    records = jsonl_lines({"tokens": ["EU", "rejects"], "tags": ["B-NP", "B-VP"]})
    with pytest.raises(DataError, match=r"a\.jsonl line 1 token 0: tag 'B-NP' is a phrase-chunk tag"):
        read_jsonl(write(tmp_path / "a.jsonl", records))
    # An NER column that happens to hold such a type next to real ones is read as it is.
    assert read_conll(write(tmp_path / "ok.txt", "Acme B-ORG\nGmbH I-NP\nsaid O\n"))[0].tags[1] == "I-NP"


def test_non_utf8_bytes_name_the_line(tmp_path: Path):
    path = tmp_path / "train.txt"
    path.write_bytes("John B-PER\n\nM\u00fcnchen B-LOC\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train\.txt line 3: bytes that are not UTF-8"):
        read_conll(path)


def test_unreadable_path_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read the file"):
        read_conll(tmp_path)


# --- normalising and checks ----------------------------------------------------------------------------------


def test_iob1_is_converted_to_iob2_and_counted():
    splits, labels, stats = build_splits(DataConfig(source="conll", path=str(FIXTURE), scheme="iob1"))
    assert splits["train"][0].tags == ["B-ORG", "I-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    assert splits["train"][2].tags == ["B-LOC", "B-LOC", "O", "B-LOC", "O", "O"]  # IOB1 B- between neighbours
    assert stats["train"] == {
        "sentences": 5,
        "tokens": 28,
        "documents": 2,
        "entities": {"LOC": 4, "MISC": 1, "ORG": 2, "PER": 2},
        "iob1_conversions": 8,
    }
    assert stats["validation"]["iob1_conversions"] == 3 and stats["test"]["documents"] == 2
    assert labels == CONLL_LABELS


def test_iob2_input_is_unchanged_and_a_stray_i_is_an_error_when_iob2_is_declared(tmp_path: Path):
    good = "John B-PER\nSmith I-PER\nsaid O\n\n"
    folder = conll_folder(tmp_path / "good", good)
    splits, _, stats = build_splits(DataConfig(source="conll", path=str(folder), scheme="iob2"))
    assert splits["train"][0].tags == ["B-PER", "I-PER", "O"]
    assert stats["train"]["repairs"] == 0 and "iob1_conversions" not in stats["train"]
    assert stats["scheme"] == {
        "detected": "iob2",
        "splits": {"train": "iob2", "validation": "iob2", "test": "iob2"},
        "first_i_start": None,
    }

    broken = conll_folder(tmp_path / "broken", good + "Bob B-PER\nin O\nParis I-LOC\n\n")
    with pytest.raises(DataError) as caught:
        build_splits(DataConfig(source="conll", path=str(broken), scheme="iob2"))
    assert str(caught.value) == (
        f"{broken / 'train.txt'} line 7: I-LOC after O starts an entity, but data.scheme is iob2 (entities start "
        "with B-); set data.scheme=iob1 or auto if the file is IOB1"
    )


def test_auto_repairs_a_mix_of_iob1_and_iob2_with_a_warning_naming_the_first_i_start(tmp_path: Path, caplog):
    broken = "John I-PER\nSmith I-PER\nin O\nParis I-LOC\n\nBob B-PER\n\n"
    folder = conll_folder(tmp_path / "d", broken)
    caplog.set_level(logging.INFO, logger="ner_pipeline")
    splits, _, stats = build_splits(DataConfig(source="conll", path=str(folder), scheme="auto"))
    assert splits["train"][0].tags == ["B-PER", "I-PER", "O", "B-LOC"]
    assert stats["train"]["repairs"] == 2 and "iob1_conversions" not in stats["train"]
    first = f"{folder / 'train.txt'} line 1: I-PER at the start of a sentence"
    assert stats["scheme"]["detected"] == "mixed" and stats["scheme"]["first_i_start"] == first
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "mix IOB1 and IOB2" in warning.getMessage() and first in warning.getMessage()


def test_iob1_input_gives_the_same_dataset_and_key_whichever_scheme_accepts_it(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="ner_pipeline")
    store = ArtifactStore(tmp_path / "artifacts")
    declared_iob1 = DataConfig(source="conll", path=str(FIXTURE), scheme="iob1")
    auto = declared_iob1.model_copy(update={"scheme": "auto"})
    first = run_ingest(auto, store)
    assert not first.cached and first.stats["scheme"]["detected"] == "iob1"
    assert first.stats["train"]["iob1_conversions"] == 8
    assert any(r.levelno == logging.INFO and r.getMessage().startswith("IOB1 input") for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    again = run_ingest(declared_iob1, store)
    assert again.cached and again.key == first.key
    assert build_splits(declared_iob1)[2]["fingerprint"] == first.stats["fingerprint"]


def test_a_cached_iob1_dataset_is_refused_when_iob2_is_declared(tmp_path: Path):
    from ner_pipeline import pipeline
    from ner_pipeline.config import PipelineConfig

    store = ArtifactStore(tmp_path / "artifacts")
    folder = shutil.copytree(FIXTURE, tmp_path / "d")
    built = run_ingest(DataConfig(source="conll", path=str(folder), scheme="auto"), store)
    declared = DataConfig(source="conll", path=str(folder), scheme="iob2")
    assert ingest_key(declared) == built.key  # the key leaves the scheme out: a cache hit reads no data
    message = (
        f"{folder / 'train.txt'} line 3: I-ORG at the start of a sentence starts an entity, but data.scheme is "
        "iob2 (entities start with B-); set data.scheme=iob1 or auto if the file is IOB1"
    )
    with pytest.raises(DataError) as reading:
        build_splits(declared)
    with pytest.raises(DataError) as cached:
        run_ingest(declared, store)
    # Looked up by a run that builds only later stages: the walk holds it to the scheme before tokenize starts.
    config = PipelineConfig(artifacts_root=str(store.root), data=declared)
    with pytest.raises(DataError) as looked_up:
        pipeline.run_pipeline(config, store, stages=["tokenize"])
    assert str(reading.value) == str(cached.value) == str(looked_up.value) == message
    assert [a.key for a in store.list()] == [built.key]


def test_a_stray_i_in_jsonl_names_the_record_line_and_token(tmp_path: Path):
    records = [{"tokens": ["Ada", "met", "Bo"], "tags": ["B-PER", "O", "B-PER"]}]
    write(tmp_path / "train.jsonl", jsonl_lines(*records, {"tokens": ["in", "Rome"], "tags": ["O", "I-LOC"]}))
    for split in ("validation", "test"):
        write(tmp_path / f"{split}.jsonl", jsonl_lines(*records))
    with pytest.raises(DataError, match=r"train\.jsonl line 2 token 1: I-LOC after O starts an entity, but"):
        build_splits(DataConfig(source="jsonl", path=str(tmp_path), scheme="iob2"))


def test_empty_split_names_its_file(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", "John B-PER\n", test="-DOCSTART- -X- O\n\n\n")
    with pytest.raises(DataError, match=r"d/test\.txt: the test split is empty"):
        build_splits(DataConfig(source="conll", path=str(folder)))


def test_types_missing_from_train_are_named_with_file_and_line(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", "John B-PER\n", validation="Bob B-PER\n\nAcme B-ORG\nin O\nParis B-LOC\n")
    with pytest.raises(DataError) as caught:
        build_splits(DataConfig(source="conll", path=str(folder)))
    message = str(caught.value)
    assert "validation.txt: validation uses entity types that never occur in train: " in message
    assert (
        "LOC (first in the sentence at validation.txt line 3), ORG (first in the sentence at validation.txt line 3)"
        in message
    )


def test_max_sentences_caps_every_split():
    splits, _, stats = build_splits(DataConfig(source="conll", path=str(FIXTURE), scheme="iob1", max_sentences=1))
    assert {s: len(v) for s, v in splits.items()} == {"train": 1, "validation": 1, "test": 1}
    assert splits["train"][0].tokens[0] == "Acme" and stats["train"]["sentences"] == 1


# --- sources -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "picked"),
    [
        (("train.conll", "dev.txt", "test.conll"), "dev.txt"),
        (("train", "valid", "test"), "valid"),
        (("eng.train", "eng.testa", "eng.testb"), "eng.testa"),
    ],
)
def test_split_files_are_found_by_their_usual_names(tmp_path: Path, names: tuple[str, str, str], picked: str):
    for name in names:
        write(tmp_path / name, "Ann B-PER\n")
    write(tmp_path / picked, "Bo B-PER\n")
    splits, _, _ = build_splits(DataConfig(source="conll", path=str(tmp_path)))
    assert splits["validation"][0].tokens == ["Bo"] and splits["train"][0].tokens == ["Ann"]


def test_folder_without_a_split_lists_the_names_tried(tmp_path: Path):
    write(tmp_path / "train.txt", "Ann B-PER\n")
    write(tmp_path / "test.txt", "Ann B-PER\n")
    with pytest.raises(DataError, match=r"no validation file \(looked for validation\{,\.txt"):
        ingest_key(DataConfig(source="conll", path=str(tmp_path)))


def test_missing_path_is_named(tmp_path: Path):
    with pytest.raises(DataError, match=r"data\.path: .*nowhere does not exist"):
        ingest_key(DataConfig(source="conll", path=str(tmp_path / "nowhere")))


def test_single_conll_file_is_split_by_seed_into_disjoint_parts(tmp_path: Path):
    path = write(tmp_path / "all.conll", "".join(f"w{i} B-PER\nx O\n\n" for i in range(50)))
    cfg = DataConfig(source="conll", path=str(path), split_seed=3)
    splits, _, _ = build_splits(cfg)
    firsts = {s: [sent.tokens[0] for sent in v] for s, v in splits.items()}
    assert [len(v) for v in firsts.values()] == [40, 5, 5]
    assert sorted((w for words in firsts.values() for w in words), key=lambda w: int(w[1:])) == [
        f"w{i}" for i in range(50)
    ]
    assert firsts == {s: [x.tokens[0] for x in v] for s, v in build_splits(cfg)[0].items()}


def test_a_file_too_small_to_split_says_so(tmp_path: Path):
    path = write(tmp_path / "tiny.txt", "Ann B-PER\n\nBo B-PER\n")
    with pytest.raises(DataError, match=r"tiny\.txt \(2 sentences split 0\.8/0\.1/0\.1 by seed 13\): the validation"):
        build_splits(DataConfig(source="conll", path=str(path)))


def test_jsonl_folder_gives_the_same_content_as_conll(tmp_path: Path):
    conll = read_conll(FIXTURE / "train.txt")
    for split in ("train", "validation", "test"):
        records = [
            {"tokens": s.tokens, "tags": s.tags, "document_id": s.document_id}
            for s in read_conll(FIXTURE / f"{split}.txt")
        ]
        write(tmp_path / f"{split}.jsonl", jsonl_lines(*records))
    from_jsonl, labels, stats = build_splits(DataConfig(source="jsonl", path=str(tmp_path), scheme="iob1"))
    from_conll, _, conll_stats = build_splits(DataConfig(source="conll", path=str(FIXTURE), scheme="iob1"))
    assert [(s.document_id, s.position) for s in from_jsonl["train"]] == [(s.document_id, s.position) for s in conll]
    assert labels == CONLL_LABELS
    assert (
        stats["fingerprint"]
        == conll_stats["fingerprint"]
        == fingerprint(s for split in ("train", "validation", "test") for s in from_conll[split])
    )


def test_jsonl_lines_without_document_id_are_separate_documents(tmp_path: Path):
    path = write(
        tmp_path / "a.jsonl",
        jsonl_lines(
            {"tokens": ["Ada"], "tags": ["B-PER"]}, {"tokens": [], "tags": []}, {"tokens": ["x"], "tags": ["O"]}
        )
        + "\n",
    )
    sentences = read_jsonl(path)
    assert [(s.tokens, s.document_id, s.position) for s in sentences] == [(["Ada"], 0, 0), (["x"], 1, 0)]
    assert sentences[1].origin == "a.jsonl line 3"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"tokens": ["Ada"], "tags": ["B-PER", "O"]}', "1 tokens but 2 tags"),
        ('{"tokens": [\n', "not valid JSON"),
        ('{"tokens": ["Ada"]}', 'expected an object with "tokens" and "tags"'),
        ('["Ada", "B-PER"]', 'expected an object with "tokens" and "tags"'),
        ('{"tokens": "Ada", "tags": "O"}', '"tokens" and "tags" must be lists'),
        ('{"tokens": ["Ada"], "tags": [3]}', "token 0: tag 3 is not O, B-<type> or I-<type>"),
        ('{"tokens": ["Ada", "x"], "tags": ["O", "PER"]}', "token 1: tag 'PER' is not O, B-<type> or I-<type>"),
        ('{"tokens": [""], "tags": ["O"]}', "token 0 is ''; every token must be a non-empty string"),
        ('{"tokens": ["Ada"], "tags": ["O"], "document_id": "x"}', "document_id must be an integer"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path: Path, line: str, error: str):
    path = write(tmp_path / "data.jsonl", jsonl_lines({"tokens": ["ok"], "tags": ["O"]}) + line + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl line 2[ :]") as caught:
        read_jsonl(path)
    assert error in str(caught.value)


def test_wnut16_split_is_deterministic_disjoint_and_complete():
    cfg = DataConfig(source="wnut16", path=None, scheme="iob2")
    splits, labels, _ = build_splits(cfg)
    again, _, _ = build_splits(cfg)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 1915, "validation": 239, "test": 240}
    origins = [s.origin for v in splits.values() for s in v]
    assert len(set(origins)) == len(origins) == 2394  # every sentence of the file in exactly one split
    assert [s.tokens for s in splits["test"]] == [s.tokens for s in again["test"]]
    assert "B-person" in labels and labels[0] == "O"
    other, _, _ = build_splits(cfg.model_copy(update={"split_seed": 99}))
    assert [s.tokens for s in other["test"]] != [s.tokens for s in splits["test"]]


def fake_hub_dataset(tags_as_strings: bool = False, splits: tuple[str, ...] = ("train", "validation", "test")):
    """An in-memory DatasetDict shaped like the Hub's conll2003: IOB2 ClassLabel names in the Hub's order."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    ids = [[3, 0, 7, 0], [1, 2]]
    tag_feature = datasets.Value("string") if tags_as_strings else datasets.ClassLabel(names=names)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(tag_feature),
        }
    )
    rows = {
        "id": ["0", "1"],
        "tokens": [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]],
        "ner_tags": [[names[i] for i in s] for s in ids] if tags_as_strings else ids,
    }
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(rows, features=features) for s in splits})


def patch_hub_download(monkeypatch: pytest.MonkeyPatch, dataset) -> list[tuple]:
    """The Hub is unreachable here: replace only `datasets.load_dataset` (the download), not our conversion."""
    import datasets

    calls: list[tuple] = []

    def fake_load_dataset(path, name=None, revision=None):
        calls.append((path, name, revision))
        return dataset

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_source_maps_class_label_ids_to_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls = patch_hub_download(monkeypatch, fake_hub_dataset())
    cfg = DataConfig(source="hub", path="conll2003", hub_config="default", revision="abc123")
    artifact = run_ingest(cfg, ArtifactStore(tmp_path))
    assert calls == [("conll2003", "default", "abc123")]
    data = load_splits(artifact)
    labels = read_labels(artifact)
    assert labels == ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert [labels[i] for i in data["train"][0]["ner_tags"]] == ["B-ORG", "O", "B-MISC", "O"]
    assert data["test"]["document_id"] == [0, 1] and artifact.stats["train"]["repairs"] == 0
    assert ingest_key(cfg) != ingest_key(cfg.model_copy(update={"revision": "def456"}))


def test_hub_source_accepts_string_tags(monkeypatch: pytest.MonkeyPatch):
    patch_hub_download(monkeypatch, fake_hub_dataset(tags_as_strings=True))
    splits, _, _ = build_splits(DataConfig(source="hub", path="some/dataset"))
    assert splits["validation"][1].tags == ["B-PER", "I-PER"]


def hub_dataset_of(tags: list[list[str]], names: list[str] | None = None):
    """A DatasetDict with the same rows in every split: tags as strings, or as ClassLabel ids over `names`."""
    import datasets

    feature = datasets.ClassLabel(names=names) if names else datasets.Value("string")
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": datasets.Sequence(feature)}
    )
    rows = {"tokens": [[f"w{i}" for i in range(len(t))] for t in tags], "ner_tags": tags}
    if names:
        rows["ner_tags"] = [[names.index(tag) for tag in t] for t in tags]
    return datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "validation", "test")}
    )


def test_hub_chunk_tags_and_stray_i_tags_name_split_row_and_token(monkeypatch: pytest.MonkeyPatch):
    names = ["O", "B-NP", "I-NP", "B-VP"]
    patch_hub_download(monkeypatch, hub_dataset_of([["B-NP", "I-NP", "B-VP"]], names))
    with pytest.raises(DataError, match=r"ClassLabel names of column 'ner_tags': tag 'B-NP' is a phrase-chunk tag"):
        build_splits(DataConfig(source="hub", path="chunks"))

    patch_hub_download(monkeypatch, hub_dataset_of([["B-PER", "O"], ["B-PER", "O", "I-LOC"]]))
    with pytest.raises(DataError) as caught:
        build_splits(DataConfig(source="hub", path="some/dataset", scheme="iob2"))
    assert str(caught.value).startswith(
        "Hub dataset 'some/dataset' split 'train' row 1 token 2: I-LOC after O starts an entity, but data.scheme is "
        "iob2"
    )


def test_hub_dataset_without_a_split_is_named(monkeypatch: pytest.MonkeyPatch):
    patch_hub_download(monkeypatch, fake_hub_dataset(splits=("train", "test")))
    with pytest.raises(DataError, match="Hub dataset 'conll2003' has no 'validation' split \\(has train, test\\)"):
        build_splits(DataConfig(source="hub", path="conll2003"))


@pytest.mark.parametrize(
    ("failure", "transient"),
    [
        (ConnectionError("offline"), True),  # the flow's ingest task retries this one
        (FileNotFoundError("Dataset 'conll2003' doesn't exist on the Hub"), False),  # retrying cannot help
    ],
    ids=["unreachable", "missing"],
)
def test_hub_download_failure_is_a_data_error_retried_only_when_transient(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, transient: bool
):
    import datasets

    def download(*args, **kwargs):
        raise failure

    monkeypatch.setattr(datasets, "load_dataset", download)
    with pytest.raises(DataError, match=f"could not load Hub dataset 'conll2003': {failure}") as raised:
        build_splits(DataConfig(source="hub", path="conll2003"))
    assert raised.value.transient is transient
    assert isinstance(raised.value, SourceUnavailableError) is transient


def test_script_based_hub_dataset_is_read_from_its_parquet_conversion(monkeypatch: pytest.MonkeyPatch):
    """The Hub is unreachable here: only `load_dataset` is replaced, answering as datasets >= 4 does for
    `conll2003` (a loading script) and then with the Parquet copy; our conversion runs for real."""
    import datasets

    calls: list[str | None] = []

    def hub(path, name=None, revision=None):
        calls.append(revision)
        if revision != "refs/convert/parquet":  # the repository itself holds only the loading script
            raise RuntimeError("Dataset scripts are no longer supported, but found conll2003.py")
        return fake_hub_dataset()

    monkeypatch.setattr(datasets, "load_dataset", hub)
    splits, labels, _ = build_splits(DataConfig(source="hub", path="conll2003"))
    assert calls == [None, "refs/convert/parquet"]
    assert splits["train"][0].tags == ["B-ORG", "O", "B-MISC", "O"] and labels[0] == "O"

    calls.clear()  # a pinned revision is the user's choice: no silent switch to another one
    with pytest.raises(DataError, match="scripts are no longer supported"):
        build_splits(DataConfig(source="hub", path="conll2003", revision="main"))
    assert calls == ["main"]


# --- the artifact --------------------------------------------------------------------------------------------


def test_artifact_is_cached_and_a_changed_file_is_ingested_again(tmp_path: Path):
    folder = shutil.copytree(FIXTURE, tmp_path / "d")
    cfg = DataConfig(source="conll", path=str(folder), scheme="iob1")
    store = ArtifactStore(tmp_path / "artifacts")
    first = run_ingest(cfg, store)
    assert not first.cached and run_ingest(cfg, store).cached
    assert run_ingest(cfg.model_copy(update={"max_sentences": 2}), store).key != first.key
    (folder / "test.txt").write_text((folder / "test.txt").read_text().replace("Carl", "Karl"))
    changed = run_ingest(cfg, store)
    assert changed.key != first.key and not changed.cached
    assert changed.stats["fingerprint"] != first.stats["fingerprint"]
    assert changed.stats["test_fingerprint"] != first.stats["test_fingerprint"]


def test_artifact_holds_the_contracted_columns_and_files(tmp_path: Path):
    artifact = run_ingest(DataConfig(source="conll", path=str(FIXTURE), scheme="iob1"), ArtifactStore(tmp_path))
    assert read_labels(artifact) == CONLL_LABELS
    assert json.loads((artifact.path / "stats.json").read_text()) == artifact.stats
    data = load_splits(artifact)
    assert list(data) == ["train", "validation", "test"]
    train = data["train"]
    assert train.column_names == ["id", "tokens", "ner_tags", "document_id", "position"]
    assert train.features["ner_tags"].feature.names == CONLL_LABELS
    assert train["id"] == [0, 1, 2, 3, 4]
    assert list(zip(train["document_id"], train["position"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert train[1]["tokens"] == ["The", "Norwegian", "office", "opened", "Monday", "."]
    assert train[1]["ner_tags"] == [0, CONLL_LABELS.index("B-MISC"), 0, 0, 0, 0]


def test_stats_table_is_aligned_and_shows_every_type():
    _, _, stats = build_splits(DataConfig(source="conll", path=str(FIXTURE), scheme="iob1"))
    lines = stats_table(stats).splitlines()
    assert lines[0].split() == [
        "split",
        "documents",
        "sentences",
        "tokens",
        "LOC",
        "MISC",
        "ORG",
        "PER",
        "iob1_conversions",
    ]
    assert lines[2].split() == ["train", "2", "5", "28", "4", "1", "2", "2", "8"]
    assert lines[4].split() == ["test", "2", "2", "9", "1", "1", "1", "1", "4"]
    assert len({len(line) for line in lines}) == 1


def test_stats_table_names_both_counters_when_splits_differ_in_scheme(tmp_path: Path):
    folder = conll_folder(tmp_path / "d", "Ann I-PER\nsaid O\n", validation="Bo B-PER\n", test="Cy B-PER\n")
    _, _, stats = build_splits(DataConfig(source="conll", path=str(folder)))
    assert stats["scheme"]["splits"] == {"train": "iob1", "validation": "iob2", "test": "iob2"}
    assert stats["scheme"]["detected"] == "mixed"  # IOB1 train, IOB2 validation and test: a mix of files
    lines = stats_table(stats).splitlines()
    assert lines[0].split()[-1] == "iob1_conversions/repairs"
    assert [line.split()[-1] for line in lines[2:]] == ["1", "0", "0"]


# --- scoring data --------------------------------------------------------------------------------------------


def test_single_file_is_read_as_iob2(tmp_path: Path):
    path = write(tmp_path / "new.conll", "Acme I-ORG\nhired O\nBob I-PER\n\n")
    assert read_single_file(path)[0].tags == ["B-ORG", "O", "B-PER"]
    splits = read_evaluation_data(str(path), DataConfig())
    assert list(splits) == ["test"] and splits["test"][0].tags == ["B-ORG", "O", "B-PER"]


def test_single_file_without_sentences_is_an_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"empty\.txt: no sentences"):
        read_single_file(write(tmp_path / "empty.txt", "-DOCSTART- -X- O\n\n"))


def test_evaluation_folder_is_read_even_when_the_config_reads_wnut16():
    quickstart = DataConfig(source="wnut16", path=None, scheme="iob2")
    splits = read_evaluation_data(str(FIXTURE), quickstart)
    assert [len(splits[s]) for s in ("validation", "test")] == [2, 2]  # the folder's, not WNUT-16's
    assert splits["test"][1].tags == ["B-LOC", "O", "B-MISC", "O"]


def test_evaluation_folder_gives_validation_and_test(tmp_path: Path):
    splits = read_evaluation_data(str(FIXTURE), DataConfig(source="conll", path="unused"))
    assert list(splits) == ["validation", "test"]
    assert splits["test"][1].tags == ["B-LOC", "O", "B-MISC", "O"]


# --- CoNLL-2003 and the CLI ----------------------------------------------------------------------------------


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
    assert [stats[s]["documents"] for s in ("train", "validation", "test")] == [946, 216, 231]
    assert read_labels(artifact) == CONLL_LABELS
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
