from types import SimpleNamespace

import pytest

from gradients.outputs import format_share_table, package_versions, source_shares, task_of


def _pool(sources):
    return [SimpleNamespace(source=source) for source in sources]


def test_task_of_subtask():
    assert task_of("arithmetic/2_digit_addition") == "arithmetic"
    assert task_of("navigate") == "navigate"


def test_source_shares_counts_and_ratio():
    pool = _pool(["a", "a", "a", "b", "c/x", "c/y"])
    rows = {row["source"]: row for row in source_shares(pool, [0, 1, 3])}
    assert rows["a"]["pool"] == 3
    assert rows["a"]["selected"] == 2
    assert rows["a"]["pool_share"] == pytest.approx(0.5)
    assert rows["a"]["selected_share"] == pytest.approx(2 / 3)
    assert rows["a"]["ratio"] == pytest.approx(4 / 3)
    assert rows["c/x"]["selected"] == 0


def test_source_shares_by_task_merges_subtasks():
    pool = _pool(["a", "c/x", "c/y", "c/y"])
    rows = source_shares(pool, [1, 2], by_task=True)
    assert [row["source"] for row in rows] == ["c", "a"]
    assert rows[0]["pool"] == 3
    assert rows[0]["selected"] == 2
    assert rows[0]["ratio"] == pytest.approx(1.0 / 0.75)


def test_share_table_limit_mentions_rest():
    rows = source_shares(_pool(["a", "b", "c"]), [0])
    text = format_share_table(rows, limit=2)
    assert len(text.splitlines()) == 4
    assert "1 more rows" in text


def test_package_versions_has_numpy():
    versions = package_versions()
    assert versions["numpy"]
    assert "python" in versions
