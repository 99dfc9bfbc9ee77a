"""Tests of the sample loaders in gradients.data."""

import gzip
import json

import pytest

from gradients.data import (
    Sample,
    bigbench_answer,
    load_bigbench_task,
    load_humaneval,
    load_samples,
    write_jsonl,
)
from idopt.errors import InvalidInputError


def write_lines(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


TULU_RECORD = {
    "dataset": "flan_v2",
    "id": "flan_v2_7",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Sum 2 and 2?"},
        {"role": "assistant", "content": "4"},
    ],
}


def test_jsonl_messages_keeps_id_source(tmp_path):
    path = write_lines(tmp_path / "tulu.jsonl", [TULU_RECORD])
    [sample] = load_samples(path)
    assert sample.id == "flan_v2_7"
    assert sample.source == "flan_v2"
    assert sample.messages == TULU_RECORD["messages"]


def test_jsonl_prompt_completion_defaults(tmp_path):
    path = write_lines(
        tmp_path / "pc.jsonl", [{"prompt": "a?", "completion": "b"}, {"prompt": "c?", "completion": "d"}]
    )
    samples = load_samples(path)
    assert [sample.id for sample in samples] == ["pc:0", "pc:1"]
    assert [sample.source for sample in samples] == ["pc", "pc"]
    assert samples[1].messages == [
        {"role": "user", "content": "c?"},
        {"role": "assistant", "content": "d"},
    ]


def test_source_argument_overrides(tmp_path):
    path = write_lines(tmp_path / "tulu.jsonl", [TULU_RECORD])
    [sample] = load_samples(path, source="mine")
    assert sample.source == "mine"


def test_id_field_used(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{"key": 5, "prompt": "p", "completion": "c"}])
    [sample] = load_samples(path, id_field="key")
    assert sample.id == "5"


def test_id_field_missing_names_record(tmp_path):
    path = write_lines(
        tmp_path / "x.jsonl",
        [{"key": 5, "prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"}],
    )
    with pytest.raises(InvalidInputError, match=r"record 2.*'key'"):
        load_samples(path, id_field="key")


def test_duplicate_ids_rejected(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [dict(TULU_RECORD), dict(TULU_RECORD)])
    with pytest.raises(InvalidInputError, match="already used by record 1"):
        load_samples(path)


def test_bigbench_json_object(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps(
            {
                "name": "toy_task",
                "examples": [
                    {"input": "  1 + 1 =  ", "target": ["2", "two"]},
                    {"input": "Pick", "target_scores": {"a": 0, "b": 1, "c": 1}},
                ],
            }
        )
    )
    samples = load_samples(path)
    assert [sample.id for sample in samples] == ["toy_task:0", "toy_task:1"]
    assert samples[0].messages[0]["content"] == "  1 + 1 =  "
    assert samples[0].messages[1]["content"] == "2"
    assert samples[1].messages[1]["content"] == "b"


def test_json_list(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"prompt": "p", "completion": "c"}]))
    [sample] = load_samples(path)
    assert sample.id == "list:0"


@pytest.mark.parametrize(
    "record, answer",
    [
        ({"target": "x"}, "x"),
        ({"target": ["first", "second"]}, "first"),
        ({"target": "t", "target_scores": {"s": 1}}, "t"),
        ({"target_scores": {"low": 0.1, "high": 0.9}}, "high"),
        ({"target_scores": {"tie_a": 1, "tie_b": 1, "zero": 0}}, "tie_a"),
        ({"target_scores": {"zero": 0, "tie_b": 1, "tie_a": 1}}, "tie_b"),
    ],
)
def test_bigbench_answer_cases(record, answer):
    assert bigbench_answer(record, "here") == answer


@pytest.mark.parametrize(
    "record",
    [{"target": []}, {"target": 3}, {"target_scores": {}}, {"target_scores": {"a": "high"}}],
)
def test_bigbench_answer_invalid(record):
    with pytest.raises(InvalidInputError, match="here"):
        bigbench_answer(record, "here")


@pytest.mark.parametrize(
    "record, message",
    [
        ({"text": "x"}, "none of the fields"),
        ({"prompt": "x"}, "'completion'"),
        ({"input": "x"}, "'target' or 'target_scores'"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
        ({"messages": [{"role": "user"}]}, "'content'"),
    ],
)
def test_invalid_record_names_file_index(tmp_path, record, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "ok"}, record])
    with pytest.raises(InvalidInputError, match=message) as error:
        load_samples(path)
    assert "bad.jsonl, record 2" in str(error.value)


def test_invalid_record_lists_formats(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(InvalidInputError, match="accepted record formats"):
        load_samples(path)


def test_bad_json_line_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        load_samples(path)


def test_missing_path_and_suffix(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_samples(tmp_path / "nope.jsonl")
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(InvalidInputError, match="unknown suffix"):
        load_samples(other)
    with pytest.raises(InvalidInputError, match="save_to_disk"):
        load_samples(tmp_path)


def test_parquet_roundtrip(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet

    # Two formats in one file: each row has None in the other format's columns.
    table = pyarrow.Table.from_pydict(
        {
            "id": [TULU_RECORD["id"], "z"],
            "dataset": [TULU_RECORD["dataset"], None],
            "messages": [TULU_RECORD["messages"], None],
            "prompt": [None, "p"],
            "completion": [None, "c"],
        }
    )
    pyarrow.parquet.write_table(table, tmp_path / "mix.parquet")
    samples = load_samples(tmp_path / "mix.parquet")
    assert samples[0].messages == TULU_RECORD["messages"]
    assert samples[1].id == "z"
    assert samples[1].source == "mix"


def test_datasets_saved_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"prompt": "p1", "completion": "c1", "task": "t"}])
    dataset.save_to_disk(str(tmp_path / "saved"))
    [from_folder] = load_samples(tmp_path / "saved")
    [from_object] = load_samples(dataset)
    assert from_folder == from_object
    assert from_folder.source == "t"
    assert from_folder.id == "t:0"


def test_datasetdict_many_splits_rejected():
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}])
    with pytest.raises(InvalidInputError, match="splits"):
        load_samples(datasets.DatasetDict({"train": split, "test": split}))


def test_write_jsonl_roundtrip(tmp_path):
    samples = [
        Sample("a:1", "a", [{"role": "user", "content": "ü\nx"}, {"role": "assistant", "content": "y"}]),
        Sample("b", "b", TULU_RECORD["messages"]),
    ]
    path = write_jsonl(samples, tmp_path / "out" / "s.jsonl")
    assert load_samples(path) == samples


def make_task(folder, examples, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    content = dict(fields)
    if examples is not None:
        content["examples"] = examples
    (folder / "task.json").write_text(json.dumps(content))


def test_bigbench_task_with_subtasks(tmp_path):
    make_task(tmp_path / "deduce", None, name="deduce", description="metadata only")
    make_task(tmp_path / "deduce" / "two", [{"input": "b", "target": "2"}])
    make_task(tmp_path / "deduce" / "one", [{"input": "a", "target": "1"}, {"input": "c", "target": "3"}])
    samples = load_bigbench_task(tmp_path, "deduce")
    assert [sample.id for sample in samples] == ["deduce/one:0", "deduce/one:1", "deduce/two:0"]
    assert [sample.source for sample in samples] == ["deduce/one", "deduce/one", "deduce/two"]


def test_bigbench_task_plain(tmp_path):
    make_task(tmp_path / "flat", [{"input": "q", "target_scores": {"no": 0, "yes": 1}}])
    [sample] = load_bigbench_task(tmp_path, "flat")
    assert sample.id == "flat:0"
    assert sample.messages[1]["content"] == "yes"


def test_bigbench_task_programmatic_rejected(tmp_path):
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "task.py").write_text("# programmatic")
    with pytest.raises(InvalidInputError, match="programmatic"):
        load_bigbench_task(tmp_path, "prog")
    with pytest.raises(InvalidInputError, match="not found"):
        load_bigbench_task(tmp_path, "absent")


def test_humaneval_loader(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    record = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n", "test": ""}
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    [sample] = load_humaneval(path)
    assert sample.id == "HumanEval/0"
    assert sample.source == "humaneval"
    assert sample.messages == [
        {"role": "user", "content": "def f():\n"},
        {"role": "assistant", "content": "    return 1\n"},
    ]


def test_record_without_answer_loads_with_warning(tmp_path, caplog):
    """A conversation with no assistant turn loads; tokenization excludes and reports it later."""
    path = write_lines(tmp_path / "x.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with caplog.at_level("WARNING", logger="gradients.data"):
        samples = load_samples(path)
    assert len(samples) == 1
    assert "record 1" in caplog.text
    assert "no assistant message" in caplog.text
