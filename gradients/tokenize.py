"""Chat-template tokenization with loss labels on assistant tokens only, and batching.

The labels of a sample equal its token ids on assistant tokens and -100 elsewhere,
the value that ``torch.nn.CrossEntropyLoss`` and Hugging Face causal language
models ignore. The models shift labels by one position themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from gradients.data import Sample
from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class TokenizedSample:
    """Token ids and loss labels of one conversation.

    Attributes
    ----------
    sample_id : str
        Id of the source :class:`~gradients.data.Sample`.
    source : str
        Task or data set name of the sample.
    input_ids : list of int
        Token ids of the chat-template rendering, length at most ``max_length``.
    labels : list of int
        Same length as ``input_ids``: the token id on assistant tokens, -100 elsewhere.
    truncated : bool
        Whether tokens were cut off at the right to fit ``max_length``.
    """

    sample_id: str
    source: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_label_tokens(self) -> int:
        """Number of tokens that count in the loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class TokenizationReport:
    """Result of :func:`tokenize_samples`.

    Attributes
    ----------
    kept : list of TokenizedSample
        Samples with at least one label token, in input order.
    excluded_ids : list of str
        Ids of samples dropped because no assistant token was left after truncation.
    num_truncated : int
        Number of samples cut to ``max_length``, excluded ones included.
    """

    kept: list[TokenizedSample] = field(default_factory=list)
    excluded_ids: list[str] = field(default_factory=list)
    num_truncated: int = 0


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise InvalidInputError(
            f"tokenizer.apply_chat_template(tokenize=False) returned {type(text).__name__}, "
            "expected a string"
        )
    return text


def assistant_spans(tokenizer: Any, sample: Sample) -> tuple[str, list[tuple[int, int]]]:
    """Render a sample with the chat template and locate its assistant turns.

    For the assistant message at position i, the span starts where the rendering of
    ``messages[:i]`` with the generation prompt ends, and ends where the rendering
    of ``messages[:i+1]`` ends. So it covers the message content and the end-of-turn
    marker the template puts after it. Whitespace that the template writes after
    the content and the marker (ChatML's trailing newline) is left out, because the
    model does not need to generate it.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        Tokenizer with a chat template.
    sample : Sample
        Conversation with at least one assistant message.

    Returns
    -------
    text : str
        Rendering of the whole conversation.
    spans : list of (int, int)
        Character spans ``[start, end)`` of the assistant turns in ``text``.

    Raises
    ------
    InvalidInputError
        When the template does not render prefixes of a conversation as prefixes of
        its full rendering, so spans cannot be located.
    """
    messages = sample.messages
    text = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise InvalidInputError(
                f"sample {sample.id!r}: the tokenizer's chat template is not prefix-consistent at "
                f"message {index} (rendering the first {index} messages with the generation prompt, "
                f"or the first {index + 1}, is not a prefix of the full rendering), so assistant "
                "tokens cannot be located; use a template that renders turns independently"
            )
        start = len(before)
        end = len(through)
        content_end = start + len(message["content"]) if text.startswith(message["content"], start) else start
        end = content_end + len(text[content_end:end].rstrip())
        spans.append((start, end))
    return text, spans


def _label_tokens(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Label each token that shares at least one character with an assistant span.

    A token that straddles a span boundary is labelled, so every answer character is
    trained on. Byte-level BPE merges the template's newline with leading spaces of
    the content, so such a token is common for answers that start with indentation.
    """
    labels = []
    for token_id, (token_start, token_end) in zip(input_ids, offsets):
        inside = any(token_start < end and start < token_end for start, end in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return labels


def tokenize_samples(
    samples: Sequence[Sample],
    tokenizer: Any,
    max_length: int,
    progress: bool = True,
) -> TokenizationReport:
    """Tokenize chat samples with the chat template and label the assistant tokens.

    Every assistant turn of a multi-turn conversation is labelled (see
    :func:`assistant_spans`): a token is labelled when it shares a character with
    an assistant span. Sequences longer than ``max_length`` tokens are cut at
    the right. A sample with no label token left is excluded and its id reported.

    Parameters
    ----------
    samples : sequence of Sample
        Conversations to tokenize.
    tokenizer : transformers.PreTrainedTokenizerFast
        Fast tokenizer (offset mappings are needed) with a chat template.
    max_length : int
        Maximum number of tokens per sample.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    TokenizationReport
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise InvalidInputError(f"max_length must be a positive integer, got {max_length!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInputError(
            f"tokenizer must be a fast tokenizer (offset mappings are needed), got "
            f"{type(tokenizer).__name__}"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidInputError(
            f"tokenizer {type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template"
        )

    report = TokenizationReport()
    for sample in tqdm(samples, desc="Tokenizing samples", disable=not progress):
        if not isinstance(sample, Sample):
            raise InvalidInputError(f"samples must contain Sample objects, got {type(sample).__name__}")
        text, spans = assistant_spans(tokenizer, sample)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        labels = _label_tokens(input_ids, encoding["offset_mapping"], spans)

        truncated = len(input_ids) > max_length
        if truncated:
            input_ids = input_ids[:max_length]
            labels = labels[:max_length]
            report.num_truncated += 1

        tokenized = TokenizedSample(sample.id, sample.source, input_ids, labels, truncated)
        if tokenized.num_label_tokens == 0:
            report.excluded_ids.append(sample.id)
        else:
            report.kept.append(tokenized)

    logger.info(
        "Tokenized %d samples (max_length %d): %d kept, %d truncated, %d excluded with no "
        "assistant token left",
        len(samples),
        max_length,
        len(report.kept),
        report.num_truncated,
        len(report.excluded_ids),
    )
    if report.excluded_ids:
        logger.warning(
            "Excluded %d samples with no assistant token within max_length=%d, such as %s",
            len(report.excluded_ids),
            max_length,
            report.excluded_ids[:5],
        )
    return report


def collate(samples: Sequence[TokenizedSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad tokenized samples at the right into a batch of tensors.

    Parameters
    ----------
    samples : sequence of TokenizedSample
        Batch of B samples; L is the length of the longest.
    pad_token_id : int
        Token id written into the padding of ``input_ids``.

    Returns
    -------
    dict of str to torch.Tensor
        ``input_ids`` (B, L) long, ``attention_mask`` (B, L) long with 1 on real
        tokens and 0 on padding, and ``labels`` (B, L) long with -100 on padding.
    """
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
        raise InvalidInputError(
            f"pad_token_id must be a non-negative integer, got {pad_token_id!r} "
            "(when the tokenizer has no pad token, pass its eos_token_id)"
        )
    if len(samples) == 0:
        raise InvalidInputError("samples must contain at least one TokenizedSample, got an empty batch")

    length = max(len(sample.input_ids) for sample in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        size = len(sample.input_ids)
        if len(sample.labels) != size:
            raise InvalidInputError(
                f"sample {sample.sample_id!r} has {size} input_ids but {len(sample.labels)} labels"
            )
        input_ids[row, :size] = torch.tensor(sample.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(sample.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
