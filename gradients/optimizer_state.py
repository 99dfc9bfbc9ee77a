"""Adam and AdamW optimizer state by parameter name: read, checked against a model, saved.

Adam-aware selection needs, for every selected parameter, the first and second moments m and
v after s steps, the step count s, betas, eps, the learning rate and the weight decay (see
``idopt.optimizers.adam_step_model`` for the step these define). This module reads them from

* a folder written by :meth:`OptimizerState.save` (``idopt warmup`` writes one),
* a ``torch.optim.Adam`` / ``AdamW`` state dict saved with ``torch.save`` (``.pt`` file),
* a transformers Trainer checkpoint folder (its ``optimizer.pt``),

and always loads with ``torch.load(..., weights_only=True)``, which refuses pickled code.

A torch state dict stores parameters by position, not by name. The names come from the
``param_names`` entry that torch 2.6 and later write when the optimizer was built from
``model.named_parameters()``. Without it they follow the order of ``model.named_parameters()``,
which is the order of ``torch.optim.AdamW(model.parameters())``. A Trainer checkpoint follows
the Trainer's two groups: parameters with weight decay, then those without. Every mapped
tensor must have its parameter's shape, and the error names the first one that does not.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from idopt.errors import InvalidInputError
from idopt.optimizers import AdamState, adam_step_model

logger = logging.getLogger(__name__)

STATE_JSON = "optimizer_state.json"
STATE_TENSORS = "optimizer_state.safetensors"
TRAINER_OPTIMIZER = "optimizer.pt"
FORMAT_NAME = "idopt-adam-state"
FORMAT_VERSION = 1

# Name patterns that the transformers Trainer (5.x, ``Trainer.get_decay_parameter_names``)
# exempts from weight decay, together with every ``torch.nn.LayerNorm`` parameter.
_TRAINER_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


@dataclass
class ParameterGroupSettings:
    """Hyperparameters of the optimizer group that contains one parameter.

    lr: learning rate of the last step (after any schedule). initial_lr: the schedule's
    starting rate when a torch LR scheduler recorded it, else None. weight_decay: the
    coefficient wd >= 0 of this parameter.
    """

    lr: float
    weight_decay: float
    initial_lr: float | None = None


@dataclass
class OptimizerState:
    """Adam or AdamW state of a model's parameters, keyed by parameter name.

    Attributes
    ----------
    exp_avg, exp_avg_sq : OrderedDict[str, torch.Tensor]
        First and second moments m and v after ``step`` steps, each of its parameter's shape,
        float32 on the CPU.
    settings : OrderedDict[str, ParameterGroupSettings]
        lr, weight decay and initial lr of every parameter in the state.
    step : int
        Steps s already taken; the modeled step is t = s + 1.
    betas : (float, float)
    eps : float
    decoupled_weight_decay : bool
        True for AdamW (theta scaled by 1 - lr wd), False for Adam (wd theta added to the gradient).
    source : str
        Where the state was read from, for reports.
    """

    exp_avg: OrderedDict[str, torch.Tensor]
    exp_avg_sq: OrderedDict[str, torch.Tensor]
    settings: OrderedDict[str, ParameterGroupSettings]
    step: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decoupled_weight_decay: bool = True
    source: str = "memory"
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping,
        names: list[str] | None = None,
        *,
        model: torch.nn.Module | None = None,
        source: str = "state dict",
    ) -> "OptimizerState":
        """Build the state from a ``torch.optim.Adam`` / ``AdamW`` ``state_dict()``.

        Parameters
        ----------
        state_dict : Mapping
            ``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}``.
        names : list of str, optional
            Parameter name of every index, in the order of the groups' ``params`` lists.
            Default: the groups' ``param_names`` when present, else the trainable parameters of
            ``model`` in ``named_parameters()`` order.
        model : torch.nn.Module, optional
            Needed when ``names`` is None and the groups carry no ``param_names``; the shapes
            are checked against it when given.

        Raises
        ------
        InvalidInputError
            If the dict is not an Adam state dict, uses amsgrad or maximize, has steps that differ
            between parameters, or does not match the model. The message names the parameter.
        """
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise InvalidInputError(
                f"{source} is not a torch.optim state dict: expected the keys 'state' and 'param_groups', "
                f"got {sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__}"
            )
        groups = list(state_dict["param_groups"])
        if not groups:
            raise InvalidInputError(f"{source} has no param_groups")
        first = groups[0]
        for key in ("betas", "eps", "lr"):
            if key not in first:
                raise InvalidInputError(f"{source} is not an Adam state dict: its param_groups have no {key!r}")
        for group in groups:
            if group.get("amsgrad"):
                raise InvalidInputError(f"{source} uses amsgrad=True, which the Adam step model does not cover; use amsgrad=False")
            if group.get("maximize"):
                raise InvalidInputError(f"{source} uses maximize=True; the step model assumes a minimized loss")
        indices = [index for group in groups for index in group["params"]]
        if names is None:
            names = _names_from_groups(groups, model, source)
        if len(names) != len(indices):
            raise InvalidInputError(
                f"{source} contains {len(indices)} parameters but {len(names)} parameter names were given; "
                "pass the names in the order the optimizer received the parameters"
            )
        position = dict(zip(indices, names))
        decoupled = bool(first.get("decoupled_weight_decay", True))
        if "decoupled_weight_decay" not in first:
            logger.warning("%s does not say whether weight decay is decoupled; assuming AdamW", source)

        exp_avg: OrderedDict[str, torch.Tensor] = OrderedDict()
        exp_avg_sq: OrderedDict[str, torch.Tensor] = OrderedDict()
        settings: OrderedDict[str, ParameterGroupSettings] = OrderedDict()
        steps: dict[str, int] = {}
        states = state_dict["state"]
        for group in groups:
            if tuple(group["betas"]) != tuple(first["betas"]) or group["eps"] != first["eps"]:
                raise InvalidInputError(f"{source} has parameter groups with different betas or eps; the step model needs one value")
            for index in group["params"]:
                name = position[index]
                entry = states.get(index, states.get(str(index)))
                if entry is None:
                    # A parameter that never received a gradient has no state yet.
                    continue
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    if key not in entry:
                        raise InvalidInputError(f"{source}: the state of parameter {name!r} has no {key!r}; is this an Adam optimizer?")
                exp_avg[name] = entry["exp_avg"].detach().to("cpu", torch.float32)
                exp_avg_sq[name] = entry["exp_avg_sq"].detach().to("cpu", torch.float32)
                steps[name] = int(round(float(entry["step"])))
                settings[name] = ParameterGroupSettings(
                    lr=float(group["lr"]),
                    weight_decay=float(group.get("weight_decay", 0.0)),
                    initial_lr=None if group.get("initial_lr") is None else float(group["initial_lr"]),
                )
        if not exp_avg:
            raise InvalidInputError(f"{source} contains no per-parameter state: the optimizer has not taken a step yet")
        distinct = sorted(set(steps.values()))
        if len(distinct) > 1:
            odd = next(name for name, value in steps.items() if value != distinct[-1])
            raise InvalidInputError(
                f"{source}: parameters have different step counts {distinct} (e.g. {odd!r} has {steps[odd]}); "
                "the step model needs one count for every selected parameter"
            )
        state = cls(
            exp_avg, exp_avg_sq, settings, distinct[0],
            betas=(float(first["betas"][0]), float(first["betas"][1])), eps=float(first["eps"]),
            decoupled_weight_decay=decoupled, source=source,
        )
        if model is not None:
            state.check_matches(model)
        return state

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> "OptimizerState":
        """Build the state from a live ``torch.optim.Adam`` / ``AdamW`` that trains ``model``."""
        name_of = {id(param): name for name, param in model.named_parameters()}
        names = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) not in name_of:
                    raise InvalidInputError("the optimizer contains a parameter that is not part of the model; pass the model it trains")
                names.append(name_of[id(param)])
        return cls.from_state_dict(optimizer.state_dict(), names, model=model, source=type(optimizer).__name__)

    # ------------------------------------------------------------------ checks

    def check_matches(self, model: torch.nn.Module) -> None:
        """Raise InvalidInputError naming the first state tensor whose parameter is missing or has another shape."""
        parameters = dict(model.named_parameters())
        for name, moment in self.exp_avg.items():
            if name not in parameters:
                raise InvalidInputError(
                    f"optimizer state from {self.source} does not match the model: parameter {name!r} is not in the "
                    "model; load the model the optimizer trained"
                )
            shape = tuple(parameters[name].shape)
            for label, tensor in (("exp_avg", moment), ("exp_avg_sq", self.exp_avg_sq[name])):
                if tuple(tensor.shape) != shape:
                    raise InvalidInputError(
                        f"optimizer state from {self.source} does not match the model: {label} of parameter {name!r} "
                        f"has shape {tuple(tensor.shape)} but the parameter has shape {shape}; load the model "
                        "the optimizer trained"
                    )

    def require(self, names: list[str]) -> None:
        """Raise InvalidInputError when a selected parameter has no state (the optimizer never stepped it)."""
        missing = [name for name in names if name not in self.exp_avg]
        if missing:
            raise InvalidInputError(
                f"optimizer state from {self.source} has no moments for the selected parameter {missing[0]!r} "
                f"({len(missing)} selected parameters lack state); select only trained parameters with --params"
            )

    # ------------------------------------------------------------------ learning rate

    def learning_rate(self, names: list[str], override: float | None = None) -> float:
        """Return the learning rate eta of the modeled step for the selected parameters.

        ``override`` wins when given. Otherwise eta is the largest current lr among the
        selected parameters' groups. When every one of them is 0 (a schedule that decayed to
        zero at the end of training), eta is the largest ``initial_lr`` the scheduler recorded,
        with a warning. Without one, the call raises InvalidInputError, whose message requests an
        explicit learning rate.
        """
        if override is not None:
            if not (math.isfinite(override) and override > 0):
                raise InvalidInputError(f"learning rate {override!r} must be a finite number > 0")
            return float(override)
        self.require(names)
        current = max(self.settings[name].lr for name in names)
        if current > 0:
            return current
        initial = [self.settings[name].initial_lr for name in names if self.settings[name].initial_lr]
        if initial:
            eta = max(initial)
            logger.warning(
                "The optimizer's learning rate is 0 (its schedule ended at zero); modeling the step with the "
                "schedule's initial learning rate %.3g. Pass --lr to choose another", eta,
            )
            return eta
        raise InvalidInputError(
            f"the optimizer state from {self.source} has learning rate 0 and records no initial learning rate; "
            "pass the learning rate of the step to model with --lr"
        )

    # ------------------------------------------------------------------ step model

    def step_vectors(
        self,
        params: Mapping[str, torch.Tensor],
        mask_indices: list[torch.Tensor] | None,
        eta: float,
        mean_gradient: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the Adam step model over the flat selected parameters: (scale a, offset b0).

        The modeled step is theta' - theta = -eta (a * g_w + b0) with g_w the weighted source
        gradient (``idopt.optimizers.adam_step_model``). The second moment of the step is

            v' = beta2 v + (1 - beta2) g_bar^2    with ``mean_gradient`` g_bar given,
            v' frozen at v / (1 - beta2^s)        without it.

        g_bar is the pool's mean gradient, the g_w of uniform weights w = 1, so the first form
        is exact for w = 1. It matters where v is tiny. A coordinate that the warm-up barely moved
        (a rare token's embedding row) has a frozen a of up to (1 - beta1) / eps, but the real step
        divides by sqrt(v') and so stays near the learning rate.
        A parameter whose group lr differs from ``eta`` has its a and b0 multiplied by lr / eta,
        so that one eta serves all groups.

        Parameters
        ----------
        params : Mapping[str, Tensor]
            Selected parameters in flat order (``gradients.params.select_parameters``).
        mask_indices : list of Tensor, optional
            Kept element indices within each parameter (``ParameterMask.split``), or None for all.
        eta : float
            Learning rate of the modeled step.
        mean_gradient : (N,) tensor, optional
            g_bar over the flat selected (masked) parameters.

        Returns
        -------
        (N,) float64 tensor a and (N,) float64 tensor b0 (None when momentum and weight decay are
        both zero), on the CPU. N is the flat selected (masked) dimension.
        """
        self.require(list(params))
        if self.step < 1:
            raise InvalidInputError("the optimizer state has step 0: take at least one warm-up step first")
        total = sum(int(p.numel()) for p in params.values()) if mask_indices is None else \
            sum(int(indices.numel()) for indices in mask_indices)
        if mean_gradient is not None and mean_gradient.numel() != total:
            raise InvalidInputError(
                f"mean_gradient has {mean_gradient.numel()} entries but the selected parameters have {total}; "
                "compute it over the same parameters and mask"
            )
        scales, offsets = [], []
        position_in_flat = 0
        for position, (name, param) in enumerate(params.items()):
            keep = None if mask_indices is None else mask_indices[position].cpu()
            size = int(param.numel()) if keep is None else int(keep.numel())
            if size == 0:
                # A sparse --grad-mask can keep no element of a small tensor such as a norm weight.
                continue

            def flat(tensor: torch.Tensor) -> np.ndarray:
                values = tensor.detach().reshape(-1).cpu()
                if keep is not None:
                    values = values[keep]
                return values.double().numpy()

            group = self.settings[name]
            decay = group.weight_decay
            adam = AdamState(
                exp_avg=flat(self.exp_avg[name]), exp_avg_sq=flat(self.exp_avg_sq[name]), step=self.step,
                betas=self.betas, eps=self.eps, weight_decay=decay,
                decoupled_weight_decay=self.decoupled_weight_decay,
                params=flat(param) if decay > 0 else None,
            )
            if mean_gradient is None:
                model = adam_step_model(adam)
            else:
                block = mean_gradient[position_in_flat:position_in_flat + size].detach().cpu().double().numpy()
                model = adam_step_model(adam, exp_avg_sq_next=adam.next_exp_avg_sq(block))
            position_in_flat += size
            ratio = group.lr / eta if group.lr > 0 else 1.0
            scales.append(torch.from_numpy(ratio * model.scale))
            offset = model.offset if model.offset is not None else np.zeros_like(model.scale)
            offsets.append(torch.from_numpy(ratio * offset))
        scale = torch.cat(scales)
        offset = torch.cat(offsets)
        return scale, (offset if bool(offset.any()) else None)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> Path:
        """Write the state to ``folder``: moments as safetensors, hyperparameters as JSON."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name in self.exp_avg:
            tensors[f"exp_avg/{name}"] = self.exp_avg[name].contiguous()
            tensors[f"exp_avg_sq/{name}"] = self.exp_avg_sq[name].contiguous()
        save_file(tensors, str(folder / STATE_TENSORS))
        description = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "step": self.step,
            "betas": list(self.betas),
            "eps": self.eps,
            "decoupled_weight_decay": self.decoupled_weight_decay,
            "parameters": {
                name: {"lr": s.lr, "weight_decay": s.weight_decay, "initial_lr": s.initial_lr}
                for name, s in self.settings.items()
            },
            **({"extra": self.extra} if self.extra else {}),
        }
        (folder / STATE_JSON).write_text(json.dumps(description, indent=2) + "\n")
        logger.info("Saved the optimizer state of %d parameters (step %d) to %s", len(self.exp_avg), self.step, folder)
        return folder

    @classmethod
    def _read_saved(cls, folder: Path) -> "OptimizerState":
        from safetensors.torch import load_file

        try:
            description = json.loads((folder / STATE_JSON).read_text())
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"{folder / STATE_JSON} is not valid JSON ({error}); rewrite it with idopt warmup") from error
        if description.get("format") != FORMAT_NAME or description.get("version") != FORMAT_VERSION:
            raise InvalidInputError(
                f"{folder / STATE_JSON} has format {description.get('format')!r} version {description.get('version')!r}; "
                f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
            )
        if not (folder / STATE_TENSORS).is_file():
            raise InvalidInputError(f"{folder} has {STATE_JSON} but no {STATE_TENSORS}; the saved state is incomplete")
        tensors = load_file(str(folder / STATE_TENSORS))
        exp_avg, exp_avg_sq, settings = OrderedDict(), OrderedDict(), OrderedDict()
        for name, values in description["parameters"].items():
            for key, target in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
                if f"{key}/{name}" not in tensors:
                    raise InvalidInputError(f"{folder / STATE_TENSORS} lacks {key} of parameter {name!r}")
                target[name] = tensors[f"{key}/{name}"].float()
            settings[name] = ParameterGroupSettings(
                lr=float(values["lr"]), weight_decay=float(values["weight_decay"]),
                initial_lr=None if values.get("initial_lr") is None else float(values["initial_lr"]),
            )
        return cls(
            exp_avg, exp_avg_sq, settings, int(description["step"]),
            betas=(float(description["betas"][0]), float(description["betas"][1])), eps=float(description["eps"]),
            decoupled_weight_decay=bool(description["decoupled_weight_decay"]), source=str(folder),
            extra=description.get("extra", {}),
        )


def load_optimizer_state(path: str | Path, model: torch.nn.Module) -> OptimizerState:
    """Read an Adam/AdamW state for ``model`` from a saved folder, a Trainer checkpoint or a ``.pt`` state dict.

    The format is detected from the path: a folder with ``optimizer_state.json`` (written by
    ``idopt warmup`` / :meth:`OptimizerState.save`), a folder with ``optimizer.pt`` (a
    transformers Trainer checkpoint, groups "with weight decay" then "without"), or a file
    with a ``torch.optim`` state dict. The state is checked against the model's parameters.

    Raises
    ------
    InvalidInputError
        If the path does not exist, contains no known format, or the state does not match the model
        (the message names the first mismatched parameter).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"optimizer state {str(path)!r} does not exist; pass a warm-up folder, a Trainer checkpoint or a .pt file")
    if path.is_dir() and (path / STATE_JSON).is_file():
        state = OptimizerState._read_saved(path)
        state.check_matches(model)
    elif path.is_dir() and (path / TRAINER_OPTIMIZER).is_file():
        state_dict = _torch_load(path / TRAINER_OPTIMIZER)
        groups = state_dict.get("param_groups", []) if isinstance(state_dict, Mapping) else []
        names = None if groups and all("param_names" in g for g in groups) else trainer_parameter_order(model)
        state = OptimizerState.from_state_dict(state_dict, names, model=model, source=str(path / TRAINER_OPTIMIZER))
    elif path.is_dir():
        raise InvalidInputError(
            f"{str(path)!r} contains neither {STATE_JSON} (idopt warmup) nor {TRAINER_OPTIMIZER} (a Trainer "
            "checkpoint); pass one of those folders or a .pt state dict file"
        )
    else:
        state = OptimizerState.from_state_dict(_torch_load(path), model=model, source=str(path))
    logger.info(
        "Loaded %s state of %d parameters at step %d from %s",
        "AdamW" if state.decoupled_weight_decay else "Adam", len(state.exp_avg), state.step, state.source,
    )
    return state


def trainer_parameter_order(model: torch.nn.Module) -> list[str]:
    """Return the trainable parameter names in the order the transformers Trainer gives them to its optimizer.

    The Trainer (``Trainer.create_optimizer``, transformers 5.x) builds two groups from
    ``named_parameters()``: the parameters with weight decay, then the rest (biases, norms).
    """
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], _TRAINER_NO_DECAY_PATTERNS))
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    return [name for name in trainable if name in decay] + [name for name in trainable if name not in decay]


def _names_from_groups(groups: list, model: torch.nn.Module | None, source: str) -> list[str]:
    if all("param_names" in group for group in groups):
        return [name for group in groups for name in group["param_names"]]
    if model is None:
        raise InvalidInputError(f"{source} stores no parameter names; pass the model or the names in optimizer order")
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a non-tensor or corrupt file
        raise InvalidInputError(
            f"could not read {str(path)!r} as a torch state dict with weights_only=True ({type(error).__name__}: {error}); "
            "save it with torch.save(optimizer.state_dict(), path)"
        ) from error
