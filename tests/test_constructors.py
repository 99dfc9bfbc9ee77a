import logging
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idopt.constructors import dense_curvature_from_hvp, predicted_loss_change, problem_from_gradients
from idopt.errors import InvalidInputError
from idopt.optimizers import AdamState, SGDState, StepModel, adam_step_model, sgd_step_model

# Products of O(1) random matrices with d, n <= 12 agree to ~1e-14 in float64; 1e-10 leaves
# room for the different summation orders of the dense, factored and blocked paths.
RTOL = 1e-10


def _inputs(seed, d=5, n=4, m=None, indefinite=False):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(d, n))
    g = rng.normal(size=d if m is None else (d, m))
    B = rng.normal(size=(d, d))
    H = B + B.T if indefinite else B @ B.T
    return rng, G, g, H


def _random_step(rng, d):
    return StepModel(rng.random(d) + 0.5, rng.normal(size=d))


def test_first_order_shapes():
    _, G, g, _ = _inputs(0)
    problem = problem_from_gradients(G, g, lam=0.1)
    assert problem.p.shape == (4,)
    assert problem.Q is None
    assert problem.A is None
    np.testing.assert_allclose(problem.p, G.T @ g, rtol=RTOL)
    assert problem.c == 4
    assert problem.budget == 4


def test_factored_keeps_gradients():
    _, G, g, H = _inputs(1)
    problem = problem_from_gradients(G, g, lam=0.1, eta=0.5, H_T=H)
    assert problem.Q is None
    assert problem.A.shape == (5, 4)
    assert problem.H.shape == (5, 5)
    np.testing.assert_array_equal(problem.A, G)
    np.testing.assert_array_equal(problem.H, H)


def test_dense_curvature_value():
    _, G, g, H = _inputs(2)
    problem = problem_from_gradients(G, g, lam=0.1, eta=0.5, H_T=H, factored=False, c=3.0, budget=2.0)
    assert problem.Q.shape == (4, 4)
    np.testing.assert_allclose(problem.Q, G.T @ H @ G, rtol=RTOL)
    assert problem.c == 3.0
    assert problem.budget == 2.0
    assert problem.eta == 0.5


def test_multiple_targets_match_columns():
    _, G, g, H = _inputs(3, m=3)
    step = _random_step(np.random.default_rng(30), 5)
    multi = problem_from_gradients(G, g, lam=0.1, eta=0.2, H_T=H, step=step)
    assert multi.p.shape == (4, 3)
    w = np.random.default_rng(31).random(4)
    changes = predicted_loss_change(multi, w)
    baselines = step.baseline_change(g, 0.2, H_T=H)
    assert changes.shape == (3,)
    assert baselines.shape == (3,)
    for j in range(3):
        single = problem_from_gradients(G, g[:, j], lam=0.1, eta=0.2, H_T=H, step=step)
        np.testing.assert_allclose(multi.p[:, j], single.p, rtol=RTOL)
        assert changes[j] == pytest.approx(predicted_loss_change(single, w), rel=RTOL)
        assert baselines[j] == pytest.approx(step.baseline_change(g[:, j], 0.2, H_T=H), rel=RTOL)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), d=st.integers(1, 8), n=st.integers(1, 8), with_step=st.booleans())
def test_factored_matches_dense(seed, d, n, with_step):
    """Property: factored and dense Q give the same objective, gradient and Hessian."""
    rng, G, g, H = _inputs(seed, d, n)
    step = _random_step(rng, d) if with_step else None
    factored = problem_from_gradients(G, g, lam=0.3, eta=0.7, H_T=H, step=step)
    dense = problem_from_gradients(G, g, lam=0.3, eta=0.7, H_T=H, step=step, factored=False)
    w = rng.random(n)
    np.testing.assert_allclose(factored.p, dense.p, rtol=RTOL)
    assert factored.objective(w) == pytest.approx(dense.objective(w), rel=RTOL, abs=1e-12)
    np.testing.assert_allclose(factored.gradient(w), dense.gradient(w), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(factored.dense_hessian(), dense.dense_hessian(), rtol=RTOL, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    d=st.integers(1, 8),
    n=st.integers(1, 12),
    block_size=st.integers(1, 5),
    with_step=st.booleans(),
)
def test_hvp_matches_dense(seed, d, n, block_size, with_step):
    """Property: Q and p built from hvp blocks equal those built from the dense H_T."""
    rng, G, g, H = _inputs(seed, d, n)
    step = _random_step(rng, d) if with_step else None
    calls = []

    def hvp(V):
        calls.append(V.shape)
        return H @ V

    from_hvp = problem_from_gradients(G, g, lam=0.3, eta=0.7, hvp=hvp, step=step, block_size=block_size)
    dense = problem_from_gradients(G, g, lam=0.3, eta=0.7, H_T=H, step=step, factored=False)
    np.testing.assert_allclose(from_hvp.Q, dense.Q, rtol=RTOL, atol=1e-12 * np.abs(dense.Q).max())
    np.testing.assert_allclose(from_hvp.p, dense.p, rtol=RTOL, atol=1e-12 * np.abs(dense.p).max())
    # One call per block of columns, plus one for H_T b0 when the step has an offset.
    assert len(calls) == -(-n // block_size) + (1 if with_step else 0)
    assert all(shape[0] == d and shape[1] <= block_size for shape in calls)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), d=st.integers(1, 8), n=st.integers(1, 8), eta=st.floats(1e-3, 2.0))
def test_prediction_is_taylor_polynomial(seed, d, n, eta):
    """Property: delta_0 + delta_pred(w) equals g^T x + (1/2) x^T H x for the modeled step x."""
    rng, G, g, H = _inputs(seed, d, n, indefinite=True)
    step = _random_step(rng, d)
    c = float(rng.integers(1, 10))
    w = rng.random(n)
    problem = problem_from_gradients(G, g, lam=0.0, eta=eta, H_T=H, step=step, c=c, check_psd=False)
    x = step.displacement(G, w, eta, c)
    expected = float(g @ x + 0.5 * x @ H @ x)
    predicted = predicted_loss_change(problem, w) + step.baseline_change(g, eta, H_T=H)
    scale = abs(g) @ abs(x) + abs(x) @ abs(H) @ abs(x)
    assert predicted == pytest.approx(expected, abs=1e-12 * scale)


def test_objective_scales_to_prediction():
    """(eta/c) F(w) with lam = 0 is the predicted change, the convention of the problem class."""
    _, G, g, H = _inputs(4)
    problem = problem_from_gradients(G, g, lam=0.0, eta=0.3, H_T=H, c=7.0)
    w = np.random.default_rng(40).random(4)
    assert predicted_loss_change(problem, w) == pytest.approx(0.3 / 7.0 * problem.objective(w), rel=RTOL)


def test_first_order_drops_shift():
    _, G, g, _ = _inputs(5)
    step = _random_step(np.random.default_rng(50), 5)
    problem = problem_from_gradients(G, g, lam=0.1, eta=0.5, step=step)
    np.testing.assert_allclose(problem.p, step.directions(G).T @ g, rtol=RTOL)


def test_eta_zero_drops_shift():
    _, G, g, H = _inputs(6)
    step = _random_step(np.random.default_rng(60), 5)
    problem = problem_from_gradients(G, g, lam=0.1, eta=0.0, H_T=H, step=step)
    np.testing.assert_allclose(problem.p, step.directions(G).T @ g, rtol=RTOL)
    assert not problem.has_quadratic


def test_asymmetric_hvp_warns(caplog):
    _, G, g, H = _inputs(7)
    skew = np.triu(np.ones((5, 5)), 1)
    with caplog.at_level(logging.WARNING, logger="idopt.constructors"):
        problem = problem_from_gradients(G, g, lam=10.0, eta=0.1, hvp=lambda V: (H + skew) @ V)
    assert "not symmetric" in caplog.text
    np.testing.assert_allclose(problem.Q, problem.Q.T)


def test_dense_curvature_memory_path():
    _, G, _, H = _inputs(8, d=3, n=7)
    Q = dense_curvature_from_hvp(G, lambda V: H @ V, block_size=3)
    np.testing.assert_allclose(Q, G.T @ H @ G, rtol=RTOL)


def test_indefinite_hessian_needs_lam():
    _, G, g, H = _inputs(9, indefinite=True)
    with pytest.raises(InvalidInputError, match="not positive definite"):
        problem_from_gradients(G, g, lam=0.0, eta=1.0, H_T=H)
    problem = problem_from_gradients(G, g, lam=0.0, eta=1.0, H_T=H, check_psd=False)
    assert problem.has_quadratic


def _good():
    _, G, g, H = _inputs(10)
    return {"G_S": G, "g_T": g, "lam": 0.1, "eta": 0.5, "H_T": H}


BAD_INPUTS = [
    ("G_S", {"G_S": np.ones(5)}, "G_S"),
    ("G_S int", {"G_S": np.ones((5, 4), dtype=int)}, "G_S"),
    ("G_S empty", {"G_S": np.ones((5, 0))}, "G_S"),
    ("G_S nan", {"G_S": np.full((5, 4), np.nan)}, "G_S"),
    ("g_T rows", {"g_T": np.ones(6)}, "g_T"),
    ("g_T no columns", {"g_T": np.ones((5, 0))}, "g_T"),
    ("g_T inf", {"g_T": np.array([np.inf, 0, 0, 0, 0])}, "g_T"),
    ("H_T shape", {"H_T": np.eye(4)}, "H_T"),
    ("H_T asymmetric", {"H_T": np.triu(np.ones((5, 5)))}, "H_T"),
    ("H_T nan", {"H_T": np.full((5, 5), np.nan)}, "H_T"),
    ("both curvatures", {"hvp": lambda V: V}, "not both"),
    ("hvp not callable", {"H_T": None, "hvp": np.eye(5)}, "hvp"),
    ("hvp shape", {"H_T": None, "hvp": lambda V: V[:-1]}, "hvp"),
    ("hvp nan", {"H_T": None, "hvp": lambda V: np.nan * V}, "hvp"),
    ("eta", {"eta": -1.0}, "eta"),
    ("lam", {"lam": -1.0}, "lam"),
    ("c", {"c": 0.0}, "c"),
    ("budget", {"budget": 0.0}, "budget"),
    ("factored", {"factored": "yes"}, "factored"),
    ("block_size", {"block_size": 0}, "block_size"),
    ("step type", {"step": 1.0}, "step"),
    ("step dim", {"step": StepModel(np.ones(3))}, "G_S"),
]


@pytest.mark.parametrize("label,change,name", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_raise(label, change, name):
    kwargs = _good()
    kwargs.update(change)
    G, g = kwargs.pop("G_S"), kwargs.pop("g_T")
    with pytest.raises(InvalidInputError, match=name):
        problem_from_gradients(G, g, **kwargs)


def test_bad_weights_raise():
    problem = problem_from_gradients(**_good())
    with pytest.raises(InvalidInputError, match="w must have shape"):
        predicted_loss_change(problem, np.ones(3))


def test_sgd_identity():
    model = sgd_step_model()
    assert model.scale == 1.0
    assert model.offset is None
    G = np.arange(6.0).reshape(3, 2)
    assert model.directions(G) is G


def test_sgd_momentum_model():
    theta, buffer = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    state = SGDState(momentum=0.9, dampening=0.1, weight_decay=0.2, momentum_buffer=buffer, params=theta)
    model = sgd_step_model(state)
    # buffer' = mu m + (1 - dampening)(g + wd theta), so s = 0.9 and b0 = 0.9 m + 0.9 * 0.2 theta.
    assert model.scale == pytest.approx(0.9)
    np.testing.assert_allclose(model.offset, 0.9 * buffer + 0.9 * 0.2 * theta)


def test_frozen_v_exact_at_estimate():
    """Frozen v_hat = v / (1 - beta2^s) equals v' / (1 - beta2^(s+1)) when g^2 = v_hat."""
    rng = np.random.default_rng(11)
    d = 6
    state = AdamState(rng.normal(size=d), rng.random(d), step=4, betas=(0.8, 0.95), eps=1e-3)
    grad = np.sqrt(state.exp_avg_sq / (1 - 0.95**4))
    frozen = adam_step_model(state)
    exact = adam_step_model(state, exp_avg_sq_next=state.next_exp_avg_sq(grad))
    np.testing.assert_allclose(frozen.scale, exact.scale, rtol=1e-12)
    np.testing.assert_allclose(frozen.offset, exact.offset, rtol=1e-12)


def test_adam_model_formula():
    m, v = np.array([0.1, -0.2]), np.array([0.04, 0.01])
    state = AdamState(m, v, step=2, betas=(0.9, 0.99), eps=1e-8)
    model = adam_step_model(state)
    # Step t = 3: bias corrections 1 - 0.9^3 and the frozen v_hat = v / (1 - 0.99^2).
    denominator = (1 - 0.9**3) * (np.sqrt(v / (1 - 0.99**2)) + 1e-8)
    np.testing.assert_allclose(model.scale, 0.1 / denominator, rtol=1e-14)
    np.testing.assert_allclose(model.offset, 0.9 * m / denominator, rtol=1e-14)


def test_adamw_decay_not_scaled():
    m, v, theta = np.array([0.1, -0.2]), np.array([0.04, 0.01]), np.array([3.0, -1.0])
    plain = adam_step_model(AdamState(m, v, step=2))
    decoupled = adam_step_model(AdamState(m, v, step=2, weight_decay=0.1, decoupled_weight_decay=True, params=theta))
    coupled = adam_step_model(AdamState(m, v, step=2, weight_decay=0.1, params=theta))
    np.testing.assert_allclose(decoupled.offset - plain.offset, 0.1 * theta, rtol=1e-14)
    np.testing.assert_allclose(coupled.offset - plain.offset, plain.scale * 0.1 * theta, rtol=1e-14)


def test_adam_first_step_needs_v():
    state = AdamState(np.zeros(3), np.zeros(3), step=0)
    with pytest.raises(InvalidInputError, match="exp_avg_sq_next"):
        adam_step_model(state)
    grad = np.array([1.0, -2.0, 0.5])
    model = adam_step_model(state, exp_avg_sq_next=state.next_exp_avg_sq(grad))
    # First Adam step: m'/(1-beta1) = g and sqrt(v'/(1-beta2)) = |g|, so the step is about sign(g).
    np.testing.assert_allclose(model.scale * grad, np.sign(grad), rtol=1e-7)


BAD_STATES = [
    ("momentum", lambda: SGDState(momentum=1.5), "momentum"),
    ("nesterov dampening", lambda: SGDState(momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    ("sgd decay without params", lambda: SGDState(weight_decay=0.1), "params"),
    ("buffer shape", lambda: SGDState(momentum=0.9, momentum_buffer=np.ones(2), params=np.ones(3)), "momentum_buffer"),
    ("exp_avg_sq negative", lambda: AdamState(np.ones(2), -np.ones(2), step=1), "exp_avg_sq"),
    ("exp_avg_sq shape", lambda: AdamState(np.ones(2), np.ones(3), step=1), "exp_avg_sq"),
    ("step negative", lambda: AdamState(np.ones(2), np.ones(2), step=-1), "step"),
    ("step float", lambda: AdamState(np.ones(2), np.ones(2), step=1.5), "step"),
    ("beta1", lambda: AdamState(np.ones(2), np.ones(2), step=1, betas=(1.0, 0.9)), "betas"),
    ("eps", lambda: AdamState(np.ones(2), np.ones(2), step=1, eps=0.0), "eps"),
    ("adam decay without params", lambda: AdamState(np.ones(2), np.ones(2), step=1, weight_decay=0.1), "params"),
    ("v next shape", lambda: adam_step_model(AdamState(np.ones(2), np.ones(2), step=1), exp_avg_sq_next=np.ones(3)), "exp_avg_sq_next"),
    ("scale nan", lambda: StepModel(np.array([np.nan])), "scale"),
    ("offset shape", lambda: StepModel(np.ones(2), np.ones(3)), "offset"),
]


@pytest.mark.parametrize("label,build,name", BAD_STATES, ids=[case[0] for case in BAD_STATES])
def test_bad_states_raise(label, build, name):
    with pytest.raises(InvalidInputError, match=name):
        build()


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import idopt.constructors, idopt.optimizers"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
