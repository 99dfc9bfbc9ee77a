"""Small pool and target files in the prompt/completion format, for tests of the torch side."""

import json

import numpy as np

WORDS = ["apples", "two", "four", "answer", "count", "today", "plus", "return", "def", "three"]


def write_jsonl(path, records) -> str:
    """Write one JSON record per line to ``path`` and return the path as a string."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def pool_records(count: int, seed: int = 0) -> list[dict]:
    """Return ``count`` random short prompt/completion records from three sources task0..task2."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        question = " ".join(rng.choice(WORDS, size=rng.integers(2, 6)))
        answer = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
        records.append({"id": f"p{index}", "source": f"task{index % 3}", "prompt": question, "completion": answer})
    return records
