import pytest
import torch

import gradients.model as model_module
from gradients.model import load_model, resolve_model_dir
from idopt.errors import AssetError, InvalidInputError
from tests.tiny_models import tiny_model
from tests.tiny_tokenizer import tiny_chat_tokenizer


def test_missing_path_rejected(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        resolve_model_dir(tmp_path / "absent")


def test_non_gguf_file_rejected(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(InvalidInputError, match="not a GGUF checkpoint"):
        resolve_model_dir(path)


def test_folder_without_config_rejected(tmp_path):
    with pytest.raises(InvalidInputError, match="no config.json"):
        resolve_model_dir(tmp_path)


def test_missing_gguf_file_in_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="nope.gguf"):
        resolve_model_dir(tmp_path, gguf_file="nope.gguf")


def test_saved_tiny_model_loads(tmp_path):
    tokenizer = tiny_chat_tokenizer()
    model = tiny_model("llama", layers=2, vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tokenizer = load_model(tmp_path / "tiny", device="cpu")
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded_tokenizer.pad_token_id is not None
    assert not loaded.training


def test_checkpoint_without_tokenizer_files(tmp_path):
    """A Trainer-style checkpoint contains weights only, so the tokenizer comes from another folder."""
    tokenizer = tiny_chat_tokenizer()
    model = tiny_model("llama", layers=1, vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "checkpoint-2")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(InvalidInputError, match="--tokenizer"):
        load_model(tmp_path / "checkpoint-2", device="cpu")
    loaded, loaded_tokenizer = load_model(tmp_path / "checkpoint-2", device="cpu", tokenizer=tmp_path / "tokenizer")
    assert len(loaded_tokenizer) == len(tokenizer)
    assert loaded.config.num_hidden_layers == 1


def test_broken_model_folder_reports_path(tmp_path):
    (tmp_path / "config.json").write_text("not json")
    with pytest.raises(InvalidInputError, match="could not load a causal language model"):
        load_model(tmp_path, device="cpu")


@pytest.mark.slow
def test_user_gguf_converted_once(tmp_path, monkeypatch):
    from gradients.assets import find_assets

    try:
        gguf = find_assets().gguf
    except AssetError as error:
        pytest.skip(f"default assets not fetched: {error}")
    first = resolve_model_dir(gguf, cache=tmp_path)
    assert (first / "model.safetensors").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("converted the same GGUF file twice")

    monkeypatch.setattr(model_module, "convert_gguf", fail)
    assert resolve_model_dir(gguf, cache=tmp_path) == first
