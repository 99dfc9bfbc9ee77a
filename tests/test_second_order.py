"""Second-order and Adam-aware selection: landmark quantities, the factored solve and the pipeline."""

import json

import numpy as np
import pytest
import torch

from gradients.hessian import TargetCurvature
from gradients.optimizer_state import OptimizerState
from gradients.outputs import write_outputs
from gradients.params import select_parameters
from gradients.per_sample import per_sample_gradients
from gradients.pipeline import run_selection
from gradients.tokenize import collate
from idopt.constructors import problem_from_gradients
from idopt.errors import InvalidInputError
from idopt.optimizers import StepModel
from idopt.problem import WeightingProblem
from idopt.selection import select_quadratic
from tests.test_pipeline import _config, tiny_setup  # noqa: F401  (pytest fixture)


def _adam_state(model, folder):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ids = torch.randint(2, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    OptimizerState.from_optimizer(optimizer, model).save(folder)
    return str(folder)


def _factored_instance(seed=0, n=40, landmarks=6, targets=2):
    rng = np.random.default_rng(seed)
    coefficients = rng.standard_normal((n, landmarks))
    root = rng.standard_normal((landmarks, landmarks))
    landmark_q = root @ root.T
    scores = rng.standard_normal((n, targets))
    return coefficients, landmark_q, scores


@pytest.mark.parametrize("aggregate", ["round_robin", "mean"])
def test_factored_equals_dense(aggregate):
    """C Q_L C^T kept factored gives the same weights as the dense n x n matrix."""
    coefficients, landmark_q, scores = _factored_instance()
    n = scores.shape[0]
    factored = WeightingProblem.create(scores, 1.0, eta=5.0, c=n, A=coefficients.T, H=landmark_q)
    dense = WeightingProblem.create(scores, 1.0, eta=5.0, c=n, Q=coefficients @ landmark_q @ coefficients.T)
    first = select_quadratic(factored, 8, aggregate=aggregate)
    second = select_quadratic(dense, 8, aggregate=aggregate)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_allclose(first.lam, second.lam, rtol=1e-8)
    np.testing.assert_allclose(first.weights_per_target, second.weights_per_target, rtol=1e-6, atol=1e-9)
    assert np.all(np.count_nonzero(first.weights_per_target > 0, axis=0) == 8)


def test_select_quadratic_differs_from_first_order():
    """A strong curvature term moves the selection away from the top k of p."""
    coefficients, landmark_q, scores = _factored_instance(seed=1, targets=1)
    n = scores.shape[0]
    problem = WeightingProblem.create(scores[:, 0], 1.0, eta=1e4, c=n, A=coefficients.T, H=landmark_q)
    selection = select_quadratic(problem, 8)
    top_k = set(np.argsort(-scores[:, 0])[:8])
    assert set(selection.indices) != top_k


def test_select_quadratic_rejects_arrays():
    with pytest.raises(InvalidInputError, match="must be a WeightingProblem"):
        select_quadratic(np.ones(5), 2)


def _exact_problem(model, tokenizer, result, params, step, eta):
    """Build p and Q of the landmarks with idopt's constructors from independent per-sample gradients."""
    pad = tokenizer.pad_token_id
    landmarks = [result.pool[i] for i in result.landmark_indices]
    G = per_sample_gradients(model, collate(landmarks, pad), params, normalize=False).double().numpy().T
    target_grads = per_sample_gradients(model, collate(result.targets, pad), params, normalize=False).double()
    names = result.target_names
    g_T = torch.stack([target_grads[[i for i, t in enumerate(result.targets) if t.source == name]].mean(dim=0)
                       for name in names]).numpy().T
    curvature = TargetCurvature(model, [collate(result.targets, pad)], params)
    return problem_from_gradients(
        G, g_T, lam=1.0, eta=eta, hvp=curvature.numpy_hvp(), c=len(result.pool), step=step, check_psd=False,
        factored=False,
    )


def test_order2_landmark_quantities_match_constructors(tiny_setup, tmp_path):  # noqa: F811
    model, tokenizer, pool, target = tiny_setup
    model = model.double()
    config = _config(pool, target, tmp_path / "out", order=2, num_landmarks=12, lr=0.05, hvp_batch_size=8)
    result = run_selection(config, model=model, tokenizer=tokenizer)
    params = select_parameters(model, "all")
    problem = _exact_problem(model, tokenizer, result, params, StepModel.identity(), 0.05)
    np.testing.assert_allclose(result.landmark_scores, problem.p, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(result.landmark_curvature, problem.Q, rtol=1e-4, atol=1e-6 * np.abs(problem.Q).max())


def test_adam_order2_matches_constructors(tiny_setup, tmp_path):  # noqa: F811
    """Preconditioned directions and the momentum shift g_T - eta H_T b0, against StepModel."""
    model, tokenizer, pool, target = tiny_setup
    model = model.double()
    state_dir = _adam_state(model, tmp_path / "state")
    config = _config(pool, target, tmp_path / "out", order=2, num_landmarks=12, optimizer_state=state_dir,
                     hvp_batch_size=8, second_moment="frozen")
    result = run_selection(config, model=model, tokenizer=tokenizer)
    params = select_parameters(model, "all")
    state = OptimizerState._read_saved(tmp_path / "state")
    scale, offset = state.step_vectors(params, None, 1e-3)
    step = StepModel(scale.numpy(), offset.numpy())
    problem = _exact_problem(model, tokenizer, result, params, step, 1e-3)
    assert result.method_report["optimizer"] == "AdamW"
    assert result.method_report["momentum_shift"]
    np.testing.assert_allclose(result.landmark_scores, problem.p, rtol=1e-3, atol=1e-6 * np.abs(problem.p).max())
    np.testing.assert_allclose(result.landmark_curvature, problem.Q, rtol=1e-3, atol=1e-6 * np.abs(problem.Q).max())


def test_order2_outputs_and_report(tiny_setup, tmp_path):  # noqa: F811
    model, tokenizer, pool, target = tiny_setup
    out = tmp_path / "out"
    config = _config(pool, target, out, order=2, num_landmarks=10, lr=0.05, curvature="gauss_newton")
    result = run_selection(config, model=model, tokenizer=tokenizer)
    write_outputs(result, out, result.originals)
    summary = json.loads((out / "summary.json").read_text())
    terms = summary["method"]["objective_terms"]
    assert [row["target"] for row in terms] == ["goal_a", "goal_b"]
    for row in terms:
        assert 0.0 <= row["second_order_share"] <= 1.0
        assert row["T2"] >= 0.0  # Gauss-Newton curvature is positive semidefinite
    assert np.load(out / "landmark_curvature.npy", allow_pickle=False).shape == (10, 10)
    assert np.load(out / "weights_per_target.npy", allow_pickle=False).shape == (30, 2)
    assert len(result.selection.indices) == 6


def test_order2_checkpoint_reused(tiny_setup, tmp_path, caplog):  # noqa: F811
    model, tokenizer, pool, target = tiny_setup
    config = _config(pool, target, tmp_path / "out", order=2, num_landmarks=10, lr=0.05)
    first = run_selection(config, model=model, tokenizer=tokenizer)
    with caplog.at_level("INFO"):
        second = run_selection(config, model=model, tokenizer=tokenizer)
    assert "Reusing landmark_quadratic" in caplog.text
    np.testing.assert_array_equal(first.selection.indices, second.selection.indices)


def test_adam_first_order_changes_scores(tiny_setup, tmp_path):  # noqa: F811
    model, tokenizer, pool, target = tiny_setup
    plain = run_selection(_config(pool, target, tmp_path / "a", num_landmarks=10), model=model, tokenizer=tokenizer)
    state_dir = _adam_state(model, tmp_path / "state")
    adam = run_selection(_config(pool, target, tmp_path / "b", num_landmarks=10, optimizer_state=state_dir),
                         model=model, tokenizer=tokenizer)
    assert adam.method_report["normalized_gradients"] is False
    assert plain.method_report["normalized_gradients"] is True
    assert not np.allclose(adam.landmark_scores, plain.landmark_scores)


def test_order2_rejects_holdout(tiny_setup, tmp_path):  # noqa: F811
    _, _, pool, target = tiny_setup
    with pytest.raises(InvalidInputError, match="holdout=4 works with order=1 only"):
        _config(pool, target, tmp_path / "out", order=2, holdout=4).validate()


def test_bad_order_and_state_path(tiny_setup, tmp_path):  # noqa: F811
    _, _, pool, target = tiny_setup
    with pytest.raises(InvalidInputError, match="order=3"):
        _config(pool, target, tmp_path / "out", order=3).validate()
    with pytest.raises(InvalidInputError, match="optimizer_state .* does not exist"):
        _config(pool, target, tmp_path / "out", optimizer_state=str(tmp_path / "none")).validate()
    with pytest.raises(InvalidInputError, match="lr=0"):
        _config(pool, target, tmp_path / "out", lr=0.0).validate()


def test_adam_uniform_second_moment_matches(tiny_setup, tmp_path):  # noqa: F811
    """With the default second moment, a uses v' = beta2 v + (1 - beta2) g_bar^2 of the landmarks."""
    model, tokenizer, pool, target = tiny_setup
    model = model.double()
    state_dir = _adam_state(model, tmp_path / "state")
    config = _config(pool, target, tmp_path / "out", order=2, num_landmarks=12, optimizer_state=state_dir,
                     hvp_batch_size=8)
    result = run_selection(config, model=model, tokenizer=tokenizer)
    params = select_parameters(model, "all")
    landmarks = [result.pool[i] for i in result.landmark_indices]
    mean_gradient = TargetCurvature(model, [collate(landmarks, tokenizer.pad_token_id)], params).gradient()
    state = OptimizerState._read_saved(tmp_path / "state")
    scale, offset = state.step_vectors(params, None, 1e-3, mean_gradient)
    problem = _exact_problem(model, tokenizer, result, params, StepModel(scale.numpy(), offset.numpy()), 1e-3)
    np.testing.assert_allclose(result.landmark_scores, problem.p, rtol=1e-3, atol=1e-6 * np.abs(problem.p).max())
    frozen, _ = state.step_vectors(params, None, 1e-3)
    assert not torch.allclose(scale, frozen)
