"""Tests of the AdamW warm-up (``gradients.warmup``, ``idopt warmup``) on tiny random models."""

import copy
import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from gradients.data import load_samples
from gradients.optimizer_state import load_optimizer_state, trainer_parameter_order
from gradients.per_sample import sample_loss
from gradients.tokenize import collate, tokenize_samples
from gradients.warmup import WarmupConfig, run_warmup, schedule_factor
from idopt.errors import AssetError, InvalidInputError
from tests.tiny_models import tiny_model
from tests.sample_files import pool_records as _pool_records
from tests.sample_files import write_jsonl as _write
from tests.tiny_tokenizer import tiny_chat_tokenizer

TARGET = [
    {"id": "t0", "source": "goal_a", "prompt": "count apples", "completion": "three"},
    {"id": "t1", "source": "goal_b", "prompt": "two plus two", "completion": "four"},
]


@pytest.fixture()
def tiny(tmp_path):
    tokenizer = tiny_chat_tokenizer()
    model = tiny_model("llama", layers=2, vocab_size=len(tokenizer))
    pool = _write(tmp_path / "pool.jsonl", _pool_records(24))
    target = _write(tmp_path / "target.jsonl", TARGET)
    return model, tokenizer, pool, target


def _config(pool, target, out, **overrides):
    settings = dict(pool=[pool], target=[target], num_samples=16, steps=4, batch_size=8, lr=1e-3,
                    max_length=64, output=str(out))
    settings.update(overrides)
    return WarmupConfig(**settings)


def _subset_loss(model, tokenizer, pool, sample_ids):
    """Mean per-sample loss of the samples with these ids, one batch, no gradient."""
    tokenized = tokenize_samples(load_samples(pool), tokenizer, 64, progress=False).kept
    chosen = [t for t in tokenized if t.sample_id in set(sample_ids)]
    with torch.no_grad():
        return float(sample_loss(model, collate(chosen, tokenizer.pad_token_id)).mean())


# ---------------------------------------------------------------- schedule


def test_schedule_factor_follows_the_documented_formulas():
    assert [schedule_factor(s, 10, 0, "constant") for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert [schedule_factor(s, 10, 0, "linear") for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert schedule_factor(0, 10, 0, "cosine") == 1.0
    assert schedule_factor(5, 10, 0, "cosine") == pytest.approx(0.5)
    assert schedule_factor(10, 10, 0, "cosine") == 0.0
    # Ramp-up: s / W, then the decay over the remaining T - W steps.
    assert [schedule_factor(s, 10, 4, "linear") for s in (0, 2, 4, 7, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert [schedule_factor(s, 10, 4, "constant") for s in (1, 4, 10)] == [0.25, 1.0, 1.0]
    with pytest.raises(InvalidInputError, match="schedule"):
        schedule_factor(0, 10, 0, "step")


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_factor_matches_transformers(schedule):
    from transformers import optimization

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    if schedule == "constant":
        scheduler = optimization.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=3)
    elif schedule == "linear":
        scheduler = optimization.get_linear_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=10)
    else:
        scheduler = optimization.get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=10)
    for step in range(11):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule_factor(step, 10, 3, schedule), abs=1e-12)
        optimizer.step()
        scheduler.step()


# ---------------------------------------------------------------- training


def test_first_loss_is_the_mean_per_sample_loss(tiny, tmp_path):
    """With one batch per epoch, step 0's loss is the mean sample_loss of the untrained model on the subset."""
    model, tokenizer, pool, target = tiny
    before = copy.deepcopy(model)
    result = run_warmup(_config(pool, target, tmp_path / "out", num_samples=8, steps=1), model=model,
                        tokenizer=tokenizer, progress=False)
    assert len(result.sample_ids) == 8
    assert result.losses[0] == pytest.approx(_subset_loss(before, tokenizer, pool, result.sample_ids), rel=1e-5)


def test_warmup_lowers_the_loss_on_its_subset(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    before = copy.deepcopy(model)
    result = run_warmup(_config(pool, target, tmp_path / "out", steps=40, lr=1e-2), model=model,
                        tokenizer=tokenizer, progress=False)
    assert len(result.losses) == 40
    assert all(math.isfinite(v) for v in result.losses)
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5])
    start = _subset_loss(before, tokenizer, pool, result.sample_ids)
    end = _subset_loss(model, tokenizer, pool, result.sample_ids)
    assert end < 0.8 * start
    assert model.training is False  # kept in eval mode: no dropout


def test_same_seed_gives_the_same_run(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    twin = copy.deepcopy(model)
    first = run_warmup(_config(pool, target, tmp_path / "a", steps=5), model=model, tokenizer=tokenizer, progress=False)
    # A Path output (not a str) works as well.
    config = _config(pool, target, tmp_path / "b", steps=5)
    config.output = tmp_path / "b"
    second = run_warmup(config, model=twin, tokenizer=tokenizer, progress=False)
    assert first.sample_ids == second.sample_ids
    assert first.losses == second.losses


def test_linear_state_round_trips(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    config = _config(pool, target, tmp_path / "out", steps=6, schedule="linear", warmup_steps=2, weight_decay=0.01)
    result = run_warmup(config, model=model, tokenizer=tokenizer, progress=False)
    assert result.learning_rates == pytest.approx([1e-3 * schedule_factor(s, 6, 2, "linear") for s in range(6)])
    assert result.learning_rates[0] == 0.0
    assert result.next_lr == 0.0

    state = load_optimizer_state(result.optimizer_dir, model)
    # Every parameter, in the Trainer's order: the decayed group, then biases and norms.
    assert list(state.exp_avg) == trainer_parameter_order(model)
    assert set(state.exp_avg) == {name for name, _ in model.named_parameters()}
    assert state.step == 6
    assert state.betas == (0.9, 0.999)
    assert state.eps == 1e-8
    assert state.decoupled_weight_decay
    for name, param in model.named_parameters():
        live = result.optimizer.state[param]
        assert torch.equal(state.exp_avg[name], live["exp_avg"])
        assert torch.equal(state.exp_avg_sq[name], live["exp_avg_sq"])
        settings = state.settings[name]
        assert settings.lr == 0.0
        assert settings.initial_lr == pytest.approx(1e-3)
        # Trainer convention: no weight decay on norm weights (and biases), the rest decays.
        assert settings.weight_decay == (0.0 if "norm" in name else 0.01)
    assert state.extra["steps"] == 6
    assert state.extra["schedule"] == "linear"
    assert state.extra["sample_ids"] == result.sample_ids
    assert state.extra["final_loss"] == result.losses[-1]

    summary = json.loads((result.output / "warmup.json").read_text())
    assert summary["losses"] == result.losses
    assert summary["sample_ids"] == result.sample_ids
    assert summary["settings"]["schedule"] == "linear"
    assert summary["seconds"] > 0


def test_zero_final_lr_uses_initial_lr(tiny, tmp_path, caplog):
    model, tokenizer, pool, target = tiny
    result = run_warmup(_config(pool, target, tmp_path / "out", schedule="linear"), model=model,
                        tokenizer=tokenizer, progress=False)
    state = load_optimizer_state(result.optimizer_dir, model)
    with caplog.at_level(logging.WARNING, logger="gradients.optimizer_state"):
        assert state.learning_rate(list(state.exp_avg)) == pytest.approx(1e-3)
    assert "initial learning rate" in caplog.text
    assert state.learning_rate(list(state.exp_avg), override=5e-4) == 5e-4


@pytest.mark.parametrize("schedule, expected", [("constant", 1.0), ("cosine", 0.0)])
def test_state_lr_is_the_next_steps_lr(tiny, tmp_path, schedule, expected):
    model, tokenizer, pool, target = tiny
    result = run_warmup(_config(pool, target, tmp_path / "out", schedule=schedule), model=model,
                        tokenizer=tokenizer, progress=False)
    state = load_optimizer_state(result.optimizer_dir, model)
    assert all(s.lr == pytest.approx(expected * 1e-3, abs=1e-15) for s in state.settings.values())
    assert all(s.initial_lr == pytest.approx(1e-3) for s in state.settings.values())


def test_saved_model_reloads_from_safetensors(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradients.model import load_model

    model, tokenizer, pool, target = tiny
    result = run_warmup(_config(pool, target, tmp_path / "out"), model=model, tokenizer=tokenizer, progress=False)
    assert (result.model_dir / "model.safetensors").is_file()
    assert not list(result.model_dir.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir, use_safetensors=True)
    trained = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    assert AutoTokenizer.from_pretrained(result.model_dir).chat_template == tokenizer.chat_template
    again, _ = load_model(result.model_dir, device="cpu")
    assert load_optimizer_state(result.optimizer_dir, again).step == 4


def test_frozen_parameters_get_no_state_and_stay_unchanged(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = run_warmup(_config(pool, target, tmp_path / "out", params="down_proj", lr=1e-2), model=model,
                        tokenizer=tokenizer, progress=False)
    state = load_optimizer_state(result.optimizer_dir, model)
    assert sorted(state.exp_avg) == sorted(n for n in before if "down_proj" in n) == sorted(result.trained_parameters)
    for name, param in model.named_parameters():
        if "down_proj" in name:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name
        assert param.requires_grad  # the freeze is undone after the call
    with pytest.raises(InvalidInputError, match="q_proj"):
        state.require(["model.layers.0.self_attn.q_proj.weight"])


def test_target_samples_are_left_out(tiny, tmp_path, caplog):
    model, tokenizer, pool, target = tiny
    records = _pool_records(10) + [{"id": "copy", "source": "x", "prompt": "count apples", "completion": "three"}]
    pool = _write(tmp_path / "pool_with_target.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="gradients.warmup"):
        result = run_warmup(_config(pool, target, tmp_path / "out", num_samples=50, steps=1), model=model,
                            tokenizer=tokenizer, progress=False)
    assert "copy" not in result.sample_ids
    assert sorted(result.sample_ids) == sorted(f"p{i}" for i in range(10))
    assert "Left 1 target samples out" in caplog.text
    assert "num_samples=50 exceeds the 10 pool samples" in caplog.text


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("setting, value", [
    ("steps", 0), ("steps", 2.5), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")), ("batch_size", 0),
    ("num_samples", 0), ("max_length", 0), ("warmup_steps", 9), ("warmup_steps", -1), ("schedule", "step"),
    ("weight_decay", -0.1), ("grad_clip", 0.0), ("seed", -1), ("dtype", "int8"), ("params", ""),
    ("betas", (0.9, 1.0)), ("eps", 0.0),
])
def test_bad_settings_name_the_setting(tmp_path, setting, value):
    config = WarmupConfig(pool=[_write(tmp_path / "pool.jsonl", _pool_records(3))], steps=8, output=str(tmp_path / "o"))
    setattr(config, setting, value)
    with pytest.raises(InvalidInputError, match=f"^{setting}="):
        config.validate()


def test_missing_pool_file_is_named(tmp_path):
    with pytest.raises(InvalidInputError, match="pool file .*nope.jsonl"):
        WarmupConfig(pool=[str(tmp_path / "nope.jsonl")]).validate()


def test_unknown_params_spec_fails_before_training(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    with pytest.raises(InvalidInputError, match="no_such_layer"):
        run_warmup(_config(pool, target, tmp_path / "out", params="no_such_layer"), model=model,
                   tokenizer=tokenizer, progress=False)
    assert not (tmp_path / "out" / "model").exists()


def test_existing_output_needs_overwrite(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    out = tmp_path / "out"
    first = run_warmup(_config(pool, target, out, steps=1), model=model, tokenizer=tokenizer, progress=False)
    (out / "notes.txt").write_text("keep me")
    (first.model_dir / "stale.safetensors").write_text("old")
    with pytest.raises(InvalidInputError, match=f"{out}.*--overwrite"):
        run_warmup(_config(pool, target, out, steps=1), model=model, tokenizer=tokenizer, progress=False)
    second = run_warmup(_config(pool, target, out, steps=2, overwrite=True), model=model, tokenizer=tokenizer,
                        progress=False)
    assert second.state.step == 2
    assert json.loads((out / "warmup.json").read_text())["steps"] == 2
    assert not (first.model_dir / "stale.safetensors").exists()
    assert (out / "notes.txt").read_text() == "keep me"


def test_non_finite_loss_names_the_learning_rate(tiny, tmp_path):
    model, tokenizer, pool, target = tiny
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(InvalidInputError, match="not finite at step 0.*lr="):
        run_warmup(_config(pool, target, tmp_path / "out"), model=model, tokenizer=tokenizer, progress=False)
    assert not (tmp_path / "out" / "model").exists()


# ---------------------------------------------------------------- command line


def test_cli_warmup_end_to_end(tiny, tmp_path, capsys):
    from idopt.cli import main

    model, tokenizer, pool, target = tiny
    model_dir = tmp_path / "tiny_model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "warm"
    argv = ["warmup", "--model", str(model_dir), "--pool", pool, "--target", target, "--steps", "3",
            "--num-samples", "8", "--batch-size", "4", "--max-length", "64", "--lr", "1e-3",
            "--schedule", "linear", "--device", "cpu", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 AdamW steps on 8 pool samples" in printed
    assert f"idopt select --model {out / 'model'} --optimizer-state {out / 'optimizer'}" in printed
    assert "initial lr 0.001" in printed
    state = json.loads((out / "optimizer" / "optimizer_state.json").read_text())
    assert state["step"] == 3
    assert state["extra"]["batch_size"] == 4
    assert (out / "model" / "model.safetensors").is_file()

    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--steps", "2"]) == 0
    assert json.loads((out / "warmup.json").read_text())["steps"] == 2


def test_cli_rejects_bad_steps(tiny, tmp_path, capsys):
    from idopt.cli import main

    _, _, pool, target = tiny
    assert main(["warmup", "--pool", pool, "--target", target, "--steps", "0", "-o", str(tmp_path / "o")]) == 2
    assert "steps=0" in capsys.readouterr().err


# ---------------------------------------------------------------- real model


@pytest.mark.slow
def test_real_model_warmup_state_loads_back(tmp_path):
    from gradients.assets import find_assets
    from gradients.model import load_model

    try:
        find_assets()
    except AssetError as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"default assets not fetched: {error}")
    model, tokenizer = load_model(None, device="cpu")
    config = WarmupConfig(steps=2, num_samples=4, batch_size=2, max_length=64, pool_size=200, lr=1e-5,
                          output=str(tmp_path / "warm"))
    result = run_warmup(config, model=model, tokenizer=tokenizer, progress=False)
    assert len(result.sample_ids) == 4
    assert all(math.isfinite(v) for v in result.losses)

    reloaded, _ = load_model(result.model_dir, device="cpu")
    state = load_optimizer_state(result.optimizer_dir, reloaded)
    assert state.step == 2
    assert set(state.exp_avg) == {name for name, _ in reloaded.named_parameters()}
    for name, param in reloaded.named_parameters():
        assert torch.equal(param, dict(model.named_parameters())[name]), name
