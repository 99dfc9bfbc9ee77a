import json

import numpy as np
import pytest

from gradients.config import SelectConfig
from gradients.outputs import write_outputs
from gradients.pipeline import run_selection
from idopt.errors import InvalidInputError
from tests.tiny_models import tiny_model
from tests.sample_files import pool_records as _pool_records
from tests.sample_files import write_jsonl as _write
from tests.tiny_tokenizer import tiny_chat_tokenizer


@pytest.fixture()
def tiny_setup(tmp_path):
    tokenizer = tiny_chat_tokenizer()
    model = tiny_model("llama", layers=3, vocab_size=len(tokenizer))
    pool = _write(tmp_path / "pool.jsonl", _pool_records(30))
    target = _write(
        tmp_path / "target.jsonl",
        [
            {"id": "t0", "source": "goal_a", "prompt": "count apples", "completion": "three"},
            {"id": "t1", "source": "goal_a", "prompt": "two plus two", "completion": "four"},
            {"id": "t2", "source": "goal_b", "prompt": "def add", "completion": "return"},
        ],
    )
    return model, tokenizer, pool, target


def _config(pool, target, out, **overrides):
    settings = dict(pool=[pool], target=[target], k=6, num_landmarks=30, jvp_blocks=2, proj_dim=64,
                    grad_batch_size=4, jvp_batch_size=8, output=str(out), max_length=64)
    settings.update(overrides)
    return SelectConfig(**settings)


def test_pipeline_end_to_end_tiny(tiny_setup, tmp_path):
    model, tokenizer, pool, target = tiny_setup
    result = run_selection(_config(pool, target, tmp_path / "out"), model=model, tokenizer=tokenizer)
    selection = result.selection
    assert result.target_names == ["goal_a", "goal_b"]
    assert result.scores.shape == (30, 2)
    assert len(selection.indices) == 6
    assert len(set(np.asarray(selection.indices).tolist())) == 6
    assert (np.asarray(selection.weights) > 0).all()

    out = write_outputs(result, tmp_path / "out", result.originals)
    lines = (out / "selection.csv").read_text().strip().splitlines()
    assert lines[0] == "rank,index,sample_id,source,weight,score,target"
    assert len(lines) == 7
    selected = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert [s["id"] for s in selected] == [result.pool[i].sample_id for i in selection.indices]
    assert selected[0]["messages"][-1]["role"] == "assistant"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["k"] == 6
    assert set(summary["seconds_per_stage"]) >= {"jvp_embeddings", "gradients", "propagate", "solve"}
    assert sum(row["selected"] for row in summary["source_shares"]) == 6
    assert np.load(out / "scores.npy", allow_pickle=False).shape == (30, 2)


def test_pipeline_mean_aggregate_writes_mean(tiny_setup, tmp_path):
    model, tokenizer, pool, target = tiny_setup
    config = _config(pool, target, tmp_path / "out", aggregate="mean", num_landmarks=10)
    result = run_selection(config, model=model, tokenizer=tokenizer)
    out = write_outputs(result, tmp_path / "out", result.originals)
    rows = (out / "selection.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 6
    assert all(row.endswith(",mean") for row in rows)
    order = np.argsort(-result.scores.mean(axis=1), kind="stable")[:6]
    assert sorted(np.asarray(result.selection.indices).tolist()) == sorted(order.tolist())


def test_pipeline_same_seed_same_selection(tiny_setup, tmp_path):
    model, tokenizer, pool, target = tiny_setup
    first = run_selection(_config(pool, target, tmp_path / "a", num_landmarks=12), model=model, tokenizer=tokenizer)
    again = run_selection(_config(pool, target, tmp_path / "b", num_landmarks=12), model=model, tokenizer=tokenizer)
    other = run_selection(_config(pool, target, tmp_path / "c", num_landmarks=12, seed=5), model=model, tokenizer=tokenizer)
    assert np.array_equal(first.selection.indices, again.selection.indices)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.array_equal(first.landmark_indices, other.landmark_indices)


def test_all_landmarks_reproduce_exact_scores(tiny_setup, tmp_path):
    """With every pool sample a landmark and a tiny damping, propagated scores equal exact ones."""
    model, tokenizer, pool, target = tiny_setup
    config = _config(pool, target, tmp_path / "out", damping=1e-9, num_landmarks=30)
    result = run_selection(config, model=model, tokenizer=tokenizer)
    assert np.array_equal(result.landmark_indices, np.arange(30))
    np.testing.assert_allclose(result.scores, result.landmark_scores, atol=1e-5 * np.abs(result.landmark_scores).max())


def test_pipeline_rejects_k_above_pool(tiny_setup, tmp_path):
    model, tokenizer, pool, target = tiny_setup
    with pytest.raises(InvalidInputError, match="k=31"):
        run_selection(_config(pool, target, tmp_path / "out", k=31), model=model, tokenizer=tokenizer)


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(InvalidInputError, match="aggregate"):
        SelectConfig(aggregate="max").validate()
    with pytest.raises(InvalidInputError, match="num_landmarks"):
        SelectConfig(num_landmarks=0).validate()
    with pytest.raises(InvalidInputError, match="does not exist"):
        SelectConfig(pool=[str(tmp_path / "missing.jsonl")]).validate()


def test_rerun_reuses_checkpoints(tiny_setup, tmp_path, monkeypatch):
    """A second run with identical inputs loads embeddings and gradients instead of computing them."""
    import gradients.jvp
    import gradients.pipeline

    model, tokenizer, pool, target = tiny_setup
    config = _config(pool, target, tmp_path / "out", num_landmarks=10)
    first = run_selection(config, model=model, tokenizer=tokenizer)
    assert (tmp_path / "out" / "checkpoints" / "embeddings.npy").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("stage recomputed although its checkpoint matches")

    monkeypatch.setattr(gradients.jvp.JVPEmbedder, "embed", fail)
    monkeypatch.setattr(gradients.pipeline, "project_gradients", fail)
    again = run_selection(_config(pool, target, tmp_path / "out", num_landmarks=10), model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(first.scores, again.scores)

    with pytest.raises(AssertionError, match="recomputed"):
        run_selection(_config(pool, target, tmp_path / "out", num_landmarks=10, jvp_blocks=1),
                      model=model, tokenizer=tokenizer)


def test_holdout_gradients_written(tiny_setup, tmp_path):
    """Held-out samples are not landmarks, and their approximation is C G_L from the embeddings."""
    from idopt.kernel_ridge import KernelRidge

    model, tokenizer, pool, target = tiny_setup
    config = _config(pool, target, tmp_path / "out", num_landmarks=10, holdout=5)
    result = run_selection(config, model=model, tokenizer=tokenizer)
    holdout = result.holdout
    assert len(holdout.indices) == 5
    assert not set(holdout.indices.tolist()) & set(result.landmark_indices.tolist())
    assert holdout.exact.shape == holdout.approx.shape == (5, 64)
    # Unit gradients projected to d = 64 keep their norm up to the projection's relative spread,
    # about sqrt(2/d) = 0.18 per row; 0.5 is more than 2.5 of those spreads.
    np.testing.assert_allclose(np.linalg.norm(holdout.exact, axis=1), 1.0, rtol=0.5)
    ridge = KernelRidge.fit(result.embeddings[result.landmark_indices], result.landmark_scores, damping=config.damping)
    # Scores of held-out samples equal their approximated gradients times the target rows.
    np.testing.assert_allclose(holdout.approx @ holdout.targets.T, ridge.predict(result.embeddings[holdout.indices]),
                               rtol=1e-6, atol=1e-9)
    out = write_outputs(result, tmp_path / "out", result.originals)
    for name in ("holdout_indices", "holdout_gradients", "holdout_approx", "target_gradients_projected"):
        assert (out / f"{name}.npy").is_file()
