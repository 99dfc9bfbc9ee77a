"""Taylor check on the real SmolLM2-135M-Instruct: one real weighted step against the quadratic model.

The target-loss change of one step theta' - theta = -eta s(w) is its second-order Taylor
polynomial in eta plus O(eta^3). The model is built by the package's own parts: per-sample
gradients, Hessian-vector products of the target loss (double backward) and, for AdamW, the
optimizer state read by parameter name. Its error must therefore fall like eta^3 (log-log
slope near 3); the first-order model alone leaves an O(eta^2) error (slope near 2).

Only the MLP weights of blocks 1 and 2 take the step (5.3 million parameters), which keeps
the Hessian-vector products quick. The gradients still flow through the whole model.
"""

import copy

import numpy as np
import pytest
import torch


pytestmark = pytest.mark.slow

PARAMS = r"re:model\.layers\.(1|2)\.mlp\.(gate|up|down)_proj\.weight"
WEIGHTS = np.array([1.6, 0.4, 1.2, 0.8])
ETAS = {"sgd": np.geomspace(2e-3, 2.5e-4, 4), "adamw": np.geomspace(1e-4, 1.25e-5, 4)}
ORDER3_SLOPE = 2.6
# The first-order error is O(eta^2) plus a third-order part still visible at these etas.
FIRST_ORDER_SLOPE = 2.5


def _conversation(index, question, answer, source):
    from gradients.data import Sample

    return Sample(f"{source}{index}", source, [{"role": "user", "content": question},
                                               {"role": "assistant", "content": answer}])


def _batches(tokenizer):
    from gradients.tokenize import collate, tokenize_samples

    source = [_conversation(0, "What is 2+3?", "5", "s"), _conversation(1, "Name a color.", "Blue", "s"),
              _conversation(2, "Capital of France?", "Paris", "s"), _conversation(3, "Say hi.", "Hello there!", "s")]
    target = [_conversation(0, "What is 4+4?", "8", "t"), _conversation(1, "What is 1+2?", "3", "t")]
    kept_source = tokenize_samples(source, tokenizer, 64).kept
    kept_target = tokenize_samples(target, tokenizer, 64).kept
    assert len(kept_source) == 4
    assert len(kept_target) == 2
    return kept_source, collate(kept_source, tokenizer.pad_token_id), collate(kept_target, tokenizer.pad_token_id)


def _taylor_errors(model, tokenizer, kind):
    """Return (etas, |actual - second-order model|, |actual - first-order model|)."""
    from gradients.hessian import TargetCurvature
    from gradients.optimizer_state import OptimizerState
    from gradients.params import select_parameters
    from gradients.per_sample import sample_loss
    from gradients.second_order import full_gradients
    from idopt.constructors import predicted_loss_change, problem_from_gradients
    from idopt.optimizers import AdamState, StepModel, adam_step_model

    source, source_batch, target_batch = _batches(tokenizer)
    params = select_parameters(model, PARAMS)
    names = list(params)
    count = len(source)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for param in model.parameters():
        param.requires_grad_(False)
    for param in params.values():
        param.requires_grad_(True)
    saved = {name: p.detach().clone() for name, p in params.items()}

    def target_loss():
        with torch.no_grad():
            return float(sample_loss(model, target_batch).double().mean())

    def weighted_loss():
        return (torch.as_tensor(WEIGHTS, dtype=torch.float32) * sample_loss(model, source_batch)).sum() / count

    try:
        if kind == "adamw":
            optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4, weight_decay=0.1)
            for _ in range(2):
                optimizer.zero_grad()
                weighted_loss().backward()
                optimizer.step()
        else:
            optimizer = torch.optim.SGD(list(params.values()), lr=1e-3)
        start = {name: p.detach().clone() for name, p in params.items()}
        start_state = copy.deepcopy(optimizer.state_dict())

        G = full_gradients(model, source, params, None, tokenizer.pad_token_id, 4, "source").double().numpy().T
        curvature = TargetCurvature(model, [target_batch], params)
        g_T = curvature.gradient().double().cpu().numpy()
        hvp = curvature.numpy_hvp()
        if kind == "adamw":
            state = OptimizerState.from_optimizer(optimizer, model)

            def flat(tensors):
                return np.concatenate([tensors[name].reshape(-1).double().numpy() for name in names])

            adam = AdamState(exp_avg=flat(state.exp_avg), exp_avg_sq=flat(state.exp_avg_sq), step=state.step,
                             betas=state.betas, eps=state.eps, weight_decay=0.1, decoupled_weight_decay=True,
                             params=flat(start))
            # The exact second moment of this step makes the model exact to second order.
            step = adam_step_model(adam, exp_avg_sq_next=adam.next_exp_avg_sq(G @ WEIGHTS / count))
        else:
            step = StepModel.identity()

        before = target_loss()
        second, first = [], []
        for eta in ETAS[kind]:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(start[name])
            optimizer.load_state_dict(copy.deepcopy(start_state))
            for group in optimizer.param_groups:
                group["lr"] = float(eta)
            optimizer.zero_grad()
            weighted_loss().backward()
            optimizer.step()
            actual = target_loss() - before
            problem = problem_from_gradients(G, g_T, lam=0.0, eta=eta, hvp=hvp, step=step, c=count, check_psd=False)
            predicted = predicted_loss_change(problem, WEIGHTS) + step.baseline_change(g_T, eta, hvp=hvp)
            linear = -(eta / count) * float(WEIGHTS @ (step.directions(G).T @ g_T)) + step.baseline_change(g_T, eta)
            second.append(abs(actual - predicted))
            first.append(abs(actual - linear))
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])
        for param, flag in flags:
            param.requires_grad_(flag)
    return ETAS[kind], np.array(second), np.array(first)


def _slopes(etas, errors):
    return np.diff(np.log(errors)) / np.diff(np.log(etas))


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_real_taylor_check(real_model, kind):
    model, tokenizer = real_model
    etas, second, first = _taylor_errors(model, tokenizer, kind)
    assert np.median(_slopes(etas, second)) >= ORDER3_SLOPE, (second, _slopes(etas, second))
    assert np.median(_slopes(etas, first)) < FIRST_ORDER_SLOPE, (first, _slopes(etas, first))
    assert 3 * second[-1] < first[-1], (second, first)
