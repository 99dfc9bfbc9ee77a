"""First- against second-order terms (``idopt order-ratio``) on tiny random models and the real default.

GPT-2 in float64 computes in float64 throughout, so the fast path (one summed source gradient,
one Hessian-vector product) and the explicit p and Q agree to rounding. Llama's RMSNorm
computes in float32 internally, which is why the tight comparisons use GPT-2.
"""

import json
import logging
import os

import numpy as np
import pytest
import torch

from gradients.hessian import TargetCurvature
from gradients.order_ratio import (
    OrderRatioConfig,
    TermPieces,
    explicit_terms,
    learning_rate_at_ratio,
    order_terms,
    run_order_ratio,
    summed_source_gradient,
)
from gradients.params import ParameterMask, select_parameters
from gradients.per_sample import sample_loss
from gradients.tokenize import collate, tokenize_samples
from idopt.errors import AssetError, InvalidInputError
from tests.tiny_models import tiny_model
from tests.sample_files import pool_records as _pool_records
from tests.sample_files import write_jsonl as _write
from tests.tiny_tokenizer import tiny_chat_tokenizer

TARGETS = [
    {"id": "t0", "source": "goal_a", "prompt": "count apples", "completion": "three"},
    {"id": "t1", "source": "goal_a", "prompt": "two plus two", "completion": "four"},
    {"id": "t2", "source": "goal_b", "prompt": "def add", "completion": "return"},
]


@pytest.fixture()
def files(tmp_path):
    return _write(tmp_path / "pool.jsonl", _pool_records(24)), _write(tmp_path / "target.jsonl", TARGETS)


@pytest.fixture()
def gpt2():
    tokenizer = tiny_chat_tokenizer()
    return tiny_model("gpt2", layers=2, vocab_size=len(tokenizer)).double(), tokenizer


def _config(files, tmp_path, **overrides):
    pool, target = files
    settings = dict(pool=[pool], target=[target], num_source=8, num_target=3, max_length=64, repeats=2,
                    lrs=(1e-4, 1e-3, 1e-2), batch_size=3, output=str(tmp_path / "out"))
    settings.update(overrides)
    return OrderRatioConfig(**settings)


def _tokenized(tokenizer, records):
    from gradients.data import records_to_samples

    return tokenize_samples(records_to_samples(records, "test", "test"), tokenizer, 64, progress=False).kept


def _per_sample_gradients(model, samples, params, mask, pad_id):
    """Return (c, N) per-sample gradients one sample at a time, in the model's dtype (float64 here)."""
    rows = []
    tensors = list(params.values())
    for sample in samples:
        loss = sample_loss(model, collate([sample], pad_id))[0]
        flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, tensors)])
        rows.append(flat if mask is None else flat[mask.indices])
    return torch.stack(rows)


# ---------------------------------------------------------------- fast path against explicit p and Q


@pytest.mark.parametrize("masked", [False, True])
def test_fast_path_matches_explicit_sums(gpt2, masked):
    """p^T w and w^T Q w from G_S w and one product equal the sums over per-sample gradients and products."""
    model, tokenizer = gpt2
    pad_id = tokenizer.pad_token_id
    sources = _tokenized(tokenizer, _pool_records(7))
    targets = _tokenized(tokenizer, TARGETS)
    params = select_parameters(model, "all")
    mask = ParameterMask.for_params(params, count=500, seed=2) if masked else None
    curvature = TargetCurvature(model, [collate(targets[:2], pad_id), collate(targets[2:], pad_id)], params, mask)
    target_gradient = curvature.gradient()
    weights = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5, 1.0, 3.0], dtype=torch.float64)

    summed = summed_source_gradient(model, sources, params, mask, pad_id, batch_size=3, progress=False)
    weighted = summed_source_gradient(model, sources, params, mask, pad_id, batch_size=3, weights=weights,
                                      progress=False)
    terms, offset_product = order_terms(curvature, torch.stack([summed, weighted]), target_gradient, len(sources),
                                        progress=False)

    grads = _per_sample_gradients(model, sources, params, mask, pad_id)
    p = (grads @ target_gradient).numpy()
    products = torch.stack([curvature.matmul(row[None])[0] for row in grads])  # one product per sample
    q = (grads @ products.T).numpy()
    w = weights.numpy()
    assert offset_product is None
    np.testing.assert_allclose(terms.first, [p.sum(), p @ w], rtol=1e-10)
    np.testing.assert_allclose(terms.quadratic, [q.sum(), w @ q @ w], rtol=1e-8)
    np.testing.assert_array_equal(terms.momentum, [0.0, 0.0])


def test_run_explicit_option_agrees(gpt2, files, tmp_path):
    """--explicit forms p and Q from float32 per-sample gradients, so agreement is about 1e-6."""
    model, tokenizer = gpt2
    result = run_order_ratio(_config(files, tmp_path, explicit=True), model=model, tokenizer=tokenizer)
    assert result.explicit is not None
    assert result.explicit["T1"] < 1e-5
    assert result.explicit["T2"] < 1e-5
    np.testing.assert_allclose(result.explicit["explicit_first"], result.terms.first, rtol=1e-5)


# ---------------------------------------------------------------- behaviour in eta


def test_ratio_linear_in_eta_for_sgd(gpt2, files, tmp_path):
    model, tokenizer = gpt2
    result = run_order_ratio(_config(files, tmp_path), model=model, tokenizer=tokenizer)
    terms = result.terms
    assert result.optimizer == "SGD"
    assert len(result.source_ids) == 2
    assert result.source_ids[0] != result.source_ids[1]
    np.testing.assert_array_equal(terms.t1(1e-4), terms.t1(1e-2))  # T1 does not depend on eta
    np.testing.assert_allclose(terms.ratio(1e-3), 10 * terms.ratio(1e-4), rtol=1e-12)
    np.testing.assert_allclose(terms.ratio(1e-2), 100 * terms.ratio(1e-4), rtol=1e-12)
    rows = result.summary_rows()
    assert [row["learning_rate"] for row in rows] == [1e-4, 1e-3, 1e-2]
    assert rows[0]["ratio_min"] <= rows[0]["ratio_median"] <= rows[0]["ratio_max"]


def test_gauss_newton_quadratic_nonnegative(gpt2, files, tmp_path):
    model, tokenizer = gpt2
    result = run_order_ratio(_config(files, tmp_path, curvature="gauss_newton", repeats=3), model=model,
                             tokenizer=tokenizer)
    assert (result.terms.quadratic >= 0).all(), result.terms.quadratic
    assert (result.terms.t2(1e-3) >= 0).all()


def _adam_state(model, tokenizer, folder):
    """Take two AdamW steps on the tiny model and save the state; return the learning rate."""
    from gradients.optimizer_state import OptimizerState

    lr = 1e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, foreach=False)
    samples = _tokenized(tokenizer, _pool_records(4, seed=5))
    for step in range(2):
        optimizer.zero_grad()
        batch = collate(samples[2 * step:2 * step + 2], tokenizer.pad_token_id)
        sample_loss(model, batch).mean().backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    OptimizerState.from_optimizer(optimizer, model).save(folder)
    return lr


def test_adam_state_shifts_t1_with_eta(gpt2, files, tmp_path):
    """T1(eta) = (a * G_S 1)^T (g_T - eta H_T b0), with a and b0 fixed across the eta grid."""
    from gradients.optimizer_state import load_optimizer_state

    model, tokenizer = gpt2
    lr = _adam_state(model, tokenizer, tmp_path / "state")
    config = _config(files, tmp_path, optimizer_state=str(tmp_path / "state"), repeats=1, explicit=True)
    result = run_order_ratio(config, model=model, tokenizer=tokenizer)
    assert result.optimizer == "AdamW"
    assert result.state_learning_rate == pytest.approx(lr)

    params = select_parameters(model, "all")
    scale, offset = load_optimizer_state(tmp_path / "state", model).step_vectors(params, None, lr)
    scale, offset = scale.double(), offset.double()
    pad_id = tokenizer.pad_token_id
    by_id = {sample.sample_id: sample for sample in _tokenized(tokenizer, _pool_records(24))}
    sources = [by_id[name] for name in result.source_ids[0]]
    targets = _tokenized(tokenizer, TARGETS)
    curvature = TargetCurvature(model, [collate(targets, pad_id)], params)
    direction = scale * summed_source_gradient(model, sources, params, None, pad_id, progress=False)
    target_gradient = curvature.gradient()
    products = curvature.matmul(torch.stack([direction, offset]))
    first = float(direction @ target_gradient)
    momentum = float(direction @ products[1])
    assert momentum != 0
    for eta in config.lrs:
        expected = float(direction @ (target_gradient - eta * products[1]))
        assert result.terms.t1(eta)[0] == pytest.approx(expected, rel=1e-8)
        assert result.terms.t1(eta)[0] == pytest.approx(first - eta * momentum, rel=1e-8)
    assert result.terms.quadratic[0] == pytest.approx(float(direction @ products[0]), rel=1e-8)
    assert result.terms.t1(1e-2)[0] != pytest.approx(result.terms.t1(1e-4)[0], rel=1e-6)
    assert result.explicit["max"] < 1e-4  # explicit p = D (g_T - eta H_T b0) from per-sample rows


def test_learning_rate_at_ratio_sgd_and_adam():
    # Plain descent: |T2/T1| = eta q / (2c |first|), so the level is reached at level 2c |first| / q.
    assert learning_rate_at_ratio(50.0, 0.0, 4000.0, 8) == pytest.approx(0.1 * 2 * 8 * 50.0 / 4000.0)
    assert learning_rate_at_ratio(-50.0, 0.0, -4000.0, 8) == pytest.approx(0.1 * 2 * 8 * 50.0 / 4000.0)
    assert learning_rate_at_ratio(50.0, 0.0, 0.0, 8) is None
    # T1 = 50 + 3e4 eta grows faster than T2, so |T2/T1| stays below 56.25 / 3e4 < 0.1.
    assert learning_rate_at_ratio(50.0, -3e4, -900.0, 8) is None
    for first, momentum, quadratic in [(50.0, 2e4, 4000.0), (50.0, -100.0, -900.0), (-5.0, 10.0, 200.0)]:
        eta = learning_rate_at_ratio(first, momentum, quadratic, 8)
        terms = TermPieces(np.array([first]), np.array([momentum]), np.array([quadratic]), 8)
        assert terms.ratio(eta)[0] == pytest.approx(0.1, rel=1e-9)
        below = np.geomspace(eta * 1e-6, eta * (1 - 1e-6), 200)
        assert all(terms.ratio(value)[0] < 0.1 for value in below)


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize("overrides, message", [
    (dict(lrs=(1e-4, 0.0)), "lrs contains 0.0"),
    (dict(lrs=(-1e-3,)), "lrs contains -0.001"),
    (dict(lrs=()), "Pass at least one learning rate"),
    (dict(num_source=0), "num_source=0"),
    (dict(repeats=0), "repeats=0"),
    (dict(target_task=""), "target_task='' is empty"),
    (dict(curvature="exact"), "curvature='exact'"),
    (dict(grad_mask=0), "grad_mask=0"),
    (dict(optimizer_state="missing/folder"), "optimizer_state 'missing/folder' does not exist"),
])
def test_config_rejects_bad_values(files, tmp_path, overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        _config(files, tmp_path, **overrides).validate()


def test_unknown_target_task_in_files(gpt2, files, tmp_path):
    model, tokenizer = gpt2
    with pytest.raises(InvalidInputError, match="target_task='goal_z' matches no record.*goal_a"):
        run_order_ratio(_config(files, tmp_path, target_task="goal_z"), model=model, tokenizer=tokenizer)


def test_target_task_filters_files(gpt2, files, tmp_path):
    model, tokenizer = gpt2
    result = run_order_ratio(_config(files, tmp_path, target_task="goal_b", repeats=1), model=model,
                             tokenizer=tokenizer)
    assert result.target_ids == ["t2"]
    assert result.target_task == "goal_b"


def test_empty_target_file_rejected(gpt2, files, tmp_path):
    model, tokenizer = gpt2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InvalidInputError):
        run_order_ratio(_config(files, tmp_path, target=[str(empty)]), model=model, tokenizer=tokenizer)


def test_small_pool_uses_all_samples_once(gpt2, tmp_path, caplog):
    model, tokenizer = gpt2
    pool = _write(tmp_path / "small.jsonl", _pool_records(5))
    target = _write(tmp_path / "target.jsonl", TARGETS)
    with caplog.at_level(logging.WARNING, logger="gradients.order_ratio"):
        result = run_order_ratio(_config((pool, target), tmp_path, num_source=8, repeats=3), model=model,
                                 tokenizer=tokenizer)
    assert "num_source=8 exceeds the 5 usable pool samples, so all" in caplog.text
    assert "repeats would be identical" in caplog.text
    assert result.terms.count == 5
    assert len(result.source_ids) == 1
    assert sorted(result.source_ids[0]) == [f"p{index}" for index in range(5)]


def test_missing_builtin_task_raises(gpt2, tmp_path):
    """A built-in target task that the cache lacks fails with the fetch hint, before any gradient."""
    from gradients.assets import find_assets

    try:
        find_assets()
    except AssetError:
        pytest.skip("default assets not fetched")
    model, tokenizer = gpt2
    config = OrderRatioConfig(target_task="no_such_task", output=str(tmp_path / "out"))
    with pytest.raises(AssetError, match="no_such_task"):
        run_order_ratio(config, model=model, tokenizer=tokenizer)


def test_explicit_terms_need_memory_check(gpt2, files, tmp_path, monkeypatch):
    """The explicit path refuses a D that exceeds the machine's memory, naming --grad-mask."""
    import gradients.second_order as second_order

    model, tokenizer = gpt2
    monkeypatch.setattr(second_order, "physical_memory_bytes", lambda: 1000)
    sources = _tokenized(tokenizer, _pool_records(3))
    params = select_parameters(model, "all")
    curvature = TargetCurvature(model, [collate(_tokenized(tokenizer, TARGETS), tokenizer.pad_token_id)], params)
    with pytest.raises(InvalidInputError, match="--grad-mask"):
        explicit_terms(model, sources, params, None, tokenizer.pad_token_id, 2, curvature, curvature.gradient())


# ---------------------------------------------------------------- command line


def test_cli_writes_json_csv_png(gpt2, files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from idopt.cli import main

    model, tokenizer = gpt2
    model_dir = tmp_path / "tiny_model"
    model.float().save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pool, target = files
    out = tmp_path / "ratio"
    argv = ["order-ratio", "--model", str(model_dir), "--pool", pool, "--target", target, "--num-source", "6",
            "--num-target", "2", "--max-length", "64", "--repeats", "2", "--lrs", "1e-5", "1e-3",
            "--device", "cpu", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "median |T2/T1|" in printed
    assert "on 6 source samples (2 random draws)" in printed
    assert "|T2/T1| reaches 0.1 at eta" in printed

    report = json.loads((out / "order_ratio.json").read_text())
    assert report["learning_rates"] == [1e-5, 1e-3]
    assert report["num_source"] == 6
    assert len(report["target_ids"]) == 2
    assert len(report["draws"]) == 2
    assert report["optimizer"] == "SGD"
    lines = (out / "order_ratio.csv").read_text().strip().splitlines()
    assert lines[0].startswith("learning_rate,T1_median,T2_median,ratio_median,ratio_min,ratio_max,T1_draw0")
    assert len(lines) == 3
    assert (out / "order_ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_lrs(files, tmp_path, capsys):
    from idopt.cli import main

    pool, target = files
    assert main(["order-ratio", "--pool", pool, "--target", target, "--lrs", "1e-3", "-1", "-o",
                 str(tmp_path / "o")]) == 2
    assert "lrs contains -1.0" in capsys.readouterr().err


# ---------------------------------------------------------------- real default model


@pytest.mark.slow
def test_real_default_small(tmp_path):
    """SmolLM2-135M-Instruct on the built-in data: 8 sources, 2 targets, 96 tokens, one draw, explicit check."""
    from gradients.assets import find_assets

    try:
        find_assets()
    except AssetError as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"default assets not fetched: {error}")
    config = OrderRatioConfig(num_source=8, num_target=2, max_length=96, repeats=1, params="down_proj",
                              grad_mask=200_000, explicit=True, output=str(tmp_path / "out"))
    result = run_order_ratio(config)
    assert result.target_task == "date_understanding"
    assert result.terms.count == 8
    assert np.isfinite(result.terms.first).all()
    assert np.isfinite(result.terms.quadratic).all()
    assert result.explicit["max"] < 1e-3  # float32 model and float32 per-sample rows
    ratios = np.array([result.terms.ratio(eta)[0] for eta in result.lrs])
    np.testing.assert_allclose(ratios / result.lrs, ratios[0] / result.lrs[0], rtol=1e-9)
