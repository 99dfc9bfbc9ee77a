"""End-to-end checks on the real SmolLM2-135M-Instruct and the built-in BIG-bench/HumanEval data.

They need the fetched assets (`idopt fetch`, or `make test`, which fetches first). Outside CI a
missing cache skips them; under CI (CI=true) it fails them, so CI cannot pass without running them.
"""

import json

import numpy as np
import pytest
import torch


pytestmark = pytest.mark.slow


def test_real_model_loads_from_safetensors(real_model):
    from gradients.model import default_model_dir

    model, tokenizer = real_model
    assert (default_model_dir() / "model.safetensors").is_file()
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token_id is not None


def test_real_gradient_padding_safe(real_model):
    """A short sample's gradient is the same alone and right-padded next to a longer one."""
    from gradients.data import Sample
    from gradients.per_sample import per_sample_gradients
    from gradients.params import select_parameters
    from gradients.tokenize import collate, tokenize_samples

    model, tokenizer = real_model
    samples = [
        Sample("a", "t", [{"role": "user", "content": "How many legs do two cats have?"},
                          {"role": "assistant", "content": "Eight."}]),
        Sample("b", "t", [{"role": "user", "content": "Name three colours of the rainbow and a fruit for each."},
                          {"role": "assistant", "content": "Red: apple. Yellow: banana. Orange: orange."}]),
    ]
    tokenized = tokenize_samples(samples, tokenizer, max_length=128).kept
    params = select_parameters(model, "down_proj")
    together = per_sample_gradients(model, collate(tokenized, tokenizer.pad_token_id), params)
    alone = per_sample_gradients(model, collate(tokenized[:1], tokenizer.pad_token_id), params)
    torch.testing.assert_close(together[0], alone[0], rtol=1e-4, atol=1e-6)
    assert abs(float(together[0] @ together[1])) < 0.999


def test_real_selection_end_to_end(real_model, tmp_path):
    from gradients.config import SelectConfig
    from gradients.outputs import write_outputs
    from gradients.pipeline import run_selection

    model, tokenizer = real_model
    config = SelectConfig(
        pool_size=24, target_per_task=1, k=5, num_landmarks=8, max_length=192, jvp_blocks=2,
        grad_mask=1 << 20, proj_dim=1024, output=str(tmp_path / "out"), holdout=6,
    )
    result = run_selection(config, model=model, tokenizer=tokenizer)
    out = write_outputs(result, config.output, result.originals)

    assert result.target_names == ["date_understanding", "navigate", "object_counting"]
    assert result.scores.shape == (len(result.pool), 3)
    assert np.isfinite(result.scores).all()
    assert len(set(np.asarray(result.selection.indices).tolist())) == 5
    target_tokens = {tuple(t.input_ids) for t in result.targets}
    assert not target_tokens & {tuple(s.input_ids) for s in result.pool}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["versions"]["transformers"] is not None
    assert len((out / "selected.jsonl").read_text().splitlines()) == 5

    # The held-out gradients feed `idopt bounds`, which runs on these real gradients.
    from idopt.cli import main

    report_path = tmp_path / "bounds.json"
    assert main(["bounds", "--run", str(out), "--lam", "0.1", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["n"] == 6
    assert report["delta_squared"] >= 0
    assert len(report["targets"]) == 3
