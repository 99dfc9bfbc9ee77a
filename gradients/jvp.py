"""JVP embeddings: cheap per-sample features that predict gradient similarity.

For a sample x, let h(theta; x) in R^H be the final-norm hidden state of the last real token after
the first K transformer blocks, as a function of the truncated model's parameters theta. With T
random Gaussian directions v_1..v_T in parameter space (seeded, shared by all samples), the
embedding is

    e(x) = P [J_theta h(theta; x) v_1, ..., J_theta h(theta; x) v_T]        (T*H values)

where J_theta h v is a Jacobian-vector product (forward-mode AD) and P is an optional seeded
Gaussian projection to ``proj_dim`` coordinates. Inner products of these vectors are random
sketches of the Jacobians, which is what ties them to gradient similarity.

A batch of samples runs as one forward-mode pass: every sample's output depends on the shared
parameters and its own tokens only, so one JVP over the batch gives every sample's JVP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.func import functional_call, jvp, vmap
from tqdm.auto import tqdm

from gradients.blocks import truncated_base_model
from gradients.model import attention_implementation
from idopt.errors import InvalidInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JVPConfig:
    """Settings of the JVP embedding.

    num_blocks: transformer blocks kept (K). num_directions: random directions (T).
    proj_dim: output dimension; when T*H <= proj_dim the concatenation is returned as it is,
    because a random projection to more coordinates than it has adds noise and no information.
    seed: seed of the directions and of the projection. batch_size: samples per forward pass.
    """

    num_blocks: int = 4
    num_directions: int = 2
    proj_dim: int = 4096
    seed: int = 0
    batch_size: int = 16


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the position of the last real token of each row, for left or right padding.

    attention_mask: (B, L) of 0/1. Returns (B,) long.
    """
    length = attention_mask.shape[1]
    flipped_first = torch.argmax(attention_mask.flip(1).to(torch.int64), dim=1)
    return length - 1 - flipped_first


def random_directions(params: dict[str, torch.Tensor], num_directions: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Draw T standard Gaussian directions over ``params`` from a seeded CPU generator.

    The draw order follows the dict order and the values do not depend on the device, so the
    same seed gives the same directions on CPU and GPU.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    directions = []
    for _ in range(num_directions):
        direction = {}
        for name, value in params.items():
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
            direction[name] = noise.to(device=value.device, dtype=value.dtype)
        directions.append(direction)
    return directions


class JVPEmbedder:
    """Compute JVP embeddings of tokenized samples with a fixed truncated model and directions.

    Parameters
    ----------
    model
        A transformers causal LM (Llama, Qwen2, Mistral, GPT-2 and other layouts known to
        ``gradients.blocks``).
    config
        The :class:`JVPConfig`.
    """

    def __init__(self, model, config: JVPConfig = JVPConfig()):
        if config.num_directions < 1:
            raise InvalidInputError(f"num_directions={config.num_directions} must be >= 1")
        if config.proj_dim < 1:
            raise InvalidInputError(f"proj_dim={config.proj_dim} must be >= 1")
        if config.batch_size < 1:
            raise InvalidInputError(f"batch_size={config.batch_size} must be >= 1")
        self.model = model
        self.config = config
        self.view = truncated_base_model(model, config.num_blocks)
        self.params = {name: p.detach() for name, p in self.view.named_parameters()}
        self.buffers = {name: b for name, b in self.view.named_buffers()}
        directions = random_directions(self.params, config.num_directions, config.seed)
        # One (T, *shape) tensor per parameter; ``directions`` returns views into it.
        self._stacked = {name: torch.stack([d[name] for d in directions]) for name in self.params}
        self._use_vmap = True
        del directions
        self.hidden_size = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "n_embd"))
        raw_dim = self.hidden_size * config.num_directions
        self.projection = None
        if raw_dim > config.proj_dim:
            generator = torch.Generator(device="cpu").manual_seed(config.seed + 1)
            matrix = torch.randn(raw_dim, config.proj_dim, generator=generator) / config.proj_dim**0.5
            self.projection = matrix.to(next(iter(self.params.values())).device)
        self.dim = min(raw_dim, config.proj_dim)
        num_params = sum(p.numel() for p in self.params.values())
        logger.info(
            "JVP embedder: %d blocks, %d directions over %d parameters, output dim %d",
            config.num_blocks, config.num_directions, num_params, self.dim,
        )

    @property
    def directions(self) -> list[dict[str, torch.Tensor]]:
        """The T random directions, each a dict parameter name -> tensor of that parameter's shape."""
        count = self.config.num_directions
        return [{name: value[t] for name, value in self._stacked.items()} for t in range(count)]

    def _hidden_last(self, params: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = functional_call(
            self.view,
            {**params, **self.buffers},
            args=(),
            kwargs={"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False},
        )
        hidden = output.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]

    def embed_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the embeddings of one padded batch.

        input_ids, attention_mask: (B, L). Returns (B, dim) float32 on the model's device.
        """
        device = next(iter(self.params.values())).device
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device)

        def tangent_along(direction):
            return jvp(lambda params: self._hidden_last(params, input_ids, attention_mask), (self.params,), (direction,))[1]

        with attention_implementation(self.model, "eager"):
            if self._use_vmap:
                try:
                    # vmap over the directions computes the primal pass once for all T tangents.
                    stacked = vmap(tangent_along)(self._stacked)
                    tangents = [stacked[t].float() for t in range(stacked.shape[0])]
                except RuntimeError as error:
                    logger.warning("vmap over JVP directions failed (%s); computing one direction at a time", error)
                    self._use_vmap = False
            if not self._use_vmap:
                tangents = [tangent_along(direction).float() for direction in self.directions]
        features = torch.cat(tangents, dim=1)
        if self.projection is not None:
            features = features @ self.projection
        return features

    def embed(self, samples: Sequence, pad_token_id: int, desc: str = "JVP embeddings") -> np.ndarray:
        """Embed tokenized samples (objects with ``input_ids``), batching samples of similar length.

        Returns an (n, dim) float32 array in the order of ``samples``.
        """
        from gradients.tokenize import collate

        order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
        result = np.zeros((len(samples), self.dim), dtype=np.float32)
        batch_size = self.config.batch_size
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
                chunk = order[start:start + batch_size]
                batch = collate([samples[i] for i in chunk], pad_token_id)
                features = self.embed_batch(batch["input_ids"], batch["attention_mask"])
                result[chunk] = features.cpu().numpy()
        return result
