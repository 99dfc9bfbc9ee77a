"""Hessian-vector and Gauss-Newton products of the target loss on tiny models."""

import numpy as np
import pytest
import torch

from gradients.hessian import TargetCurvature
from gradients.params import ParameterMask, select_parameters
from idopt.errors import InvalidInputError
from tests.tiny_models import tiny_model


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 60, (3, 7), generator=gen)
    labels = ids.clone()
    labels[:, :2] = -100
    attention = torch.ones_like(ids)
    attention[2, 5:] = 0
    labels[2, 5:] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def _shifted_gradient(curvature, params, delta):
    """Return grad L_T at theta + delta, with delta a flat (masked) vector."""
    blocks = curvature._unflatten(delta)
    with torch.no_grad():
        for param, block in zip(params.values(), blocks):
            param.add_(block)
    try:
        return curvature.gradient()
    finally:
        with torch.no_grad():
            for param, block in zip(params.values(), blocks):
                param.sub_(block)


@pytest.mark.parametrize("masked", [False, True])
def test_hvp_matches_finite_differences(masked):
    """GPT-2 in float64 computes in float64 throughout, so central differences converge as eps^2."""
    model = tiny_model("gpt2", layers=2).double()
    params = select_parameters(model, "all")
    mask = ParameterMask.for_params(params, count=300, seed=1) if masked else None
    curvature = TargetCurvature(model, [_batch()], params, mask)
    vector = torch.randn(1, curvature.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    product = curvature.matmul(vector)[0]
    errors = []
    for eps in (1e-3, 1e-4):
        difference = (_shifted_gradient(curvature, params, eps * vector[0])
                      - _shifted_gradient(curvature, params, -eps * vector[0])) / (2 * eps)
        errors.append(float((difference - product).norm() / product.norm()))
    assert errors[1] < 1e-4, errors
    assert errors[1] < errors[0] / 50, errors  # second-order convergence of central differences


def test_hvp_matches_finite_differences_llama():
    """Llama's RMSNorm computes in float32, so the agreement stops near float32 rounding."""
    model = tiny_model("llama", layers=2).double()
    params = select_parameters(model, "all")
    curvature = TargetCurvature(model, [_batch()], params)
    vector = torch.randn(1, curvature.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    product = curvature.matmul(vector)[0]
    eps = 1e-4
    difference = (_shifted_gradient(curvature, params, eps * vector[0])
                  - _shifted_gradient(curvature, params, -eps * vector[0])) / (2 * eps)
    assert float((difference - product).norm() / product.norm()) < 1e-3


def test_hessian_products_symmetric():
    model = tiny_model("gpt2", layers=2).double()
    params = select_parameters(model, "all")
    curvature = TargetCurvature(model, [_batch(), _batch(1)], params)
    vectors = torch.randn(2, curvature.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    products = curvature.matmul(vectors)
    cross = float(vectors[1] @ products[0])
    assert abs(cross - float(vectors[0] @ products[1])) < 1e-9 * max(abs(cross), 1.0)


def test_gradient_is_mean_over_batches():
    """Two batches give the gradient of the mean loss over all their samples."""
    model = tiny_model("gpt2", layers=2).double()
    params = select_parameters(model, "all")
    first, second = _batch(0), _batch(1)
    joined = {key: torch.cat([first[key], second[key]]) for key in first}
    split = TargetCurvature(model, [first, second], params).gradient()
    whole = TargetCurvature(model, [joined], params).gradient()
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)


def test_gauss_newton_matches_explicit_matrix():
    """G = J^T H_out J with J the logits' Jacobian in a small parameter block and H_out per token."""
    model = tiny_model("gpt2", layers=1).double()
    params = select_parameters(model, "re:transformer\\.ln_f\\..*")
    batch = _batch()
    curvature = TargetCurvature(model, [batch], params, curvature="gauss_newton")
    dim = curvature.dim
    identity = torch.eye(dim, dtype=torch.float64)
    product = curvature.matmul(identity)

    ids, labels = curvature.batches[0]
    names = list(params)
    base = {name: p.detach().clone() for name, p in params.items()}

    def logits_of(flat):
        blocks, start = {}, 0
        for name in names:
            size = base[name].numel()
            blocks[name] = flat[start:start + size].reshape(base[name].shape)
            start += size
        return torch.func.functional_call(model, blocks, args=(ids,), kwargs={"use_cache": False}).logits[:, :-1, :]

    flat0 = torch.cat([base[name].reshape(-1) for name in names])
    jacobian = torch.autograd.functional.jacobian(logits_of, flat0)  # (B, L-1, V, dim)
    probs = torch.softmax(logits_of(flat0), dim=-1)
    shifted = labels[:, 1:]
    weights = (shifted != -100).double() / (shifted != -100).sum(dim=1, keepdim=True) / ids.shape[0]
    explicit = torch.zeros(dim, dim, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if weights[b, t] == 0:
                continue
            pi = probs[b, t]
            h_out = torch.diag(pi) - torch.outer(pi, pi)
            j = jacobian[b, t]
            explicit += weights[b, t] * j.T @ h_out @ j
    torch.testing.assert_close(product, explicit, rtol=1e-8, atol=1e-10)
    assert float(torch.linalg.eigvalsh(0.5 * (product + product.T)).min()) > -1e-10


def test_vectors_shape_checked():
    model = tiny_model("llama", layers=1)
    params = select_parameters(model, "all")
    curvature = TargetCurvature(model, [_batch()], params)
    with pytest.raises(InvalidInputError, match="vectors must be a"):
        curvature.matmul(torch.zeros(2, curvature.dim + 1))
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        curvature.matmul(torch.full((1, curvature.dim), float("nan")))


def test_curvature_name_checked():
    model = tiny_model("llama", layers=1)
    with pytest.raises(InvalidInputError, match="curvature='exact'"):
        TargetCurvature(model, [_batch()], select_parameters(model, "all"), curvature="exact")


def test_requires_grad_restored():
    model = tiny_model("llama", layers=1)
    params = select_parameters(model, "mlp")
    flags = [p.requires_grad for p in model.parameters()]
    curvature = TargetCurvature(model, [_batch()], params)
    curvature.matmul(torch.ones(1, curvature.dim))
    assert [p.requires_grad for p in model.parameters()] == flags


def test_numpy_hvp_adapter_shapes():
    model = tiny_model("gpt2", layers=1).double()
    params = select_parameters(model, "ln_f")
    curvature = TargetCurvature(model, [_batch()], params)
    matrix = np.random.default_rng(0).standard_normal((curvature.dim, 3))
    result = curvature.numpy_hvp()(matrix)
    assert result.shape == (curvature.dim, 3)
    expected = curvature.matmul(torch.from_numpy(matrix.T.copy())).numpy().T
    np.testing.assert_allclose(result, expected, rtol=1e-12)
