"""MLPRegressor: a scikit-learn regressor backed by regtorch's MLP and training loop."""

from __future__ import annotations

import copy
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from regtorch._base import (
    check_param,
    check_sample_weight,
    validate_fit_input,
    validate_predict_input,
)
from regtorch._validation import resolve_device
from regtorch.nn.callbacks import EarlyStopping
from regtorch.nn.loop import Callback, History, TrainState
from regtorch.nn.scaling import (
    _check_network_size,
    _forward64,
    _positive_weights,
    _scaling,
    _standardized,
    _weighted_rows,
)

__all__ = ["MLPRegressor"]

SOLVERS = ("adam", "adamw", "sgd", "lbfgs")
SCHEDULES = ("cosine", "linear", "constant")
# Below this many training rows, "auto" trains full batch: a step on all rows costs little
# more than a mini-batch step there, and full-batch Adam with a decaying rate converges fast.
FULL_BATCH_ROWS = 2048
AUTO_MINI_BATCH = 256
# "auto" epochs: 300 full-batch epochs, or about this many mini-batch steps.
AUTO_STEPS = 4000
# Early stopping treats a validation loss more than this fraction above its best as
# overfitting; closer to the best, the difference is the validation rows' noise.
OVERFIT_MARGIN = 0.1


def _l2_penalty(alpha: float) -> Callable[[torch.nn.Module], torch.Tensor] | None:
    """``alpha / 2 * sum(w ** 2)``: coupled weight decay for optimizers without one (L-BFGS)."""
    if alpha == 0:
        return None

    def penalty(module: torch.nn.Module) -> torch.Tensor:
        return 0.5 * alpha * sum((p * p).sum() for p in module.parameters())  # type: ignore[return-value]

    return penalty


def _stochastic_solver(est: Any) -> bool:
    if est.solver == "lbfgs":
        raise AttributeError("partial_fit is only available for the solvers adam, adamw and sgd.")
    return True


class _OverfitStopping(EarlyStopping):
    """Early stopping that acts on overfitting, not on noise: training stops once the
    monitored loss has stayed more than ``margin`` (relative) above its best for ``patience``
    epochs in a row, and the best epoch's weights replace the final ones only when the last
    loss is that far above the best. Otherwise the model keeps its final weights: on a small
    validation set the epoch of lowest loss is partly chance, and picking it costs accuracy
    (an epoch of the learning-rate decay's noisy, early phase wins by luck)."""

    def __init__(self, patience: int, tol: float, margin: float = OVERFIT_MARGIN) -> None:
        super().__init__(patience=patience, tol=tol)
        self.margin = margin
        self.last_loss = math.nan
        self.over = 0  # epochs in a row with the loss more than `margin` above its best

    def _overfit(self) -> bool:
        # a non-finite last loss counts as overfit: the best weights are the safe ones
        return not self.last_loss <= (1.0 + self.margin) * self.best_loss

    def on_train_begin(self, state: TrainState) -> None:
        super().on_train_begin(state)
        if state.epoch == 0 and not state.times:
            self.last_loss, self.over = math.nan, 0

    def on_epoch_end(self, state: TrainState) -> None:
        stop = state.stop
        super().on_epoch_end(state)  # tracks the best loss and weights; its stop is undone
        cur = state.val_loss if state.val_loss is not None else state.train_loss
        self.last_loss = float(cur)
        self.over = self.over + 1 if self._overfit() else 0
        # a spike of the loss is noise, not overfitting: stop only when it persists
        state.stop = stop or self.over >= self.patience

    def on_train_end(self, state: TrainState) -> None:
        if self._overfit():
            super().on_train_end(state)
        elif state.times:
            self.best_epoch = len(state.times)  # the model keeps the last complete epoch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_loss": self.last_loss, "over": self.over}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_loss = float(state["last_loss"])
        self.over = int(state["over"])


class MLPRegressor(RegressorMixin, BaseEstimator):
    """Multi-layer perceptron regressor trained with PyTorch, with fast defaults.

    Inputs and targets are standardised (the statistics are stored in the model), the
    network is trained by full-batch Adam with a cosine learning-rate decay on small data and
    by mini-batches of 256 on larger data.

    The defaults (three hidden layers of 32 SiLU units, learning rate 0.01 decayed over 300
    full-batch epochs, early stopping against overfitting only) are chosen to be robust
    rather than tuned to one data set: on the tutorial's sine data every one of five noise
    draws and five seeds scores a test R2 of at least 0.976 (the true curve: about 0.979), in
    about twice the time of ReLU with classic early stopping, and a ``StandardScaler``
    pipeline on scikit-learn's diabetes data cross-validates to R2 0.47. SiLU, being smooth,
    fits smooth targets better than ReLU's kinks; classic early stopping, which keeps the
    epoch of lowest validation loss, picks an early, noisy epoch by chance on small data.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int
        Width of each hidden layer.
    activation : str
        "silu" (default), "relu", "tanh", "logistic", "gelu", "elu", "leaky_relu" or "identity".
    solver : {"adam", "adamw", "sgd", "lbfgs"}
        Optimizer; L-BFGS always trains full batch.
    learning_rate_init : float
        Initial learning rate (``lr`` is an alias; it wins when set).
    batch_size : "auto", int or None
        "auto": full batch up to 2048 training rows, else 256; None: full batch.
    max_epochs : "auto" or int
        "auto": 300 full-batch epochs, or about 4000 mini-batch steps (10 to 300 epochs).
    lr_schedule : {"cosine", "linear", "constant"}
        Per-epoch decay from ``learning_rate_init`` to 1% of it.
    alpha : float
        Weight decay (L2 penalty), as in scikit-learn. L-BFGS has no weight decay of its own:
        there the loss gets ``alpha / 2 * sum(w ** 2)`` over all parameters, the same gradient.
    early_stopping : bool
        Hold out ``validation_fraction`` of the rows (unless validation data is given) and
        stop when its loss has stayed more than 10% above its best for ``n_iter_no_change``
        epochs in a row (overfitting); the best epoch's weights then replace the final ones.
        A validation loss within 10% of its best is taken for noise: training goes on and
        the final weights are kept (``best_epoch_`` is then the last epoch). On by default
        (unlike scikit-learn): without it the defaults overfit small noisy tables such as
        scikit-learn's diabetes data.
    validation_fraction : float
    n_iter_no_change : int
    tol : float
        Smallest decrease of the validation loss that counts as an improvement.
    standardize : bool
        Standardise inputs and targets (stored in the model).
    random_state : int or None
        Seeds the initial weights, the batch order and the validation split.
    device : str
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", ...
    verbose : bool
        Show a progress bar (epoch, loss, validation loss, rate) in a terminal.
    warm_start : bool
        Continue from the fitted weights instead of re-initialising.
    checkpoint_path : str or None
        Write a resumable checkpoint there every ``checkpoint_every`` epochs and at the end.
    checkpoint_every : int
    callbacks : sequence of regtorch.nn.loop.Callback or None
        Your callbacks (loggers, custom stopping, ...): they run after the built-in ones
        (early stopping, checkpoint, progress bar), in memory, streamed (on every rank) and
        in ``partial_fit``. The objects themselves are called (``clone`` copies them).

    Attributes
    ----------
    module_ : regtorch.nn.modules.MLP
    history_ : regtorch.nn.loop.History
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        1-based epoch whose weights the model holds.
    loss_curve_ : list of float
        Training loss per epoch (standardised units), scikit-learn's name.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.linspace(-2, 2, 200).reshape(-1, 1); y = np.sin(2 * X).ravel()
    >>> MLPRegressor(random_state=0).fit(X, y).score(X, y) > 0.95
    True
    """

    module_: Any  # learned attributes, declared for the type checker
    _n_outputs: int
    x_mean_: np.ndarray
    x_scale_: np.ndarray
    y_mean_: np.ndarray
    y_scale_: np.ndarray

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (32, 32, 32),
        activation: str = "silu",
        *,
        solver: str = "adam",
        learning_rate_init: float = 0.01,
        lr: float | None = None,
        batch_size: int | str | None = "auto",
        max_epochs: int | str = "auto",
        lr_schedule: str = "cosine",
        alpha: float = 0.0,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 50,
        tol: float = 1e-4,
        standardize: bool = True,
        random_state: int | None = None,
        device: str = "auto",
        verbose: bool = False,
        warm_start: bool = False,
        checkpoint_path: str | None = None,
        checkpoint_every: int = 10,
        callbacks: Sequence[Callback] | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr_schedule = lr_schedule
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.standardize = standardize
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.callbacks = callbacks

    def _check_params(self) -> None:
        from regtorch.nn.modules import ACTIVATIONS

        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (int(sizes),)
        if not isinstance(sizes, (tuple, list)) or not all(
            isinstance(s, numbers.Integral) and s > 0 for s in sizes
        ):
            raise ValueError(
                "The 'hidden_layer_sizes' parameter must be a tuple of positive ints. Got "
                f"{self.hidden_layer_sizes!r} instead."
            )
        check_param("activation", self.activation, kind=str, options=tuple(ACTIVATIONS))
        check_param("solver", self.solver, kind=str, options=SOLVERS)
        check_param("lr_schedule", self.lr_schedule, kind=str, options=SCHEDULES)
        check_param(
            "learning_rate_init", self.learning_rate_init, kind=numbers.Real, low=0, low_open=True
        )
        if self.lr is not None:
            check_param("lr", self.lr, kind=numbers.Real, low=0, low_open=True)
        if not (self.batch_size is None or self.batch_size == "auto"):
            check_param("batch_size", self.batch_size, kind=numbers.Integral, low=1)
        if self.max_epochs != "auto":
            check_param("max_epochs", self.max_epochs, kind=numbers.Integral, low=1)
        check_param("alpha", self.alpha, kind=numbers.Real, low=0)
        check_param(
            "validation_fraction",
            self.validation_fraction,
            kind=numbers.Real,
            low=0,
            high=1,
            low_open=True,
        )
        if self.validation_fraction >= 1:
            raise ValueError(
                f"The 'validation_fraction' parameter must be < 1. Got {self.validation_fraction!r} instead."
            )
        check_param("n_iter_no_change", self.n_iter_no_change, kind=numbers.Integral, low=1)
        check_param("tol", self.tol, kind=numbers.Real, low=0)
        check_param("checkpoint_every", self.checkpoint_every, kind=numbers.Integral, low=1)
        for flag in ("early_stopping", "standardize", "verbose", "warm_start"):
            check_param(flag, getattr(self, flag), kind=bool, options=(True, False))
        if self.random_state is not None:
            check_param("random_state", self.random_state, kind=numbers.Integral, low=0)
        cbs = self.callbacks
        if cbs is not None and (
            not isinstance(cbs, Sequence)
            or isinstance(cbs, str)
            or not all(isinstance(cb, Callback) for cb in cbs)
        ):
            raise ValueError(
                "The 'callbacks' parameter must be a list of regtorch callbacks (instances of "
                f"regtorch.nn.loop.Callback) or None. Got {cbs!r} instead."
            )

    def _plan(self, n_train: int) -> tuple[int | None, int]:
        """Batch size (None: full batch) and epochs for ``n_train`` rows."""
        bs: int | None
        if self.solver == "lbfgs" or self.batch_size is None:
            bs = None
        elif self.batch_size == "auto":
            bs = None if n_train <= FULL_BATCH_ROWS else AUTO_MINI_BATCH
        else:
            bs = None if int(self.batch_size) >= n_train else int(self.batch_size)
        if self.max_epochs != "auto":
            return bs, int(self.max_epochs)
        if self.solver == "lbfgs":
            return bs, 30
        if bs is None:
            return bs, 300
        steps_per_epoch = -(-n_train // bs)
        return bs, int(np.clip(AUTO_STEPS // steps_per_epoch, 10, 300))

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        sample_weight: Any | None = None,
        X_val: Any | None = None,
        y_val: Any | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        sample_weight_val: Any | None = None,
    ) -> MLPRegressor:
        """Train the network; returns ``self``.

        Parameters
        ----------
        X, y : array-like, DataFrame or tensor
        sample_weight : array-like (n_samples,), optional
            Row weights >= 0 (rows of weight 0 are dropped): each step minimises the
            weighted mean of the rows' losses and the standardisation is weighted (means,
            population standard deviations), so integer weights train as repeated rows
            (exactly for full batches without early stopping: mini-batches and the
            validation hold-out draw rows). Held-out rows keep their weights.
        X_val, y_val : optional
            Explicit validation data (monitored every epoch; used by early stopping).
        sample_weight_val : array-like, optional
            Weights of the explicit validation rows (default: unweighted).
        resume_from : path, optional
            A checkpoint written by a run with the same parameters and data
            (``checkpoint_path``): training continues from it and ends as that run would.
        """
        from regtorch.nn.loop import train

        self._check_params()
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        if resume_from is not None and self.random_state is None:
            raise ValueError(
                "resume_from needs a fixed random_state: the validation split and the batch "
                "order of the checkpointed run must be reproduced."
            )
        Xt, yt, swt, y_1d = validate_fit_input(self, X, y, sample_weight)
        Xn, yn, sw = _weighted_rows(Xt.numpy(), yt.numpy(), swt)
        rng = np.random.default_rng(self.random_state)
        seed = int(self.random_state) if self.random_state is not None else int(rng.integers(2**31))
        val = (X_val, y_val, sample_weight_val)
        Xtr, ytr, Xv, yv, wtr, wv = self._split(Xn, yn, sw, val, seed)
        module, reuse = self._network(Xn.shape[1], ytr.shape[1])
        # kept in locals until training succeeds: a failed refit leaves the model as it was
        scaling = (
            (self.x_mean_, self.x_scale_, self.y_mean_, self.y_scale_)
            if reuse and self.standardize
            else _scaling(Xtr, ytr, bool(self.standardize), wtr)
        )
        x_mean, x_scale, y_mean, y_scale = scaling
        callbacks, stopper = self._callbacks(
            Xv is not None, self.checkpoint_path, int(self.checkpoint_every), self.verbose
        )
        settings = self._train_settings(len(Xtr))
        history = train(
            module,
            _standardized(Xtr, x_mean, x_scale, "X"),
            _standardized(ytr, y_mean, y_scale, "y"),
            X_val=None if Xv is None else _standardized(Xv, x_mean, x_scale, "X"),
            y_val=None if yv is None else _standardized(yv, y_mean, y_scale, "y"),
            **settings,
            seed=seed,
            device=resolve_device(self.device),
            callbacks=callbacks,
            resume_from=resume_from,
            init=not reuse,
            sample_weight=wtr,
            sample_weight_val=wv if wtr is not None else None,
        )
        module64 = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
        # never a silently non-finite model: its predictions on the training rows must be finite
        _forward64(module64, Xn, scaling, "the training rows")
        best = stopper.best_epoch if stopper is not None and stopper.best_epoch else len(history)
        self._set_fitted(module, *scaling, history, best_epoch=best, y_1d=y_1d, module64=module64)
        self._warn_stopped(history, stopper, settings["epochs"])
        return self

    @available_if(_stochastic_solver)
    def partial_fit(self, X: Any, y: Any, *, sample_weight: Any | None = None) -> MLPRegressor:
        """One epoch over ``X, y`` (mini-batches of ``batch_size``, planned as :meth:`fit`
        plans them for that many rows), the optimizer's state kept between calls; returns
        ``self``.

        The first call on an unfitted model builds the network and fixes the
        standardisation from its rows (a model fitted by ``fit`` or loaded keeps its own);
        later calls must have as many features and targets. There is no validation split,
        no early stopping, no checkpoint and no learning-rate decay (the rate stays
        ``learning_rate_init``, or ``lr``); callbacks run as in :meth:`fit`;
        ``history_`` gains one epoch per call. ``n`` calls on the same rows with a fixed
        ``random_state`` train exactly as ``fit`` with ``max_epochs=n``,
        ``lr_schedule="constant"`` and ``early_stopping=False``. Only for the stochastic
        solvers (as in scikit-learn): L-BFGS builds its curvature from one fixed objective.
        ``sample_weight`` weighs the loss as in :meth:`fit`.
        """
        from regtorch.nn.partial import partial_fit_mlp

        return partial_fit_mlp(self, X, y, sample_weight)

    def _split(
        self,
        Xn: np.ndarray,
        yn: np.ndarray,
        sw: np.ndarray | None,
        val: tuple[Any, Any, Any],
        seed: int,
    ) -> tuple[Any, ...]:
        """Training and validation rows and their weights (None: unweighted): the given
        validation data (with its weights, if any), or a seeded hold-out keeping its rows'
        weights."""
        n, (X_val, y_val, w_val) = len(Xn), val
        if w_val is not None and X_val is None:
            raise ValueError("sample_weight_val was given without X_val and y_val.")
        if X_val is not None:
            Xv = validate_predict_input(self, X_val)
            yv = np.asarray(y_val, dtype=np.float64)
            if len(yv) != len(Xv):
                raise ValueError(
                    f"Found input variables with inconsistent numbers of samples: "
                    f"[{len(Xv)}, {len(yv)}] (X_val, y_val)"
                )
            yv = yv.reshape(len(Xv), -1)
            if not np.isfinite(yv).all():
                raise ValueError("Input y_val contains NaN or infinity.")
            if yv.shape[1] != yn.shape[1]:
                raise ValueError(f"y_val has {yv.shape[1]} targets, y has {yn.shape[1]}.")
            if w_val is not None:
                sw_val = torch.as_tensor(check_sample_weight(w_val, Xv))
                w_val = _positive_weights(sw_val, "sample_weight_val")
            return Xn, yn, Xv, yv, sw, w_val
        if self.early_stopping and n >= 2:
            n_val = max(1, int(round(self.validation_fraction * n)))
            n_val = min(n_val, n - 1)
            perm = np.random.default_rng(seed).permutation(n)
            tr, va = perm[n_val:], perm[:n_val]
            w_tr, w_va = (None, None) if sw is None else (sw[tr], sw[va])
            return Xn[tr], yn[tr], Xn[va], yn[va], w_tr, w_va
        return Xn, yn, None, None, sw, None

    def _network(self, p: int, k: int) -> tuple[torch.nn.Module, bool]:
        """A new network for ``p`` inputs and ``k`` outputs, or a copy of the fitted one
        (``warm_start``); and whether it was reused."""
        from regtorch.nn.modules import MLP

        sizes = (
            (int(self.hidden_layer_sizes),)
            if isinstance(self.hidden_layer_sizes, numbers.Integral)
            else tuple(int(h) for h in self.hidden_layer_sizes)
        )
        _check_network_size(p, sizes, k)
        if not (self.warm_start and hasattr(self, "module_")):
            return MLP(p, sizes, k, self.activation), False
        old = self.module_
        arch = (old.net[0].in_features, old.hidden_layer_sizes, old.net[-1].out_features)
        if arch != (p, sizes, k) or old.activation != self.activation:
            raise ValueError(
                f"warm_start=True, but the fitted network ({arch[0]} inputs, hidden "
                f"{arch[1]}, {arch[2]} outputs, {old.activation}) does not match this fit "
                f"({p} inputs, hidden {sizes}, {k} outputs, {self.activation}). "
                "Set warm_start=False to train a new network."
            )
        return copy.deepcopy(old), True

    def _train_settings(self, n_train: int) -> dict[str, Any]:
        """``train()``'s optimisation arguments for ``n_train`` rows (in memory or streamed)."""
        bs, epochs = self._plan(n_train)
        lbfgs = self.solver == "lbfgs"
        return {
            "optimizer": self.solver,
            "lr": float(self.lr if self.lr is not None else self.learning_rate_init),
            "epochs": epochs,
            "batch_size": bs,
            "weight_decay": float(self.alpha),
            "penalty": _l2_penalty(float(self.alpha)) if lbfgs else None,
            "lr_schedule": None if lbfgs else self.lr_schedule,
        }

    def _callbacks(
        self, has_val: bool, checkpoint_path: Any, checkpoint_every: int, progress: bool
    ) -> tuple[list[Callback], _OverfitStopping | None]:
        """Early stopping (with validation rows), checkpoints and the progress bar."""
        from regtorch.nn.callbacks import Checkpoint, ProgressBar

        callbacks: list[Callback] = []
        stopper = None
        if self.early_stopping and has_val:
            stopper = _OverfitStopping(patience=int(self.n_iter_no_change), tol=float(self.tol))
            callbacks.append(stopper)
        if checkpoint_path is not None:
            callbacks.append(Checkpoint(checkpoint_path, every=int(checkpoint_every)))
        if progress:
            callbacks.append(ProgressBar(desc="MLPRegressor"))
        callbacks.extend(self.callbacks or ())  # the user's, after the built-in ones
        return callbacks, stopper

    def _set_fitted(
        self,
        module: torch.nn.Module,
        x_mean: np.ndarray,
        x_scale: np.ndarray,
        y_mean: np.ndarray,
        y_scale: np.ndarray,
        history: History,
        *,
        best_epoch: int,
        y_1d: bool,
        feature_names: Any | None = None,
        module64: torch.nn.Module | None = None,
        partial_state: dict[str, Any] | None = None,
    ) -> None:
        """Write the fitted state (the one place that does): the network, the scaling, the
        history. ``feature_names`` replaces ``feature_names_in_`` when given;
        ``partial_state``: the optimizer and batch order ``partial_fit`` carries on with
        (None after ``fit``: the next ``partial_fit`` starts a fresh optimizer)."""
        self.x_mean_, self.x_scale_ = np.asarray(x_mean), np.asarray(x_scale)
        self.y_mean_, self.y_scale_ = np.asarray(y_mean), np.asarray(y_scale)
        self.n_features_in_ = len(self.x_mean_)
        if feature_names is not None:
            self.feature_names_in_ = np.asarray(feature_names, dtype=object)
        self.module_ = module.eval()
        if module64 is None:
            module64 = copy.deepcopy(module).to(device="cpu", dtype=torch.float64)
        self._module64 = module64.eval()
        self.history_ = history
        self.n_iter_ = len(history)
        self.loss_curve_ = list(history.train_loss)
        self.best_epoch_ = int(best_epoch)
        self._n_outputs = len(self.y_mean_)
        self._y_1d = bool(y_1d)
        self._partial_state = partial_state

    def _warn_stopped(
        self, history: History, stopper: _OverfitStopping | None, epochs: int
    ) -> None:
        if history.interrupted:
            warnings.warn(
                f"Training was interrupted after {len(history)} epochs; the model keeps the "
                f"weights of epoch {self.best_epoch_}.",
                UserWarning,
                stacklevel=3,
            )
        elif (
            stopper is None
            and self.max_epochs != "auto"
            and len(history) == epochs
            and self.verbose
        ):
            warnings.warn(f"Stopped after max_epochs={epochs}.", ConvergenceWarning, stacklevel=3)

    def predict(self, X: Any) -> np.ndarray:
        """Predict targets: float64, shape ``(n_samples,)`` or ``(n_samples, n_targets)``."""
        check_is_fitted(self, "module_")
        Xn = validate_predict_input(self, X)
        scaling = (self.x_mean_, self.x_scale_, self.y_mean_, self.y_scale_)
        out = _forward64(self._module64, Xn, scaling, "X")
        return out.ravel() if self._y_1d else out

    def to_torch(self) -> torch.nn.Module:
        """A plain ``torch.nn.Module`` mapping raw features to predictions, the stored
        standardisation built in (see :func:`regtorch.export.to_torch`)."""
        from regtorch.export import to_torch

        return to_torch(self)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # one network, one output unit per target
        return tags
