import dataclasses
import json
import re

import pytest

from frugalray import FrugalrayError, TaskSpec, load_task
from frugalray.data.encoding import align_labels, encode_examples, length_grouped_batches, collate
from frugalray.data.readers import read_conll, read_text_classification
from frugalray.data.metrics import METRICS
from frugalray.model.loading import load_tokenizer
from frugalray.data.tasks import TASKS


def test_conll_sentences_documents_and_columns(data_dir):
    sentences = read_conll(data_dir / "ner_train.conll")
    assert [len(s.words) for s in sentences] == [6, 7, 8, 5]
    assert sentences[0].words[:2] == ("Marie", "Dupont")
    assert sentences[0].labels[:2] == ("B-PER", "I-PER")
    assert sentences[1].origin.endswith("ner_train.conll:10")


def test_conll_with_chosen_columns_and_comments(data_dir):
    sentences = read_conll(data_dir / "pos_multi.conll", token_column=1, tag_column=3, separator="\t",
                           comment_prefix="#")
    assert [s.words for s in sentences] == [("Le", "chat", "dort"), ("Le", "chien", "mange")]
    assert sentences[1].labels == ("DET", "NOUN", "VERB")


def test_malformed_conll_names_file_and_line(data_dir):
    with pytest.raises(FrugalrayError, match=r"ner_malformed.conll:3: malformed CoNLL line 'habite'"):
        read_conll(data_dir / "ner_malformed.conll")


def test_unseen_dev_label_names_file_and_line(data_dir):
    spec = TaskSpec(name="t", head="token", metric="ner", format="conll", data_dir=str(data_dir),
                    train="ner_train.conll", dev="ner_unseen_dev.conll", test="ner_test.conll")
    with pytest.raises(FrugalrayError, match=r"ner_unseen_dev.conll:4: dev label 'B-GPE' .* never occurs in train"):
        load_task(spec)


def test_non_iob_tags_are_refused_for_ner(data_dir):
    spec = TaskSpec(name="t", head="token", metric="ner", format="conll", data_dir=str(data_dir),
                    train="pos_multi.conll", dev="pos_multi.conll", test="pos_multi.conll", token_column=1,
                    tag_column=2, comment_prefix="#", separator="\t")
    with pytest.raises(FrugalrayError, match="not an IOB"):
        load_task(spec)


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(FrugalrayError, match="licensed"):
        load_task("ftb_pos", data_dir=str(tmp_path))
    with pytest.raises(FrugalrayError, match="does not exist"):
        load_task("ftb_ner", data_dir=str(tmp_path / "nowhere"))


def test_unknown_task_suggests_the_closest():
    with pytest.raises(FrugalrayError, match="Unknown task 'wikiner_ner'. Did you mean 'wikiner'"):
        load_task("wikiner_ner")


def test_task_file_reads_relative_paths(ner_task_file):
    task = load_task(ner_task_file)
    assert task.name == "tiny_ner"
    assert (len(task.train), len(task.dev), len(task.test)) == (4, 1, 2)
    assert task.labels == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-MISC", "I-PER", "O"]


def test_a_task_is_parsed_once_while_its_files_are_unchanged(tmp_path, monkeypatch):
    """Trial after trial in one worker reads the same task: its files are parsed once, a changed file is read
    again, and what one caller does to the lists it got never reaches the next."""
    import frugalray.data.tasks as tasks

    path = tmp_path / "train.conll"
    path.write_text("Marie\tB-PER\nvit\tO\n\n" * 5, encoding="utf-8")
    spec = TaskSpec(name="t", head="token", metric="ner", format="conll", data_dir=str(tmp_path),
                    train="train.conll", dev_fraction=0.2, test_fraction=0.2)
    parsed = []
    monkeypatch.setattr(tasks, "read_conll", lambda *args: parsed.append(args[0]) or read_conll(*args))
    first = load_task(spec)
    first.train.clear()  # a caller that shuffles or filters its copy
    again = load_task(spec)
    assert len(parsed) == 1 and len(again.train) == 3
    assert again.fingerprint == first.fingerprint
    path.write_text("Paul\tB-PER\nvit\tO\n\n" * 3, encoding="utf-8")
    changed = load_task(spec)
    assert len(parsed) == 2 and len(changed.train) == 1 and changed.fingerprint != first.fingerprint


def test_task_file_with_unknown_key_fails(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"name": "x", "head": "token", "metric": "ner", "format": "conll",
                                "train": "a.conll", "tag_col": 2}))
    with pytest.raises(FrugalrayError, match="unknown key 'tag_col'.*Did you mean 'tag_column'"):
        load_task(str(path))


def test_seeded_split_when_only_train_is_given(data_dir):
    spec = TaskSpec(name="t", head="sequence", metric="classification", format="jsonl", data_dir=str(data_dir),
                    train="sentiment.jsonl", dev_fraction=0.25, test_fraction=0.25, split_seed=3)
    first, again = load_task(spec), load_task(spec)
    assert (len(first.train), len(first.dev), len(first.test)) == (2, 1, 1)
    assert [e.text for e in first.test] == [e.text for e in again.test]
    texts = {e.text for part in (first.train, first.dev, first.test) for e in part}
    assert len(texts) == 4


def test_jsonl_csv_readers(data_dir):
    rows = read_text_classification(data_dir / "sentiment.jsonl", "text", "label")
    assert (rows[0].text, rows[0].labels) == ("un film magnifique", "positive")
    rows = read_text_classification(data_dir / "sentiment.csv", "review", "polarity")
    assert [r.labels for r in rows] == ["positive", "negative"]
    assert rows[1].origin.endswith("sentiment.csv:3")
    with pytest.raises(FrugalrayError, match=r"sentiment_bad.jsonl:2: not valid JSON"):
        read_text_classification(data_dir / "sentiment_bad.jsonl", "text", "label")
    with pytest.raises(FrugalrayError, match="missing field 'text'"):
        read_text_classification(data_dir / "sentiment.csv", "text", "polarity")


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["bon", "mauvais"], "label": [1, 0]}), tmp_path / "d.parquet")
    rows = read_text_classification(tmp_path / "d.parquet", "text", "label")
    assert [(r.text, r.labels) for r in rows] == [("bon", "1"), ("mauvais", "0")]


def test_hf_dataset_task_maps_class_labels_and_samples(monkeypatch):
    import datasets

    features = datasets.Features({"review": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    splits = {
        "train": datasets.Dataset.from_dict({"review": [f"r{i}" for i in range(40)], "label": [i % 2 for i in range(40)]},
                                            features=features),
        "validation": datasets.Dataset.from_dict({"review": ["v"], "label": [1]}, features=features),
        "test": datasets.Dataset.from_dict({"review": ["t"], "label": [0]}, features=features),
    }
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, split))
        return splits[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = load_task(dataclasses.replace(TASKS.get("allocine"), train_fraction=0.25))
    assert calls == [("tblard/allocine", "train"), ("tblard/allocine", "validation"), ("tblard/allocine", "test")]
    assert len(task.train) == 10  # a seeded 25% sample
    assert task.labels == ["neg", "pos"]
    assert task.test[0].labels == "neg"
    assert task.fingerprint.startswith("hf:")


def test_hub_task_offline_says_what_to_do():
    with pytest.raises(FrugalrayError, match="Could not load the Hugging Face dataset 'tblard/allocine'.*local files"):
        load_task("allocine")


def test_builtin_study_tasks_are_registered():
    assert {"wikiner", "ftb_ner", "ftb_pos", "allocine"} <= set(TASKS.names())
    assert TASKS.get("allocine").train_fraction == 0.1


def test_demo_tasks_load_with_disjoint_splits():
    for name in ("demo_pos", "demo_ner", "demo_sentiment"):
        task = load_task(name)
        assert len(task.train) > 100 and len(task.dev) > 20 and len(task.test) > 20
        train_text = {e.words or e.text for e in task.train}
        assert not train_text & {e.words or e.text for e in task.test}


def test_first_subtoken_gets_the_label():
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [5, 6, 7]) == (
        [-100, 5, -100, 6, 7, -100, -100, -100], [1, 3, 4])


def test_alignment_with_a_real_wordpiece_tokenizer():
    from frugalray.data.readers import Example

    tokenizer = load_tokenizer("minilm")
    example = Example(labels=("B-PER", "O", "B-LOC"), origin="x:1", words=("Dupont", "habite", "Boulogne-Billancourt"))
    [encoded] = encode_examples([example], tokenizer, {"O": 0, "B-PER": 1, "B-LOC": 2}, max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    labelled = [(t, l) for t, l in zip(tokens, encoded.labels) if l != -100]
    assert [l for _, l in labelled] == [1, 0, 2]
    assert [t for t, _ in labelled] == [tokens[p] for p in encoded.word_positions]
    assert len(tokens) > 5  # the place name splits into several sub-tokens, only the first is labelled
    assert tokens[0] == "[CLS]" and encoded.labels[0] == -100


def test_truncated_words_have_no_position():
    from frugalray.data.readers import Example

    tokenizer = load_tokenizer("minilm")
    example = Example(labels=("O",) * 20, origin="x:1", words=("le",) * 20)
    [encoded] = encode_examples([example], tokenizer, {"O": 0}, max_length=8)
    assert len(encoded.input_ids) == 8
    assert encoded.word_positions[:6] == [1, 2, 3, 4, 5, 6] and encoded.word_positions[6:] == [None] * 14


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47] * 4
    batches = length_grouped_batches(lengths, 4, seed=1, megabatch=50)
    assert sorted(i for b in batches for i in b) == list(range(32))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 3 for b in batches)
    assert batches == length_grouped_batches(lengths, 4, seed=1, megabatch=50)


def test_uniform_shuffling_is_the_default_and_mixes_lengths():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47] * 4
    plain = length_grouped_batches(lengths, 4, seed=1)
    assert sorted(i for b in plain for i in b) == list(range(32))
    assert any(max(lengths[i] for i in b) - min(lengths[i] for i in b) > 3 for b in plain)
    assert plain != length_grouped_batches(lengths, 4, seed=2)


def test_larger_length_groups_pad_less():
    import random

    lengths = [random.Random(i).randint(3, 60) for i in range(400)]

    def padding(megabatch: int) -> int:
        batches = length_grouped_batches(lengths, 8, seed=0, megabatch=megabatch)
        assert sorted(i for b in batches for i in b) == list(range(400))
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(0) > padding(2) > padding(8) > padding(50)


def test_collate_pads_to_the_longest_in_the_batch():
    from frugalray.data.encoding import Encoded

    batch = collate([Encoded([1, 5, 2], [-100, 3, -100], [1]), Encoded([1, 2], [-100, -100], [])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 3, -100], [-100, -100, -100]]


def test_ner_metrics_on_known_predictions():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    result = METRICS.get("ner")(gold, predicted)
    # entities: gold PER, LOC, ORG; predicted PER (ok), ORG (ok), LOC (wrong place)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_pos_metrics_on_known_predictions():
    gold = [["DET", "NOUN", "VERB"], ["DET", "NOUN"]]
    predicted = [["DET", "NOUN", "NOUN"], ["DET", "VERB"]]
    result = METRICS.get("pos")(gold, predicted)
    assert result["accuracy"] == pytest.approx(3 / 5) == result["f1"]
    # per-tag F1: DET 1.0, NOUN 2*(1/2*1/2)/(1) = 0.5, VERB 0.0 -> macro 0.5
    assert result["f1_macro"] == pytest.approx(0.5)


def test_classification_metrics_on_known_predictions():
    result = METRICS.get("classification")(["pos", "pos", "neg", "neg"], ["pos", "neg", "neg", "neg"])
    assert result["accuracy"] == 0.75
    # pos: P 1, R 0.5, F1 2/3; neg: P 2/3, R 1, F1 0.8
    assert result["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["recall"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx((2 / 3 + 0.8) / 2)


# -- odd input: encodings, columns, field types ------------------------------------------------------------
BOM = "\ufeff".encode()


def test_a_bom_is_not_part_of_the_first_conll_token(tmp_path):
    path = tmp_path / "bom.conll"
    path.write_bytes(BOM + "Marie B-PER\nDupont I-PER\n".encode())
    [sentence] = read_conll(path)
    assert sentence.words == ("Marie", "Dupont") and sentence.labels == ("B-PER", "I-PER")


@pytest.mark.parametrize("name,text_field,content", [
    ("d.jsonl", "text", '{"text": "un film", "label": "positive"}\n'),
    ("d.csv", "review", "review,label\nun film,positive\n"),
    ("d.tsv", "review", "review\tlabel\nun film\tpositive\n"),
])
def test_jsonl_and_csv_with_a_bom_are_read(tmp_path, name, text_field, content):
    path = tmp_path / name
    path.write_bytes(BOM + content.encode())
    [row] = read_text_classification(path, text_field, "label")
    assert (row.text, row.labels, row.origin) == ("un film", "positive", f"{path}:{2 if name != 'd.jsonl' else 1}")


@pytest.mark.parametrize("name,content", [
    ("latin1.conll", "Marie B-PER\n\nJos\xe9 B-PER\n"),
    ("latin1.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "\xe9t\xe9", "label": "y"}\n'),
    ("latin1.csv", "text,label\na,x\n\xe9t\xe9,y\n"),
])
def test_a_file_that_is_not_utf8_names_file_line_and_the_fix(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    read = (lambda: read_conll(path)) if name.endswith(".conll") else (
        lambda: read_text_classification(path, "text", "label"))
    with pytest.raises(FrugalrayError, match=rf"{name}:3: not UTF-8 text .*iconv -f latin1 -t utf-8"):
        read()


def test_a_task_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "task.json"
    path.write_bytes('{"name": "t",\n "description": "donn\xe9es"}'.encode("latin-1"))
    with pytest.raises(FrugalrayError, match=r"task.json:2: not UTF-8"):
        load_task(str(path))


@pytest.mark.parametrize("columns,line", [
    (dict(token_column=-2), "habite"),  # one column: no word left of the tag
    (dict(token_column=0, tag_column=2, separator="\t"), "Paris\t\t"),  # an empty tag column
    (dict(token_column=0, tag_column=-1, separator="\t"), "\tO"),  # an empty word
])
def test_conll_lines_without_a_word_and_a_tag_are_malformed(tmp_path, columns, line):
    path = tmp_path / "d.conll"
    path.write_text(f"Marie\tx\tB-PER\n{line}\n", encoding="utf-8")
    with pytest.raises(FrugalrayError, match=r"d.conll:2: malformed CoNLL line"):
        read_conll(path, **columns)


@pytest.mark.parametrize("row,message", [
    ({"text": "a", "label": ["x"]}, r"label field 'label' must be text or an integer, got \['x'\] \(list\)"),
    ({"text": "a", "label": 1.0}, r"label field .label. must be text or an integer, got 1.0 \(float\)"),
    ({"text": ["a"], "label": "x"}, r"field 'text' must be text, got \['a'\] \(list\)"),
])
def test_text_rows_with_odd_values_are_refused(tmp_path, row, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(FrugalrayError, match=rf"d.jsonl:1: {message}"):
        read_text_classification(path, "text", "label")


def test_csv_rows_are_named_by_their_line_and_bad_csv_is_an_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"deux\nlignes",x\n\nfin,y\n', encoding="utf-8")
    rows = read_text_classification(path, "text", "label")
    assert [(r.text, r.origin.rpartition(":")[2]) for r in rows] == [("deux\nlignes", "3"), ("fin", "5")]
    path.write_text("text,label\n" + "x" * 200_000 + ",y\n", encoding="utf-8")  # beyond csv's field limit
    with pytest.raises(FrugalrayError, match=r"d.csv:2: not valid CSV"):
        read_text_classification(path, "text", "label")


def test_a_broken_parquet_file_is_a_clear_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(FrugalrayError, match="not a readable Parquet file"):
        read_text_classification(path, "text", "label")


TASK = {"name": "t", "head": "token", "metric": "pos", "format": "conll", "train": "a.conll"}


@pytest.mark.parametrize("change,message", [
    ({"tag_column": "1"}, r"tag_column must be int, got '1' \(str\)"),
    ({"token_column": True}, r"token_column must be int, got True \(bool\)"),
    ({"licensed": "false"}, r"licensed must be bool, got 'false' \(str\)"),
    ({"train": ["a.conll"]}, r"train must be str or None, got \['a.conll'\] \(list\)"),
    ({"train_fraction": "0.5"}, r"train_fraction must be float, got '0.5' \(str\)"),
    ({"dev_fraction": float("nan")}, r"dev_fraction must be a finite number, got nan \(float\)"),
    ({"name": None}, r"name must be str, got None \(NoneType\)"),
    ({"head": None, "metric": None}, r"head must be str"),
])
def test_task_file_values_are_type_checked(tmp_path, change, message):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(TASK | change), encoding="utf-8")
    with pytest.raises(FrugalrayError, match=rf"^{re.escape(str(path))}: {message}"):
        load_task(str(path))


def test_task_spec_checks_types_when_built_in_python_too():
    with pytest.raises(FrugalrayError, match=r"Task 't': tag_column must be int, got '1' \(str\)"):
        TaskSpec(**TASK, tag_column="1")
    assert TaskSpec(**TASK, train_fraction=1).train_fraction == 1  # an int is a float
    with pytest.raises(FrugalrayError, match="token_column and tag_column are both 1"):
        TaskSpec(**TASK, token_column=1, tag_column=1)


def test_task_file_missing_a_required_key(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"name": "t", "head": "token", "format": "conll"}), encoding="utf-8")
    with pytest.raises(FrugalrayError, match=r"task.json: missing key\(s\) metric for TaskSpec"):
        load_task(str(path))


def test_csv_rows_with_more_fields_than_the_header_are_refused(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nun film, magnifique,positive\n", encoding="utf-8")  # unquoted comma
    with pytest.raises(FrugalrayError, match=r"d.csv:2: 3 fields, the header has 2; quote a field that contains ','"):
        read_text_classification(path, "text", "label")
    path.write_text("text,label,text\na,b,c\n", encoding="utf-8")
    with pytest.raises(FrugalrayError, match=r"d.csv:1: column\(s\) \['text'\] appear more than once"):
        read_text_classification(path, "text", "label")
