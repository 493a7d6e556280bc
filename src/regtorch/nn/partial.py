"""``MLPRegressor.partial_fit``: one epoch over the given rows, the optimizer kept between calls.

The first call (on an unfitted estimator) builds the network and fixes the standardisation
from its rows; every call then runs the one training loop (:func:`regtorch.nn.loop.train`)
for one epoch at a constant learning rate, with the optimizer's state and the batch-order
generator carried over from the previous call, so ``n`` calls on the same rows train exactly
as ``fit`` for ``n`` epochs with ``lr_schedule="constant"`` and ``early_stopping=False``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from regtorch.nn.loop import Callback, History, TrainState

__all__ = ["partial_fit_mlp"]


class _CarryState(Callback):
    """Loads the previous call's optimizer state and generator before the epoch, and keeps
    theirs once it ended normally (an interrupted epoch leaves the carried state as it was)."""

    def __init__(self, carried: dict[str, Any] | None) -> None:
        self.carried = carried

    def on_train_begin(self, state: TrainState) -> None:
        if self.carried is not None:
            state.optimizer.load_state_dict(copy.deepcopy(self.carried["optimizer"]))
            state.generator.set_state(self.carried["generator"].clone())

    def on_train_stop(self, state: TrainState) -> None:
        self.carried = {
            "optimizer": copy.deepcopy(state.optimizer.state_dict()),
            "generator": state.generator.get_state(),
        }


def _appended(old: History | None, new: History) -> History:
    """``old``'s epochs followed by ``new``'s (times continue from ``old``'s last)."""
    if old is None or len(old) == 0:
        return new
    start = old.time[-1] if old.time else 0.0
    val = list(old.val_loss)
    if val or new.val_loss:  # keep the lists aligned with the epochs
        val = val + [float("nan")] * (len(old) - len(val)) + list(new.val_loss)
        val += [float("nan")] * (len(old) + len(new) - len(val))
    return History(
        train_loss=[*old.train_loss, *new.train_loss],
        val_loss=val,
        time=[*old.time, *(start + t for t in new.time)],
        lr=[*old.lr, *new.lr],
        interrupted=new.interrupted,
    )


def _check_inputs(est: Any, X: Any, y: Any, sample_weight: Any) -> tuple[Any, ...]:
    """Validated ``X, y, weights (positive rows only), y_1d``; a later call must have the
    fitted number of features and targets."""
    from regtorch._base import validate_fit_input, validate_predict_input
    from regtorch.nn.scaling import _weighted_rows

    first = not hasattr(est, "module_")
    names = getattr(est, "feature_names_in_", None)
    if not first:
        validate_predict_input(est, X)  # the fitted number of features (and names)
    Xt, yt, swt, y_1d = validate_fit_input(est, X, y, sample_weight)
    if not first and names is not None:
        est.feature_names_in_ = names  # a nameless later batch keeps the fitted names
    if not first and yt.shape[1] != est._n_outputs:
        raise ValueError(
            f"y has {yt.shape[1]} targets, but MLPRegressor was fitted with {est._n_outputs}."
        )
    Xn, yn, sw = _weighted_rows(Xt.numpy(), yt.numpy(), swt)
    return Xn, yn, sw, (y_1d if first else est._y_1d)


def partial_fit_mlp(est: Any, X: Any, y: Any, sample_weight: Any | None) -> Any:
    """Run one epoch of ``est`` (an MLPRegressor) over ``X, y``; returns ``est``."""
    from regtorch._validation import resolve_device
    from regtorch.nn.loop import train
    from regtorch.nn.scaling import _forward64, _scaling, _standardized

    est._check_params()
    if est.solver == "lbfgs":
        raise ValueError(
            "partial_fit needs a stochastic solver (adam, adamw or sgd): L-BFGS builds its "
            "curvature from one fixed objective, not from a new batch per call."
        )
    first = not hasattr(est, "module_")
    Xn, yn, sw, y_1d = _check_inputs(est, X, y, sample_weight)
    if first:
        module, _ = est._network(Xn.shape[1], yn.shape[1])
        scaling = _scaling(Xn, yn, bool(est.standardize), sw)
        rng = np.random.default_rng(est.random_state)
        seed = int(est.random_state) if est.random_state is not None else int(rng.integers(2**31))
    else:
        module = copy.deepcopy(est.module_)
        scaling = (est.x_mean_, est.x_scale_, est.y_mean_, est.y_scale_)
        seed = None
    x_mean, x_scale, y_mean, y_scale = scaling
    settings = est._train_settings(len(Xn))
    settings.update(epochs=1, lr_schedule=None)
    carry = _CarryState(getattr(est, "_partial_state", None))
    callbacks, _ = est._callbacks(False, None, 1, est.verbose)
    history = train(
        module,
        _standardized(Xn, x_mean, x_scale, "X"),
        _standardized(yn, y_mean, y_scale, "y"),
        **settings,
        seed=seed,
        device=resolve_device(est.device),
        callbacks=[carry, *callbacks],
        init=first,
        sample_weight=sw,
    )
    module64 = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
    _forward64(module64, Xn, scaling, "the training rows")
    history = _appended(getattr(est, "history_", None), history)
    est._set_fitted(
        module,
        *scaling,
        history,
        best_epoch=len(history),
        y_1d=y_1d,
        module64=module64,
        partial_state=carry.carried,
    )
    return est
