"""Reading, checking and saving Adam/AdamW optimizer state by parameter name."""

import logging

import numpy as np
import pytest
import torch

from gradients.optimizer_state import OptimizerState, load_optimizer_state, trainer_parameter_order
from gradients.params import ParameterMask, select_parameters
from idopt.errors import InvalidInputError
from idopt.optimizers import AdamState, adam_step_model
from tests.tiny_models import tiny_model


def _train(model, optimizer, steps=2):
    ids = torch.randint(2, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return optimizer


def _adamw(model, **kwargs):
    return _train(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **kwargs))


def _assert_moments_match(state, optimizer, model):
    by_param = {id(p): name for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = by_param[id(param)]
            torch.testing.assert_close(state.exp_avg[name], optimizer.state[param]["exp_avg"])
            torch.testing.assert_close(state.exp_avg_sq[name], optimizer.state[param]["exp_avg_sq"])


def test_state_from_optimizer_by_name():
    model = tiny_model("llama", layers=1)
    optimizer = _adamw(model)
    state = OptimizerState.from_optimizer(optimizer, model)
    assert state.step == 2
    assert state.decoupled_weight_decay
    assert state.betas == (0.9, 0.999)
    assert list(state.exp_avg) == [name for name, _ in model.named_parameters()]
    _assert_moments_match(state, optimizer, model)


def test_save_load_round_trip(tmp_path):
    model = tiny_model("llama", layers=1)
    optimizer = _adamw(model)
    OptimizerState.from_optimizer(optimizer, model).save(tmp_path / "state")
    loaded = load_optimizer_state(tmp_path / "state", model)
    assert loaded.step == 2
    assert loaded.settings["lm_head.weight"].weight_decay == 0.01
    _assert_moments_match(loaded, optimizer, model)


def test_torch_state_dict_in_model_order(tmp_path):
    model = tiny_model("llama", layers=1)
    optimizer = _adamw(model)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    state = load_optimizer_state(tmp_path / "optimizer.pt", model)
    _assert_moments_match(state, optimizer, model)


def test_torch_state_dict_with_param_names(tmp_path):
    """Named parameters in reversed order: the stored names, not the model order, decide."""
    model = tiny_model("llama", layers=1)
    named = list(model.named_parameters())[::-1]
    optimizer = _train(model, torch.optim.AdamW(named, lr=1e-3))
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    state = load_optimizer_state(tmp_path / "optimizer.pt", model)
    _assert_moments_match(state, optimizer, model)


def test_trainer_checkpoint_groups(tmp_path):
    """A Trainer checkpoint stores two groups: weight-decayed parameters, then biases and norms."""
    model = tiny_model("llama", layers=1)
    order = trainer_parameter_order(model)
    parameters = dict(model.named_parameters())
    decay = [n for n in order if "norm" not in n]
    rest = [n for n in order if "norm" in n]
    assert order == decay + rest
    groups = [
        {"params": [parameters[n] for n in decay], "weight_decay": 0.1},
        {"params": [parameters[n] for n in rest], "weight_decay": 0.0},
    ]
    optimizer = _train(model, torch.optim.AdamW(groups, lr=1e-3))
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    state = load_optimizer_state(folder, model)
    _assert_moments_match(state, optimizer, model)
    assert state.settings[rest[0]].weight_decay == 0.0
    assert state.settings[decay[0]].weight_decay == 0.1


def test_mismatched_model_names_first_parameter(tmp_path):
    trained = tiny_model("llama", layers=1)
    optimizer = _adamw(trained)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    other = tiny_model("llama", layers=1, vocab_size=80)
    with pytest.raises(InvalidInputError, match="'model.embed_tokens.weight' has shape"):
        load_optimizer_state(tmp_path / "optimizer.pt", other)


def test_saved_state_rejects_other_model(tmp_path):
    model = tiny_model("llama", layers=2)
    OptimizerState.from_optimizer(_adamw(model), model).save(tmp_path / "state")
    smaller = tiny_model("llama", layers=1)
    with pytest.raises(InvalidInputError, match="'model.layers.1.self_attn.q_proj.weight' is not in the model"):
        load_optimizer_state(tmp_path / "state", smaller)


def test_parameter_count_mismatch(tmp_path):
    model = tiny_model("llama", layers=2)
    optimizer = _adamw(model)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    with pytest.raises(InvalidInputError, match="contains .* parameters but .* parameter names"):
        load_optimizer_state(tmp_path / "optimizer.pt", tiny_model("llama", layers=1))


def test_amsgrad_rejected(tmp_path):
    model = tiny_model("llama", layers=1)
    optimizer = _adamw(model, amsgrad=True)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    with pytest.raises(InvalidInputError, match="amsgrad"):
        load_optimizer_state(tmp_path / "optimizer.pt", model)


def test_non_adam_state_rejected(tmp_path):
    model = tiny_model("llama", layers=1)
    optimizer = _train(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    with pytest.raises(InvalidInputError, match="not an Adam state dict"):
        load_optimizer_state(tmp_path / "optimizer.pt", model)


def test_missing_path_and_unknown_folder(tmp_path):
    model = tiny_model("llama", layers=1)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_optimizer_state(tmp_path / "nowhere", model)
    with pytest.raises(InvalidInputError, match="contains neither"):
        load_optimizer_state(tmp_path, model)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InvalidInputError, match="weights_only=True"):
        load_optimizer_state(tmp_path / "junk.pt", model)


def test_learning_rate_rules(caplog):
    model = tiny_model("llama", layers=1)
    optimizer = _adamw(model)
    state = OptimizerState.from_optimizer(optimizer, model)
    names = list(state.exp_avg)
    assert state.learning_rate(names) == pytest.approx(1e-3)
    assert state.learning_rate(names, 5e-4) == 5e-4
    with pytest.raises(InvalidInputError, match="learning rate -1"):
        state.learning_rate(names, -1.0)
    for settings in state.settings.values():
        settings.lr, settings.initial_lr = 0.0, 2e-3
    with caplog.at_level(logging.WARNING):
        assert state.learning_rate(names) == pytest.approx(2e-3)
    assert "schedule ended at zero" in caplog.text
    for settings in state.settings.values():
        settings.initial_lr = None
    with pytest.raises(InvalidInputError, match="pass the learning rate"):
        state.learning_rate(names)


def test_untrained_parameter_reported():
    model = tiny_model("llama", layers=1)
    optimizer = _train(model, torch.optim.AdamW(select_parameters(model, "mlp").values(), lr=1e-3))
    state = OptimizerState.from_optimizer(optimizer, model)
    with pytest.raises(InvalidInputError, match="no moments for the selected parameter 'model.embed_tokens.weight'"):
        state.require([name for name, _ in model.named_parameters()])


def _flat(tensors, names, mask=None):
    flat = torch.cat([tensors[name].detach().reshape(-1) for name in names]).double().numpy()
    return flat if mask is None else flat[mask.indices.numpy()]


@pytest.mark.parametrize("masked", [False, True])
def test_step_vectors_match_adam_step_model(masked):
    """Per-parameter assembly (mask, weight decay per group) equals the flat idopt model."""
    model = tiny_model("llama", layers=1)
    parameters = dict(model.named_parameters())
    decay = [n for n in parameters if "norm" not in n]
    rest = [n for n in parameters if "norm" in n]
    groups = [{"params": [parameters[n] for n in decay], "weight_decay": 0.1},
              {"params": [parameters[n] for n in rest], "weight_decay": 0.0}]
    optimizer = _train(model, torch.optim.AdamW(groups, lr=1e-3), steps=3)
    state = OptimizerState.from_optimizer(optimizer, model)
    params = select_parameters(model, "all")
    names = list(params)
    mask = ParameterMask.for_params(params, count=500, seed=2) if masked else None
    split = None if mask is None else mask.split([int(p.numel()) for p in params.values()])
    scale, offset = state.step_vectors(params, split, eta=1e-3)

    decay_vector = {n: torch.full_like(parameters[n], 0.1 if n in decay else 0.0) for n in names}
    reference = adam_step_model(AdamState(
        exp_avg=_flat(state.exp_avg, names, mask), exp_avg_sq=_flat(state.exp_avg_sq, names, mask), step=3,
        weight_decay=1.0, decoupled_weight_decay=True,
        params=_flat({n: parameters[n] * decay_vector[n] for n in names}, names, mask),
    ))
    np.testing.assert_allclose(scale.numpy(), reference.scale, rtol=1e-12)
    # The reference multiplies wd theta in float32, so the offsets agree to float32 rounding.
    np.testing.assert_allclose(offset.numpy(), reference.offset, rtol=1e-6, atol=1e-12)


def test_step_vectors_fold_group_learning_rates():
    """A group with twice the lr has twice the scale and offset at the same eta."""
    model = tiny_model("llama", layers=1)
    parameters = dict(model.named_parameters())
    names = list(parameters)
    groups = [{"params": [parameters[names[0]]], "lr": 2e-3}, {"params": [parameters[n] for n in names[1:]]}]
    optimizer = _train(model, torch.optim.Adam(groups, lr=1e-3))
    state = OptimizerState.from_optimizer(optimizer, model)
    params = select_parameters(model, "all")
    scale, _ = state.step_vectors(params, None, eta=1e-3)
    assert state.learning_rate(names) == pytest.approx(2e-3)
    unfolded, _ = OptimizerState(
        state.exp_avg, state.exp_avg_sq,
        type(state.settings)((n, type(s)(1e-3, s.weight_decay)) for n, s in state.settings.items()),
        state.step, state.betas, state.eps, state.decoupled_weight_decay,
    ).step_vectors(params, None, eta=1e-3)
    first = parameters[names[0]].numel()
    torch.testing.assert_close(scale[:first], 2 * unfolded[:first])
    torch.testing.assert_close(scale[first:], unfolded[first:])


def test_step_vectors_with_mean_gradient():
    """a uses v' = beta2 v + (1 - beta2) g_bar^2, which bounds it where v is zero."""
    model = tiny_model("llama", layers=1)
    optimizer = _adamw(model)
    state = OptimizerState.from_optimizer(optimizer, model)
    params = select_parameters(model, "all")
    names = list(params)
    first = names[0]
    state.exp_avg_sq[first].zero_()  # a coordinate block the warm-up never moved
    mean_gradient = torch.randn(sum(p.numel() for p in params.values()), dtype=torch.float64,
                                generator=torch.Generator().manual_seed(0))
    scale, _ = state.step_vectors(params, None, 1e-3, mean_gradient)
    adam = AdamState(exp_avg=_flat(state.exp_avg, names), exp_avg_sq=_flat(state.exp_avg_sq, names), step=2,
                     weight_decay=0.01, decoupled_weight_decay=True, params=_flat(params, names))
    reference = adam_step_model(adam, exp_avg_sq_next=adam.next_exp_avg_sq(mean_gradient.numpy()))
    np.testing.assert_allclose(scale.numpy(), reference.scale, rtol=1e-12)
    frozen, _ = state.step_vectors(params, None, 1e-3)
    size = params[first].numel()
    assert float(frozen[:size].max()) > 1e6  # (1 - beta1) / ((1 - beta1^t) eps)
    assert float(scale[:size].max()) < 1e4


def test_step_vectors_sparse_mask_skips_empty():
    """A mask that keeps no element of a tensor leaves that tensor out instead of failing."""
    model = tiny_model("llama", layers=1)
    state = OptimizerState.from_optimizer(_adamw(model), model)
    params = select_parameters(model, "all")
    mask = ParameterMask.for_params(params, count=5, seed=0)
    split = mask.split([int(p.numel()) for p in params.values()])
    assert any(len(indices) == 0 for indices in split)
    scale, offset = state.step_vectors(params, split, 1e-3)
    assert scale.shape == (5,)
    assert offset.shape == (5,)
    with pytest.raises(InvalidInputError, match="mean_gradient has 4 entries"):
        state.step_vectors(params, split, 1e-3, torch.zeros(4))
