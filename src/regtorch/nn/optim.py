"""Optimizers and learning-rate schedules by name, built without loading torch's compiler.

``torch.optim``'s methods are wrapped for ``torch.compile``: ``add_param_group`` and
``zero_grad`` carry ``@torch._disable_dynamo`` and ``step`` goes through
``_use_grad_for_differentiable``, and each wrapper imports ``torch._dynamo`` (about a second
and ~75 MiB, measured) on first call. The optimizers here are small subclasses that call the
same unwrapped methods, so a fit never pays for a compiler it does not use; their steps are
bitwise those of the stock classes (tested).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")
SCHEDULES = ("constant", "cosine", "linear")
LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
}

_ADD_PARAM_GROUP = inspect.unwrap(torch.optim.Optimizer.add_param_group)
_ZERO_GRAD = inspect.unwrap(torch.optim.Optimizer.zero_grad)
# checkpoints: also wrapped with @torch._disable_dynamo
_STATE_DICT = inspect.unwrap(torch.optim.Optimizer.state_dict)
_LOAD_STATE_DICT = inspect.unwrap(torch.optim.Optimizer.load_state_dict)


def _eager(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``cls`` with its compiler wrappers taken off (what they do when not compiling)."""
    raw_step = inspect.unwrap(cls.step)

    def step(self: torch.optim.Optimizer, closure: Callable[[], float] | None = None) -> Any:
        # _use_grad_for_differentiable runs the step under no_grad unless differentiable=True
        if self.defaults.get("differentiable", False):
            return raw_step(self, closure)
        with torch.no_grad():
            return raw_step(self, closure)

    body = {
        "add_param_group": _ADD_PARAM_GROUP,
        "zero_grad": _ZERO_GRAD,
        "state_dict": _STATE_DICT,
        "load_state_dict": _LOAD_STATE_DICT,
        "step": step,
    }
    return type(cls.__name__, (cls,), {**body, "__module__": __name__})


_ADAM = _eager(torch.optim.Adam)
_ADAMW = _eager(torch.optim.AdamW)
_SGD = _eager(torch.optim.SGD)
_LBFGS = _eager(torch.optim.LBFGS)


def make_optimizer(
    name: str,
    params: Any,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Build an optimizer by name: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"lbfgs"``.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> type(make_optimizer("adam", [w], lr=0.1)).__name__
    'Adam'
    """
    params = list(params)
    # The fused kernels (CPU and CUDA) take a tiny model's step in far less Python overhead.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    opt: Any
    if name == "adam":
        opt = _ADAM(params, lr=lr, weight_decay=weight_decay, fused=fused or None)  # type: ignore[call-arg]
    elif name == "adamw":
        opt = _ADAMW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)  # type: ignore[call-arg]
    elif name == "sgd":
        opt = _SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)  # type: ignore[call-arg]
    elif name == "lbfgs":
        opt = _LBFGS(  # type: ignore[call-arg]
            params,
            lr=lr,
            max_iter=20,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-16,
        )
    else:
        raise ValueError(
            f"The 'optimizer' parameter must be one of {OPTIMIZERS}. Got {name!r} instead."
        )
    return opt


def make_scheduler(
    name: str | None, opt: torch.optim.Optimizer, epochs: int, final_factor: float = 0.01
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-epoch schedule decaying the learning rate to ``final_factor * lr``."""
    if name is None or name == "constant":
        return None
    if name not in SCHEDULES:
        raise ValueError(
            f"The 'lr_schedule' parameter must be one of {SCHEDULES} or None. Got {name!r} instead."
        )
    span = max(epochs - 1, 1)

    def factor(e: int) -> float:
        frac = min(e / span, 1.0)
        if name == "cosine":
            return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0 - (1.0 - final_factor) * frac

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_loss(loss: str | nn.Module) -> nn.Module:
    """Return a loss module from a name (``"mse"``, ``"mae"``, ``"huber"``, ...) or module."""
    if isinstance(loss, nn.Module):
        return loss
    try:
        return LOSSES[loss]()
    except KeyError:
        raise ValueError(
            f"The 'loss' parameter must be one of {sorted(LOSSES)}. Got {loss!r} instead."
        ) from None
