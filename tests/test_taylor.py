"""Compare one real torch optimizer step with the quadratic model of the target-loss change.

The step of every optimizer modeled here is theta' - theta = -eta s(w) with s(w) independent of
eta, so L_T(theta') - L_T(theta) equals its second-order Taylor polynomial in eta up to
O(eta^3). A model with the exact step direction therefore has an error whose log-log slope
in eta is 3. A wrong first-order term (sign, 1/c, bias correction, frozen second moment)
leaves an O(eta) error (slope 1), and a wrong second-order term an O(eta^2) error (slope 2).
"""

import numpy as np
import pytest
import torch

from idopt.constructors import predicted_loss_change, problem_from_gradients
from idopt.optimizers import AdamState, SGDState, adam_step_model, sgd_step_model
from idopt.problem import WeightingProblem

IN, HIDDEN = 3, 4
D = HIDDEN * IN + HIDDEN + HIDDEN + 1  # parameters of the MLP: W1, b1, W2, b2
N_SOURCE, N_TARGET = 6, 5
WARMUP_LR = 0.05
ETAS = np.geomspace(3e-2, 3e-4, 5)
ORDER3_SLOPE = 2.7  # an O(eta^3) error fits a slope near 3
WRONG_SLOPE = 2.4  # wrong models leave O(eta) or O(eta^2) errors


def _data():
    gen = torch.Generator().manual_seed(0)
    f64 = torch.float64
    x_s = torch.randn(N_SOURCE, IN, generator=gen, dtype=f64)
    y_s = torch.randn(N_SOURCE, generator=gen, dtype=f64)
    x_t = torch.randn(N_TARGET, IN, generator=gen, dtype=f64) + 0.5
    y_t = torch.randn(N_TARGET, generator=gen, dtype=f64)
    theta0 = 0.5 * torch.randn(D, generator=gen, dtype=f64)
    return x_s, y_s, x_t, y_t, theta0


X_S, Y_S, X_T, Y_T, THETA0 = _data()
WEIGHTS = np.random.default_rng(1).random(N_SOURCE) + 0.2
WEIGHTS *= N_SOURCE / WEIGHTS.sum()  # budget b = n, the unweighted step at w = 1


def _losses(theta, x, y):
    """Per-sample losses 0.5 (f(x) - y)^2 of a 2-layer tanh MLP with flat parameters theta."""
    w1 = theta[: HIDDEN * IN].reshape(HIDDEN, IN)
    b1 = theta[HIDDEN * IN : HIDDEN * IN + HIDDEN]
    w2 = theta[HIDDEN * IN + HIDDEN : HIDDEN * IN + 2 * HIDDEN]
    b2 = theta[-1]
    out = torch.tanh(x @ w1.T + b1) @ w2 + b2
    return 0.5 * (out - y) ** 2


def _target_loss(theta):
    return _losses(theta, X_T, Y_T).mean()


def _weighted_source_loss(theta, w):
    """(1/c) sum_i w_i loss_i with c = n, the loss whose gradient is (1/c) G_S w."""
    return (torch.as_tensor(w) * _losses(theta, X_S, Y_S)).sum() / N_SOURCE


OPTIMIZERS = {
    "sgd": (lambda ps: torch.optim.SGD(ps, lr=WARMUP_LR), 0),
    "sgd_momentum_first": (lambda ps: torch.optim.SGD(ps, lr=WARMUP_LR, momentum=0.9, weight_decay=0.1), 0),
    "sgd_momentum_wd": (lambda ps: torch.optim.SGD(ps, lr=WARMUP_LR, momentum=0.9, weight_decay=0.1), 3),
    "sgd_dampening": (lambda ps: torch.optim.SGD(ps, lr=WARMUP_LR, momentum=0.8, dampening=0.3, weight_decay=0.05), 3),
    "sgd_nesterov": (lambda ps: torch.optim.SGD(ps, lr=WARMUP_LR, momentum=0.9, nesterov=True, weight_decay=0.1), 3),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=WARMUP_LR, foreach=False), 3),
    "adam_l2": (lambda ps: torch.optim.Adam(ps, lr=WARMUP_LR, weight_decay=0.1, foreach=False), 3),
    "adamw": (lambda ps: torch.optim.AdamW(ps, lr=WARMUP_LR, weight_decay=0.1, foreach=False), 3),
}
ADAM_KINDS = ("adam", "adam_l2", "adamw")


def _warm_optimizer(kind):
    """Return (theta, optimizer) after the warm-up steps of ``kind``, each with other weights."""
    make, warmup = OPTIMIZERS[kind]
    theta = torch.nn.Parameter(THETA0.clone())
    optimizer = make([theta])
    rng = np.random.default_rng(2)
    for _ in range(warmup):
        optimizer.zero_grad()
        _weighted_source_loss(theta, 2 * rng.random(N_SOURCE)).backward()
        optimizer.step()
    return theta, optimizer


def _flat_state(optimizer, params, key):
    """Concatenate state[key] of every parameter in order, or None when no parameter has it."""
    parts = [optimizer.state[p].get(key) for p in params]
    if any(part is None for part in parts):
        return None
    return np.concatenate([part.detach().reshape(-1).numpy() for part in parts])


def adam_state_from_torch(optimizer, params):
    """Copy the state of a torch Adam/AdamW optimizer over ``params`` into an AdamState."""
    group = optimizer.param_groups[0]
    steps = {int(optimizer.state[p]["step"]) for p in params}
    assert len(steps) == 1, "all parameters must have taken the same number of steps"
    return AdamState(
        exp_avg=_flat_state(optimizer, params, "exp_avg"),
        exp_avg_sq=_flat_state(optimizer, params, "exp_avg_sq"),
        step=steps.pop(),
        betas=tuple(group["betas"]),
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
        params=np.concatenate([p.detach().reshape(-1).numpy() for p in params]),
    )


def sgd_state_from_torch(optimizer, params):
    """Copy the state of a torch SGD optimizer over ``params`` into an SGDState."""
    group = optimizer.param_groups[0]
    return SGDState(
        momentum=group["momentum"],
        dampening=group["dampening"],
        weight_decay=group["weight_decay"],
        nesterov=group["nesterov"],
        momentum_buffer=_flat_state(optimizer, params, "momentum_buffer"),
        params=np.concatenate([p.detach().reshape(-1).numpy() for p in params]),
    )


def _gradients(theta):
    """Return exact G_S (d, n), g_T (d,) and H_T (d, d) at theta."""
    point = theta.detach().clone().requires_grad_(True)
    columns = [torch.autograd.grad(_losses(point, X_S[i : i + 1], Y_S[i : i + 1]).sum(), point)[0] for i in range(N_SOURCE)]
    g_T = torch.autograd.grad(_target_loss(point), point)[0]
    H_T = torch.autograd.functional.hessian(_target_loss, theta.detach().clone())
    return torch.stack(columns, dim=1).numpy(), g_T.numpy(), H_T.numpy()


def _actual_change(kind, eta, w):
    """Take one real step with learning rate eta on the weighted source loss; return (delta L_T, theta' - theta)."""
    theta, optimizer = _warm_optimizer(kind)
    before = theta.detach().clone()
    for group in optimizer.param_groups:
        group["lr"] = float(eta)
    optimizer.zero_grad()
    _weighted_source_loss(theta, w).backward()
    optimizer.step()
    with torch.no_grad():
        change = float(_target_loss(theta) - _target_loss(before))
    return change, (theta.detach() - before).numpy()


class Fixture:
    """Warm state, exact derivatives and actual loss changes of one optimizer kind."""

    def __init__(self, kind):
        self.kind = kind
        theta, optimizer = _warm_optimizer(kind)
        if kind in ADAM_KINDS:
            self.state = adam_state_from_torch(optimizer, [theta])
        else:
            self.state = sgd_state_from_torch(optimizer, [theta])
        self.G_S, self.g_T, self.H_T = _gradients(theta)
        self.g_w = self.G_S @ WEIGHTS / N_SOURCE
        actual = [_actual_change(kind, eta, WEIGHTS) for eta in ETAS]
        self.actual = np.array([change for change, _ in actual])
        self.displacements = [step for _, step in actual]

    def step_model(self, *, frozen=False, state=None):
        state = self.state if state is None else state
        if self.kind not in ADAM_KINDS:
            return sgd_step_model(state)
        if frozen:
            return adam_step_model(state)
        return adam_step_model(state, exp_avg_sq_next=state.next_exp_avg_sq(self.g_w))

    def predict(self, model, eta, *, c=None, sign=1.0, shift=True, curvature=True):
        H_T = self.H_T if curvature else None
        problem = problem_from_gradients(
            self.G_S, self.g_T, lam=0.0, eta=eta, H_T=H_T, step=model, c=c, check_psd=False
        )
        if not shift:
            D = model.directions(self.G_S)
            problem = WeightingProblem.create(D.T @ self.g_T, 0.0, eta=eta, c=c, A=D, H=self.H_T, check_psd=False)
        if sign != 1.0:
            problem = WeightingProblem.create(sign * problem.p, 0.0, eta=eta, c=c, A=problem.A, H=problem.H, check_psd=False)
        return predicted_loss_change(problem, WEIGHTS) + model.baseline_change(self.g_T, eta, H_T=H_T)

    def errors(self, **kwargs):
        model = self.step_model(frozen=kwargs.pop("frozen", False), state=kwargs.pop("state", None))
        predicted = np.array([self.predict(model, eta, **kwargs) for eta in ETAS])
        return np.abs(self.actual - predicted)


_FIXTURES = {}


def _fixture(kind):
    if kind not in _FIXTURES:
        _FIXTURES[kind] = Fixture(kind)
    return _FIXTURES[kind]


def _slope(errors):
    return float(np.polyfit(np.log(ETAS), np.log(errors), 1)[0])


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_step_model_matches_torch(kind):
    """The modeled displacement -(eta/c) D w - eta b0 equals torch's step up to rounding."""
    fixture = _fixture(kind)
    model = fixture.step_model()
    for eta, actual in zip(ETAS, fixture.displacements):
        modeled = model.displacement(fixture.G_S, WEIGHTS, eta, N_SOURCE)
        # Both are float64 sums of a few terms of size ~eta: 1e-12 relative leaves room for rounding only.
        np.testing.assert_allclose(modeled, actual, rtol=1e-10, atol=1e-12 * eta)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_error_is_third_order(kind):
    fixture = _fixture(kind)
    errors = fixture.errors()
    assert _slope(errors) >= ORDER3_SLOPE, errors
    # The quadratic model must also be much better than the first-order one at the smallest eta.
    first_order = abs(fixture.actual[-1])
    assert errors[-1] < 1e-3 * first_order, (errors[-1], first_order)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_wrong_sign_fails(kind):
    assert _slope(_fixture(kind).errors(sign=-1.0)) < WRONG_SLOPE


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_missing_pool_size_fails(kind):
    """c = 1 in place of c = n models a step n times too long: an O(eta) error."""
    assert _slope(_fixture(kind).errors(c=1.0)) < WRONG_SLOPE


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_first_order_model_fails(kind):
    """Dropping H_T (Q and the shift) leaves the O(eta^2) term of the expansion."""
    fixture = _fixture(kind)
    errors = fixture.errors(curvature=False)
    assert _slope(errors) < WRONG_SLOPE, errors
    assert errors[-1] > 10 * fixture.errors()[-1]


@pytest.mark.parametrize("kind", ["sgd_momentum_first", "sgd_momentum_wd", "sgd_dampening", "sgd_nesterov", "adam", "adam_l2", "adamw"])
def test_missing_shift_fails(kind):
    """Without g_T -> g_T - eta H_T b0 the cross term eta^2 b0^T H_T D w / c is lost: O(eta^2)."""
    fixture = _fixture(kind)
    errors = fixture.errors(shift=False)
    assert _slope(errors) < WRONG_SLOPE, errors
    assert errors[-1] > 10 * fixture.errors()[-1]


@pytest.mark.parametrize("kind", ADAM_KINDS)
def test_bias_correction_t_equal_s_fails(kind):
    """Bias corrections at t = s (the steps already taken) instead of t = s + 1 give an O(eta) error."""
    fixture = _fixture(kind)
    state = fixture.state
    early = AdamState(
        state.exp_avg, state.exp_avg_sq, state.step - 1, state.betas, state.eps,
        state.weight_decay, state.decoupled_weight_decay, state.params,
    )
    assert _slope(fixture.errors(state=early)) < WRONG_SLOPE


@pytest.mark.parametrize("kind", ADAM_KINDS)
def test_frozen_second_moment_is_first_order(kind):
    """The w-independent frozen-v model differs from the true step, so its error is O(eta), not O(eta^3)."""
    assert _slope(_fixture(kind).errors(frozen=True)) < WRONG_SLOPE


@pytest.mark.parametrize("kind", ADAM_KINDS)
def test_frozen_second_moment_gap_bounded(kind):
    """The frozen-v prediction stays within a bound set by the gap between frozen and exact v_hat.

    The step direction is s = u / den + k, with k = wd theta for AdamW and k = 0 for Adam, and
    den = sqrt(v_hat) + eps the only factor that freezing changes. With u_f = u / den_frozen,
    s_exact - s_frozen = e where |e_i| <= r |u_f_i| and r = max_i |den_frozen_i / den_exact_i - 1|.
    From delta(s) = -eta g_T^T s + (eta^2/2) s^T H_T s,
        |delta_exact - delta_frozen| <= eta r sum_i |g_i u_f_i| + eta^2 ||H_T||_2 (r ||s_f|| ||u_f|| + r^2 ||u_f||^2 / 2).
    """
    fixture = _fixture(kind)
    state = fixture.state
    beta2 = state.betas[1]
    frozen_hat = state.exp_avg_sq / (1 - beta2**state.step)
    exact_hat = state.next_exp_avg_sq(fixture.g_w) / (1 - beta2 ** (state.step + 1))
    ratio = (np.sqrt(frozen_hat) + state.eps) / (np.sqrt(exact_hat) + state.eps)
    r = float(np.max(np.abs(ratio - 1)))
    # Guard: the fixture must have a real gap, or the bound would be vacuous.
    assert r > 1e-3

    frozen = fixture.step_model(frozen=True)
    exact = fixture.step_model()
    s_frozen = -frozen.displacement(fixture.G_S, WEIGHTS, 1.0, N_SOURCE)
    u_frozen = s_frozen
    if state.decoupled_weight_decay:
        u_frozen = s_frozen - state.weight_decay * state.params
    norm_h = float(np.linalg.norm(fixture.H_T, 2))
    norm_s, norm_u = float(np.linalg.norm(s_frozen)), float(np.linalg.norm(u_frozen))
    for eta in ETAS:
        gap = abs(fixture.predict(exact, eta) - fixture.predict(frozen, eta))
        bound = eta * r * float(np.abs(fixture.g_T) @ np.abs(u_frozen)) + eta**2 * norm_h * (
            r * norm_s * norm_u + 0.5 * r * r * norm_u**2
        )
        assert gap <= bound, (eta, gap, bound)
        # The bound must not be loose by orders of magnitude, or passing it would prove little.
        assert gap >= 1e-3 * bound, (eta, gap, bound)
