"""Tests of gradients.params and gradients.per_sample on tiny randomly initialised models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gradients.params import ParameterMask, flat_dim, flat_slices, select_parameters  # noqa: E402
from gradients.per_sample import (  # noqa: E402
    iter_per_sample_gradients,
    per_sample_gradients,
    sample_loss,
)
from idopt.errors import IdoptError, InvalidInputError  # noqa: E402

VOCAB = 64

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def make_model(kind: str = "llama", attn: str = "eager", dtype=torch.float32, tied: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
            tie_word_embeddings=tied, attn_implementation=attn,
        )
        model = transformers.LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64,
            bos_token_id=0, eos_token_id=0, attn_implementation=attn,
        )
        model = transformers.GPT2LMHeadModel(config)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
            tie_word_embeddings=tied, attn_implementation=attn,
        )
        model = transformers.Qwen2ForCausalLM(config)
    else:
        raise ValueError(kind)
    return model.to(dtype).eval()


def make_batch(lengths, seq_len: int, seed: int = 1) -> dict:
    """Right-padded batch; labels on every real token, padding ids are random valid tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (len(lengths), seq_len), generator=generator)
    attention_mask = (torch.arange(seq_len) < torch.tensor(lengths)[:, None]).long()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def reference_loss(model, input_ids, labels):
    """Loss of one unpadded sample, token by token: input_ids and labels are 1-D."""
    logits = model(input_ids=input_ids[None], attention_mask=torch.ones_like(input_ids)[None]).logits[0]
    terms = []
    for t in range(1, len(labels)):
        if labels[t] != -100:
            terms.append(-torch.log_softmax(logits[t - 1].double(), dim=-1)[labels[t]])
    return torch.stack(terms).mean()


def reference_gradients(model, batch, params):
    """One loss.backward() per sample on its unpadded tokens; returns (B, N) float64."""
    rows = []
    for b in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][b].sum())
        model.zero_grad()
        reference_loss(model, batch["input_ids"][b, :length], batch["labels"][b, :length]).backward()
        rows.append(torch.cat([p.grad.reshape(-1).double() for p in params.values()]))
    model.zero_grad()
    return torch.stack(rows)


# Per-sample gradients against the obviously right loop ------------------------------------------


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vmap_matches_loop_backward(kind, attn):
    model = make_model(kind, attn, dtype=torch.float64)
    params = select_parameters(model, "all")
    batch = make_batch([9, 5, 12, 2], seq_len=12)

    got = per_sample_gradients(model, batch, params, normalize=False).double()
    expected = reference_gradients(model, batch, params)

    # Both sides evaluate the same float64 function, so only the float32 cast of the output
    # differs (6e-8 relative per entry). 1e-6 of the largest entry leaves a wide margin.
    scale = expected.abs().max()
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * scale)


def test_vmap_float32_matches_loop():
    model = make_model("llama", "sdpa", dtype=torch.float32)
    params = select_parameters(model, "all")
    batch = make_batch([7, 10, 3], seq_len=10)

    got = per_sample_gradients(model, batch, params, normalize=False).double()
    expected = reference_gradients(model, batch, params)

    # Both sides run in float32 (unit roundoff 6e-8) through a few hundred operations, so
    # by estimate differences up to 1e-5 of the largest entry are rounding, not a bug.
    scale = expected.abs().max()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_loop_method_matches_vmap():
    model = make_model("gpt2", dtype=torch.float64)
    params = select_parameters(model, "mlp")
    batch = make_batch([6, 11, 4], seq_len=11)

    by_vmap = per_sample_gradients(model, batch, params, normalize=False, method="vmap")
    by_loop = per_sample_gradients(model, batch, params, normalize=False, method="loop")

    assert torch.allclose(by_vmap, by_loop, rtol=1e-6, atol=1e-9)


def test_gradients_match_finite_differences():
    # GPT-2, because Llama's RMSNorm and eager softmax round to float32 inside a float64
    # model, and that noise divided by 2h would swamp a central difference.
    model = make_model("gpt2", dtype=torch.float64)
    params = select_parameters(model, "all")
    batch = make_batch([10], seq_len=10)
    grads = per_sample_gradients(model, batch, params, normalize=False)[0].double()
    slices = flat_slices(params)

    generator = torch.Generator().manual_seed(2)
    coordinates = torch.randint(0, flat_dim(params), (6,), generator=generator).tolist()
    # Gradient entries of the tiny model lie near 1e-2, so use coordinates with a visible signal too.
    coordinates.append(int(grads.abs().argmax()))
    h = 1e-5
    for coordinate in coordinates:
        name = next(n for n, s in slices.items() if s.start <= coordinate < s.stop)
        flat_param = params[name].data.view(-1)
        offset = coordinate - slices[name].start
        original = flat_param[offset].item()
        with torch.no_grad():
            flat_param[offset] = original + h
            loss_plus = reference_loss(model, batch["input_ids"][0], batch["labels"][0]).item()
            flat_param[offset] = original - h
            loss_minus = reference_loss(model, batch["input_ids"][0], batch["labels"][0]).item()
            flat_param[offset] = original
        central = (loss_plus - loss_minus) / (2 * h)
        # Central differences err by h^2/6 * f''' (about 1e-11 for f''' of order 1) plus
        # float64 rounding eps * |f| / h (about 1e-10 for a loss near 4). The gradient itself
        # is rounded to float32 (6e-8 relative), so 1e-7 absolute covers all three.
        assert central == pytest.approx(grads[coordinate].item(), abs=1e-7, rel=1e-6), name


# Labels, causality and padding -------------------------------------------------------------------


def test_label_change_changes_gradient():
    model = make_model("llama", dtype=torch.float64)
    params = select_parameters(model, "all")
    batch = make_batch([10], seq_len=10)
    batch["labels"][0, 6:] = -100
    before = per_sample_gradients(model, batch, params, normalize=False)

    batch["labels"][0, 8] = batch["input_ids"][0, 8]
    after = per_sample_gradients(model, batch, params, normalize=False)

    assert not torch.allclose(before, after, atol=1e-6)


def test_later_input_token_ignored():
    model = make_model("llama", dtype=torch.float64)
    params = select_parameters(model, "all")
    batch = make_batch([10, 10], seq_len=10)
    batch["labels"][0, 6:] = -100  # the last label position of row 0 is 5
    before = per_sample_gradients(model, batch, params, normalize=False)

    batch["input_ids"][0, 8] = (batch["input_ids"][0, 8] + 1) % VOCAB
    after = per_sample_gradients(model, batch, params, normalize=False)

    # Causal attention: position 8 only feeds later positions, none of which carries a label.
    assert torch.allclose(before[0], after[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padding_leaves_gradient_unchanged(kind, attn):
    model = make_model(kind, attn)
    params = select_parameters(model, "all")
    padded = make_batch([12, 4, 9], seq_len=12, seed=3)
    alone = {key: value[1:2, :4] for key, value in padded.items()}

    in_batch = per_sample_gradients(model, padded, params)[1]
    by_itself = per_sample_gradients(model, alone, params)[0]

    # Unit rows in float32: only the extra padded positions differ, so rounding alone
    # separates the two (a few units of 6e-8 per entry).
    assert torch.isfinite(in_batch).all()
    assert torch.allclose(in_batch, by_itself, rtol=1e-5, atol=1e-6)


def test_result_ignores_order_and_chunks():
    model = make_model("qwen2")
    params = select_parameters(model, "all")
    batch = make_batch([5, 12, 8, 3, 10], seq_len=12, seed=4)
    order = torch.tensor([3, 0, 4, 2, 1])
    shuffled = {key: value[order] for key, value in batch.items()}

    full = per_sample_gradients(model, batch, params)
    chunked = per_sample_gradients(model, batch, params, chunk_size=2)
    reordered = per_sample_gradients(model, shuffled, params)

    # float32 rounding only, as in the padding test.
    assert torch.allclose(full, chunked, rtol=1e-5, atol=1e-6)
    assert torch.allclose(full[order], reordered, rtol=1e-5, atol=1e-6)


def test_empty_label_row_raises():
    model = make_model()
    params = select_parameters(model, "all")
    batch = make_batch([6, 6, 6], seq_len=6)
    batch["labels"][1, 1:] = -100

    with pytest.raises(InvalidInputError, match=r"rows \[1\]"):
        per_sample_gradients(model, batch, params)
    with pytest.raises(InvalidInputError, match=r"rows \[1\]"):
        sample_loss(model, batch)


# Normalisation, modes and dtypes ------------------------------------------------------------------


def test_normalize_gives_unit_rows():
    model = make_model()
    params = select_parameters(model, "all")
    batch = make_batch([8, 3, 6], seq_len=8)

    raw = per_sample_gradients(model, batch, params, normalize=False)
    unit = per_sample_gradients(model, batch, params)

    assert torch.allclose(unit.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(unit, raw / raw.norm(dim=1, keepdim=True), atol=1e-7)


def test_zero_gradient_row_raises():
    model = make_model(tied=False)
    params = select_parameters(model, "re:model\\.layers\\.1\\.mlp\\.down_proj\\.weight")
    with torch.no_grad():
        # SiLU(0) * 0 = 0 makes the input of down_proj zero, so its gradient is zero.
        model.model.layers[1].mlp.gate_proj.weight.zero_()
        model.model.layers[1].mlp.up_proj.weight.zero_()
    batch = make_batch([5, 5], seq_len=5)

    with pytest.raises(InvalidInputError, match=r"rows \[0, 1\].*normalize=False"):
        per_sample_gradients(model, batch, params)
    raw = per_sample_gradients(model, batch, params, normalize=False)
    assert (raw == 0).all()


def test_dropout_off_and_mode_restored():
    model = make_model("gpt2", dtype=torch.float64)  # resid/attn/embd dropout 0.1 by default
    params = select_parameters(model, "all")
    batch = make_batch([7, 5], seq_len=7)
    expected = reference_gradients(model, batch, params)  # model is in eval mode here

    model.train()
    got = per_sample_gradients(model, batch, params, normalize=False).double()

    assert model.training
    assert all(module.training for module in model.modules())
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_bfloat16_model_gives_float32():
    model32 = make_model("llama", dtype=torch.float32)
    model16 = make_model("llama", dtype=torch.bfloat16)
    batch = make_batch([8, 5], seq_len=8)

    got = per_sample_gradients(model16, batch, select_parameters(model16, "all"))
    expected = per_sample_gradients(model32, batch, select_parameters(model32, "all"))

    # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.004), so the unit rows agree
    # in direction, not to many digits: a cosine above 0.99 allows a few such errors.
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert (got * expected).sum(dim=1).min() > 0.99


def test_sample_loss_matches_reference():
    model = make_model("gpt2", dtype=torch.float64)
    batch = make_batch([9, 4, 7], seq_len=9)
    batch["labels"][0, :3] = -100

    losses = sample_loss(model, batch)

    for b in range(3):
        length = int(batch["attention_mask"][b].sum())
        expected = reference_loss(model, batch["input_ids"][b, :length], batch["labels"][b, :length])
        assert losses[b].item() == pytest.approx(expected.item(), rel=1e-10)


def test_iter_matches_direct_calls():
    model = make_model()
    params = select_parameters(model, "down_proj")
    batches = [make_batch([6, 4], seq_len=6, seed=s) for s in range(3)]

    results = list(iter_per_sample_gradients(model, batches, params, desc="test", progress=False))

    assert len(results) == 3
    for batch, result in zip(batches, results):
        assert torch.equal(result, per_sample_gradients(model, batch, params))


# Parameter selection -----------------------------------------------------------------------------


def test_select_by_fragment():
    model = make_model()
    params = select_parameters(model, "down_proj")

    assert list(params) == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert params["model.layers.0.mlp.down_proj.weight"] is model.model.layers[0].mlp.down_proj.weight


def test_select_by_regex():
    model = make_model()
    params = select_parameters(model, r"re:model\.layers\.1\..*_proj\.weight")

    assert len(params) == 7  # q, k, v, o, gate, up, down
    assert all(name.startswith("model.layers.1.") for name in params)
    # fullmatch: a pattern matching only a prefix selects nothing.
    with pytest.raises(InvalidInputError):
        select_parameters(model, r"re:model\.layers\.1")


def test_select_tied_weights_once():
    model = make_model(tied=True)
    everything = select_parameters(model, "all")
    head = select_parameters(model, "lm_head")

    assert "lm_head.weight" not in everything
    assert flat_dim(everything) == sum(p.numel() for p in model.parameters())
    assert list(head) == ["model.embed_tokens.weight"]


def test_select_skips_frozen():
    model = make_model()
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)

    params = select_parameters(model, "down_proj")

    assert list(params) == ["model.layers.1.mlp.down_proj.weight"]


@pytest.mark.parametrize("spec", ["no_such_module", "re:nothing.*", "", "re:("])
def test_select_invalid_spec_raises(spec):
    model = make_model()
    with pytest.raises(InvalidInputError, match="spec"):
        select_parameters(model, spec)


def test_select_error_lists_names():
    model = make_model()
    with pytest.raises(InvalidInputError, match="model.embed_tokens.weight"):
        select_parameters(model, "no_such_module")


# Parameter mask ----------------------------------------------------------------------------------


def test_mask_same_seed_same_indices():
    first = ParameterMask(1000, fraction=0.1, seed=7)
    second = ParameterMask(1000, fraction=0.1, seed=7)
    other = ParameterMask(1000, fraction=0.1, seed=8)

    assert torch.equal(first.indices, second.indices)
    assert not torch.equal(first.indices, other.indices)


def test_mask_indices_sorted_unique():
    mask = ParameterMask(500, count=123, seed=0)

    assert mask.size == 123
    assert mask.indices.dtype == torch.int64
    assert (mask.indices[1:] > mask.indices[:-1]).all()
    assert mask.indices.min() >= 0
    assert mask.indices.max() < 500


def test_mask_fraction_rounds():
    assert ParameterMask(1000, fraction=0.0504).size == 50
    assert ParameterMask(10, fraction=1e-9).size == 1
    assert ParameterMask(10, fraction=1.0).size == 10


def test_mask_gradients_are_columns():
    model = make_model()
    params = select_parameters(model, "all")
    mask = ParameterMask.for_params(params, fraction=0.05, seed=3)
    batch = make_batch([7, 4], seq_len=7)

    full = per_sample_gradients(model, batch, params, normalize=False)
    masked = per_sample_gradients(model, batch, params, mask, normalize=False)

    assert masked.shape == (2, mask.size)
    assert torch.equal(masked, full[:, mask.indices])
    assert torch.equal(mask.apply(full), full[:, mask.indices])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fraction": 0.5, "count": 3}, {"fraction": 0.0}, {"fraction": 1.5}, {"count": 0}, {"count": 11}],
)
def test_mask_invalid_size_raises(kwargs):
    with pytest.raises(InvalidInputError):
        ParameterMask(10, **kwargs)


def test_mask_apply_wrong_shape_raises():
    mask = ParameterMask(10, count=3)
    with pytest.raises(InvalidInputError, match=r"\(B, 10\).*\(2, 9\)"):
        mask.apply(torch.zeros(2, 9))


# Input validation --------------------------------------------------------------------------------


def _corrupt_batch(case: str) -> dict:
    batch = make_batch([6, 4], seq_len=6)
    if case == "missing":
        return {"input_ids": batch["input_ids"]}
    if case == "shape":
        return dict(batch, labels=batch["labels"][:, :5])
    if case == "float":
        return dict(batch, input_ids=batch["input_ids"].float())
    if case == "left padding":
        return dict(batch, attention_mask=batch["attention_mask"].flip(1))
    if case == "padding label":
        return dict(batch, labels=batch["input_ids"].clone())
    if case == "token range":
        return dict(batch, input_ids=batch["input_ids"] + VOCAB)
    raise ValueError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "missing 'labels'"),
        ("shape", "shape of input_ids"),
        ("float", "integer dtype"),
        ("left padding", "right padded"),
        ("padding label", "padding positions"),
        ("token range", r"\[0, 64\)"),
    ],
)
def test_invalid_batch_raises(case, message):
    model = make_model()
    params = select_parameters(model, "down_proj")

    with pytest.raises(InvalidInputError, match=message):
        per_sample_gradients(model, _corrupt_batch(case), params)


def test_invalid_options_raise():
    model = make_model()
    params = select_parameters(model, "down_proj")
    batch = make_batch([6, 4], seq_len=6)
    other_model = make_model(seed=5)

    with pytest.raises(InvalidInputError, match="chunk_size"):
        per_sample_gradients(model, batch, params, chunk_size=0)
    with pytest.raises(InvalidInputError, match="method"):
        per_sample_gradients(model, batch, params, method="jvp")
    with pytest.raises(InvalidInputError, match="total_dim"):
        per_sample_gradients(model, batch, params, ParameterMask(11, count=2))
    with pytest.raises(InvalidInputError, match="select_parameters"):
        per_sample_gradients(model, batch, select_parameters(other_model, "down_proj"))


def test_spec_string_accepted():
    model = make_model()
    batch = make_batch([6, 4], seq_len=6)

    by_spec = per_sample_gradients(model, batch, "down_proj")
    by_dict = per_sample_gradients(model, batch, select_parameters(model, "down_proj"))

    assert torch.equal(by_spec, by_dict)


def test_non_finite_gradient_raises():
    model = make_model()
    params = select_parameters(model, "all")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    batch = make_batch([5], seq_len=5)

    with pytest.raises(IdoptError, match=r"rows \[0\]"):
        per_sample_gradients(model, batch, params)
