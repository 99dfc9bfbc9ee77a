"""The optimizer step the selection models: plain gradient descent or Adam/AdamW from a saved state.

The step on the weighted pool loss is theta' - theta = -eta (a * g_w + b0) (see
``idopt.optimizers``): a = 1 and b0 = 0 for plain gradient descent; for Adam and AdamW, a is the
elementwise preconditioner (1 - beta1) / ((1 - beta1^t)(sqrt(v / (1 - beta2^s)) + eps)) and b0
contains the momentum and weight decay. Source gradients enter the problem as a * g_i, and the
target gradient as g_T - eta H_T b0, which needs the target curvature whenever b0 is non-zero.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from gradients.config import DEFAULT_SGD_LR, SelectConfig
from gradients.hessian import TargetCurvature

logger = logging.getLogger(__name__)


@dataclass
class ModeledStep:
    """The next training step as the selection models it.

    eta: learning rate. scale: (N,) float32 preconditioner a on the model's device, or None
    (a = 1). offset: (N,) float32 b0 or None. curvature: the target curvature used for
    eta H_T b0 and for Q_L, or None when neither is needed. normalize: whether per-sample
    gradients are scaled to unit norm. fingerprint: identifies the optimizer state in stage
    checkpoint keys. source: where the state came from ("plain gradient descent" without one).
    """

    eta: float
    scale: torch.Tensor | None
    offset: torch.Tensor | None
    curvature: TargetCurvature | None
    normalize: bool
    fingerprint: str
    source: str
    optimizer: str

    def report(self) -> dict:
        """Return the JSON-ready description written to summary.json."""
        return {
            "optimizer": self.optimizer,
            "optimizer_state": self.source,
            "learning_rate": self.eta,
            "normalized_gradients": self.normalize,
            "momentum_shift": self.offset is not None,
        }


def _state_fingerprint(state) -> str:
    digest = hashlib.sha256(f"{state.source}|{state.step}|{state.betas}|{state.eps}".encode())
    for name in list(state.exp_avg)[:4]:
        digest.update(name.encode())
        digest.update(state.exp_avg[name].reshape(-1)[:4096].numpy().tobytes())
        digest.update(state.exp_avg_sq[name].reshape(-1)[:4096].numpy().tobytes())
    return digest.hexdigest()


def model_step(config: SelectConfig, model, params, mask, targets, pad_token_id: int, pool_sample=(),
               state=None) -> ModeledStep:
    """Build the modeled step from the config: read the optimizer state, pick eta and the curvature.

    ``state`` is the already loaded optimizer state (read from ``config.optimizer_state`` when None).
    Without ``config.optimizer_state`` the step is plain gradient descent with eta = ``config.lr``
    or ``DEFAULT_SGD_LR``. With it, eta is ``config.lr`` or the state's learning rate (see
    ``OptimizerState.learning_rate`` for a schedule that ended at zero). With
    ``config.second_moment`` "uniform", Adam's next second moment takes in the mean gradient of
    ``pool_sample`` (the landmarks, a uniform sample of the pool), as
    ``OptimizerState.step_vectors`` describes. "frozen" keeps v / (1 - beta2^s). Unit-norm gradients are
    used only when ``config.normalize`` says so, or by default for first order without a state.
    """
    from gradients.tokenize import collate

    device = next(model.parameters()).device
    scale = offset = None
    if config.optimizer_state is None:
        eta = config.lr if config.lr is not None else DEFAULT_SGD_LR
        fingerprint, source, optimizer = "none", "none (plain gradient descent)", "SGD"
    else:
        from gradients.optimizer_state import load_optimizer_state

        if state is None:
            state = load_optimizer_state(config.optimizer_state, model)
        names = list(params)
        eta = state.learning_rate(names, config.lr)
        split = None if mask is None else mask.split([int(p.numel()) for p in params.values()])
        mean_gradient = None
        if config.second_moment == "uniform":
            batches = [
                collate(list(pool_sample[start:start + config.grad_batch_size]), pad_token_id)
                for start in range(0, len(pool_sample), config.grad_batch_size)
            ]
            # The gradient of the mean loss over these samples: g_w at w = 1.
            mean_gradient = TargetCurvature(model, batches, params, mask).gradient()
        scale64, offset64 = state.step_vectors(params, split, eta, mean_gradient)
        scale = scale64.float().to(device)
        offset = None if offset64 is None else offset64.float().to(device)
        fingerprint, source = f"{_state_fingerprint(state)}-{config.second_moment}", state.source
        logger.info("Adam preconditioner a: median %.3g, max %.3g (second moment: %s)",
                    float(scale64.median()), float(scale64.max()), config.second_moment)
        optimizer = "AdamW" if state.decoupled_weight_decay else "Adam"
        logger.info("Modeling an %s step at t = %d with eta = %.3g", optimizer, state.step + 1, eta)

    normalize = config.normalize if config.normalize is not None else (config.order == 1 and config.optimizer_state is None)
    if normalize and (config.order == 2 or offset is not None):
        logger.warning(
            "normalize=True rescales every gradient, which breaks the balance between the first-order term and "
            "the curvature or momentum terms; the quadratic model no longer predicts the loss change"
        )
    curvature = None
    if config.order == 2 or offset is not None:
        batches = [
            collate(list(targets[start:start + config.hvp_batch_size]), pad_token_id)
            for start in range(0, len(targets), config.hvp_batch_size)
        ]
        curvature = TargetCurvature(model, batches, params, mask, config.curvature)
    return ModeledStep(eta, scale, offset, curvature, normalize, fingerprint, source, optimizer)
