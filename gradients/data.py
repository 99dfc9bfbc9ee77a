"""Chat samples and loaders for the record formats the pipeline accepts.

A :class:`Sample` is one conversation: a list of ``{"role", "content"}`` messages
with roles ``system``, ``user`` or ``assistant``. The loaders turn three record
formats into samples:

* messages: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (Tulu V2 style,
  multi-turn, a system message allowed);
* prompt/completion: ``{"prompt": str, "completion": str}``;
* BIG-bench: ``{"input": str, "target": str | list[str]}`` or
  ``{"input": str, "target_scores": {choice: score}}``.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SOURCE_FIELDS = ("source", "task", "dataset")
ACCEPTED_FORMATS = (
    'accepted record formats: {"messages": [{"role", "content"}, ...]}, '
    '{"prompt", "completion"}, BIG-bench {"input", "target"} or {"input", "target_scores"}'
)
ACCEPTED_FILES = (
    "accepted inputs: .jsonl, .jsonl.gz, .json (a list of records or an object with "
    '"examples"), .parquet, a folder written by datasets.save_to_disk, or a datasets.Dataset'
)


@dataclass
class Sample:
    """One training or target conversation.

    Attributes
    ----------
    id : str
        Identifier, unique within a loaded collection.
    source : str
        Task or data set name the sample comes from (``"navigate"``, ``"humaneval"``).
    messages : list of dict
        Conversation turns, each ``{"role": "system" | "user" | "assistant",
        "content": str}``, in order.
    """

    id: str
    source: str
    messages: list[dict[str, str]] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        """Return the sample as a JSON-ready ``{"id", "source", "messages"}`` dict."""
        return {"id": self.id, "source": self.source, "messages": self.messages}


def bigbench_answer(record: Mapping[str, Any], where: str) -> str:
    """Return the reference answer of a BIG-bench example.

    ``target`` wins when present: a string is the answer, and for a list the first
    element is. Otherwise the answer is the choice of ``target_scores`` with the
    highest score, and among equal scores the first one in file order.

    Parameters
    ----------
    record : mapping
        One BIG-bench example with ``target`` or ``target_scores``.
    where : str
        Location used in error messages, such as ``"task.json, record 3"``.

    Raises
    ------
    InvalidInputError
        When neither field contains a usable answer.
    """
    if "target" in record:
        target = record["target"]
        if isinstance(target, list):
            if not target or not isinstance(target[0], str):
                raise InvalidInputError(
                    f"{where}: field 'target' must be a string or a non-empty list of strings, "
                    f"got {target!r}"
                )
            return target[0]
        if isinstance(target, str):
            return target
        raise InvalidInputError(
            f"{where}: field 'target' must be a string or a list of strings, "
            f"got {type(target).__name__}"
        )

    scores = record.get("target_scores")
    if not isinstance(scores, Mapping) or not scores:
        raise InvalidInputError(
            f"{where}: field 'target_scores' must be a non-empty object mapping choices to "
            f"numbers, got {scores!r}"
        )
    best_choice = None
    best_score = None
    for choice, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise InvalidInputError(
                f"{where}: score of choice {choice!r} in 'target_scores' must be a number, "
                f"got {score!r}"
            )
        # Strict '>' keeps the first choice in file order among equal scores.
        if best_score is None or score > best_score:
            best_choice, best_score = choice, score
    return str(best_choice)


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError(
            f"{where}: field 'messages' must be a non-empty list, got {type(messages).__name__}"
        )
    checked = []
    for turn_index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(
                f"{where}: message {turn_index} must be an object with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role = message.get("role")
        content = message.get("content")
        if role not in ROLES:
            raise InvalidInputError(
                f"{where}: message {turn_index} has role {role!r}; allowed roles: {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise InvalidInputError(
                f"{where}: message {turn_index} is missing the string field 'content' "
                f"(got {type(content).__name__})"
            )
        checked.append({"role": role, "content": content})
    if not any(message["role"] == "assistant" for message in checked):
        # Kept: tokenization gives it no label token, so it is excluded and reported by id.
        logger.warning("%s: 'messages' has no assistant message, so the sample has nothing to train on", where)
    return checked


def record_messages(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """Convert one record in any accepted format to a list of chat messages.

    Parameters
    ----------
    record : mapping
        A messages, prompt/completion or BIG-bench record (see the module docstring).
    where : str
        Location used in error messages, such as ``"train.jsonl, record 3"``.

    Returns
    -------
    list of dict
        ``[{"role", "content"}, ...]``. A conversation without an assistant message is
        returned with a logged warning; tokenization then excludes it and reports its id.

    Raises
    ------
    InvalidInputError
        When the record matches no format or a field has the wrong type.
    """
    if not isinstance(record, Mapping):
        raise InvalidInputError(
            f"{where}: a record must be a JSON object, got {type(record).__name__}; {ACCEPTED_FORMATS}"
        )
    # Parquet files and datasets fill the fields a record lacks with None.
    record = {name: value for name, value in record.items() if value is not None}
    if "messages" in record:
        return _check_messages(record["messages"], where)

    if "prompt" in record or "completion" in record:
        for name in ("prompt", "completion"):
            if not isinstance(record.get(name), str):
                raise InvalidInputError(
                    f"{where}: prompt/completion record is missing the string field {name!r}; "
                    f"{ACCEPTED_FORMATS}"
                )
        return [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]

    if "input" in record:
        if not isinstance(record["input"], str):
            raise InvalidInputError(
                f"{where}: field 'input' must be a string, got {type(record['input']).__name__}"
            )
        if "target" not in record and "target_scores" not in record:
            raise InvalidInputError(
                f"{where}: BIG-bench record is missing the field 'target' or 'target_scores'; "
                f"{ACCEPTED_FORMATS}"
            )
        return [
            {"role": "user", "content": record["input"]},
            {"role": "assistant", "content": bigbench_answer(record, where)},
        ]

    raise InvalidInputError(
        f"{where}: record has none of the fields 'messages', 'prompt', 'input' "
        f"(fields: {sorted(record)[:10]}); {ACCEPTED_FORMATS}"
    )


def records_to_samples(
    records: Iterable[Mapping[str, Any]],
    origin: str,
    default_source: str,
    source: str | None = None,
    id_field: str | None = None,
) -> list[Sample]:
    """Convert records to samples, keeping ids and source names.

    The id is ``record[id_field]`` when ``id_field`` is given, else ``record["id"]``
    when present, else ``"<source>:<index>"`` with the 0-based record index. The
    source is the ``source`` argument when given, else the record's ``source``,
    ``task`` or ``dataset`` field, else ``default_source``.

    Parameters
    ----------
    records : iterable of mapping
        Records in any accepted format.
    origin : str
        File or data set name used in error messages.
    default_source : str
        Source name for records without a source field.
    source : str, optional
        Source name that overrides every record's own.
    id_field : str, optional
        Field holding the id; every record must have it.

    Raises
    ------
    InvalidInputError
        On an invalid record or on two records with the same id.
    """
    samples = []
    first_index_of_id: dict[str, int] = {}
    for index, record in enumerate(records):
        where = f"{origin}, record {index + 1}"
        messages = record_messages(record, where)

        if source is not None:
            sample_source = source
        else:
            sample_source = next(
                (str(record[name]) for name in SOURCE_FIELDS if record.get(name) not in (None, "")),
                default_source,
            )

        if id_field is not None:
            if record.get(id_field) in (None, ""):
                raise InvalidInputError(
                    f"{where}: missing the id field {id_field!r} named by id_field"
                )
            sample_id = str(record[id_field])
        elif record.get("id") not in (None, ""):
            sample_id = str(record["id"])
        else:
            sample_id = f"{sample_source}:{index}"

        if sample_id in first_index_of_id:
            raise InvalidInputError(
                f"{where}: id {sample_id!r} already used by record {first_index_of_id[sample_id] + 1}; "
                "ids must be unique (pass id_field= to use another field)"
            )
        first_index_of_id[sample_id] = index
        samples.append(Sample(id=sample_id, source=sample_source, messages=messages))
    return samples


def _iter_jsonl(path: Path) -> Iterator[Any]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidInputError(
                    f"{path}: line {line_number} is not valid JSON ({error.msg})"
                ) from error


def _read_json(path: Path) -> tuple[list[Any], str | None]:
    """Return the records of a JSON file and the name it declares, if any."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path}: not valid JSON ({error.msg})") from error
    if isinstance(content, list):
        return content, None
    if isinstance(content, Mapping) and isinstance(content.get("examples"), list):
        name = content.get("name")
        return content["examples"], name if isinstance(name, str) and name else None
    raise InvalidInputError(
        f"{path}: JSON must be a list of records or an object with an 'examples' list, "
        f"got {type(content).__name__}"
        + (f" with keys {sorted(content)[:10]}" if isinstance(content, Mapping) else "")
    )


def _has_no_examples(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError:
        return False
    return isinstance(content, Mapping) and "examples" not in content


def _dataset_records(dataset: Any, origin: str) -> list[Any]:
    """Return the rows of a ``datasets.Dataset``; a one-split ``DatasetDict`` is unwrapped."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset.keys())
        if len(splits) != 1:
            raise InvalidInputError(
                f"{origin}: path_or_dataset is a DatasetDict with splits {splits}; "
                "pass one split, such as dataset['train']"
            )
        dataset = dataset[splits[0]]
    return list(dataset)


def load_samples(
    path_or_dataset: Any,
    source: str | None = None,
    id_field: str | None = None,
) -> list[Sample]:
    """Load chat samples from a file, a saved ``datasets`` folder or a ``Dataset``.

    Parameters
    ----------
    path_or_dataset : str, Path or datasets.Dataset
        A ``.jsonl`` or ``.jsonl.gz`` file (one record a line), a ``.json`` file (a
        list of records, or a BIG-bench style object with ``"examples"``), a
        ``.parquet`` file, a folder written by ``Dataset.save_to_disk``, or a
        ``datasets.Dataset`` (or ``DatasetDict`` with one split) object.
    source : str, optional
        Source name for every sample. Without it, each record's ``source``, ``task``
        or ``dataset`` field is used, else the JSON object's ``name``, else the file
        stem (``train`` for ``train.jsonl``).
    id_field : str, optional
        Record field holding the sample id. Without it, the ``id`` field is used when
        present, else ``"<source>:<record index>"``.

    Returns
    -------
    list of Sample
        In file order.

    Raises
    ------
    InvalidInputError
        When the path does not exist, has an unknown suffix, or a record is invalid;
        the message names the file, the record index and the missing field.
    """
    if not isinstance(path_or_dataset, (str, Path)):
        if type(path_or_dataset).__module__.startswith("datasets."):
            origin = "dataset"
            records = _dataset_records(path_or_dataset, origin)
            return records_to_samples(records, origin, source or "dataset", source, id_field)
        raise InvalidInputError(
            f"path_or_dataset must be a path or a datasets.Dataset, got "
            f"{type(path_or_dataset).__name__}; {ACCEPTED_FILES}"
        )

    path = Path(path_or_dataset)
    if not path.exists():
        raise InvalidInputError(f"path_or_dataset {str(path)!r} does not exist; {ACCEPTED_FILES}")

    name = path.name.lower()
    stem = path.name.split(".")[0]
    declared_name = None
    if path.is_dir():
        if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            raise InvalidInputError(
                f"path_or_dataset {str(path)!r} is a folder but not one written by "
                f"datasets.save_to_disk (no dataset_info.json or dataset_dict.json); {ACCEPTED_FILES}"
            )
        import datasets

        records = _dataset_records(datasets.load_from_disk(str(path)), str(path))
    elif name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        records = list(_iter_jsonl(path))
    elif name.endswith(".json"):
        records, declared_name = _read_json(path)
    elif name.endswith(".parquet"):
        import pyarrow.parquet

        records = pyarrow.parquet.read_table(path).to_pylist()
    else:
        raise InvalidInputError(
            f"path_or_dataset {str(path)!r} has an unknown suffix; {ACCEPTED_FILES}"
        )

    samples = records_to_samples(records, str(path), declared_name or stem, source, id_field)
    logger.info("Loaded %d samples from %s", len(samples), path)
    return samples


def load_bigbench_task(task_dir: str | Path, task_name: str) -> list[Sample]:
    """Load the examples of one BIG-bench JSON task, subtasks included.

    Examples come from ``task_dir/task_name/task.json`` (when it has examples) and
    from every ``task_dir/task_name/<subtask>/task.json``, in sorted subtask order.
    Each example becomes ``[user: input, assistant: answer]`` with the input text
    unchanged and the answer chosen by :func:`bigbench_answer`. Task fields such as
    ``task_prefix`` are ignored.

    Parameters
    ----------
    task_dir : str or Path
        Folder holding one subfolder per task (``bigbench/benchmark_tasks``).
    task_name : str
        Task folder name, such as ``"navigate"``; ``"task/subtask"`` loads one subtask.

    Returns
    -------
    list of Sample
        Source ``task_name`` (or ``"task_name/subtask"``), id ``"<source>:<index>"``.

    Raises
    ------
    InvalidInputError
        When the task folder or every task.json in it is missing (a programmatic
        task has none), or an example is invalid.
    """
    folder = Path(task_dir) / task_name
    if not folder.is_dir():
        raise InvalidInputError(
            f"task_name {task_name!r} not found: {str(folder)!r} is not a folder"
        )

    task_files = []
    for subfolder in sorted(child for child in folder.iterdir() if child.is_dir()):
        if (subfolder / "task.json").is_file():
            task_files.append((f"{task_name}/{subfolder.name}", subfolder / "task.json"))
    # A task with subtasks usually has a top-level task.json with metadata only.
    if (folder / "task.json").is_file() and not (task_files and _has_no_examples(folder / "task.json")):
        task_files.insert(0, (task_name, folder / "task.json"))
    if not task_files:
        raise InvalidInputError(
            f"task_name {task_name!r}: no task.json in {str(folder)!r} or its subfolders "
            "(programmatic BIG-bench tasks have none and are not supported)"
        )

    samples = []
    for source, task_file in task_files:
        records, _ = _read_json(task_file)
        samples.extend(records_to_samples(records, str(task_file), source, source=source))
    if not samples:
        raise InvalidInputError(f"task_name {task_name!r}: the task.json files have no examples")
    return samples


def load_humaneval(path: str | Path) -> list[Sample]:
    """Load HumanEval problems as samples ``[user: prompt, assistant: canonical_solution]``.

    Parameters
    ----------
    path : str or Path
        ``HumanEval.jsonl.gz`` (or an uncompressed ``.jsonl``) with the fields
        ``task_id``, ``prompt`` and ``canonical_solution``.

    Returns
    -------
    list of Sample
        Id ``task_id`` (``"HumanEval/0"``), source ``"humaneval"``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"path {str(path)!r} does not exist or is not a file")
    samples = []
    for index, record in enumerate(_iter_jsonl(path)):
        where = f"{path}, record {index + 1}"
        for name in ("task_id", "prompt", "canonical_solution"):
            if not isinstance(record, Mapping) or not isinstance(record.get(name), str):
                raise InvalidInputError(f"{where}: missing the string field {name!r} of HumanEval")
        samples.append(
            Sample(
                id=record["task_id"],
                source="humaneval",
                messages=[
                    {"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["canonical_solution"]},
                ],
            )
        )
    return samples


def write_jsonl(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples as JSON lines ``{"id", "source", "messages"}``.

    The output loads back with :func:`load_samples` into equal samples.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for sample in samples:
            if not isinstance(sample, Sample):
                raise InvalidInputError(
                    f"samples must contain Sample objects, got {type(sample).__name__} at position {count}"
                )
            handle.write(json.dumps(sample.to_record(), ensure_ascii=False) + "\n")
            count += 1
    logger.info("Wrote %d samples to %s", count, path)
    return path
