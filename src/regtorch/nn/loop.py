"""The training loop, its ``History`` and the callback protocol. Knows nothing of scikit-learn.

The hot path keeps losses on the device (no ``.item()`` per step within an epoch); callbacks
that need a number ask for it through ``TrainState``. Ready-made callbacks (logging,
progress bar, early stopping, checkpoints) live in :mod:`regtorch.nn.callbacks`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from regtorch._validation import check_X_y_tensors, resolve_device

__all__ = [
    "Callback",
    "History",
    "TrainState",
    "TrainingDivergedError",
    "init_module",
    "make_loss",
    "make_optimizer",
    "train",
]

logger = logging.getLogger("regtorch")

OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")
LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
}


@dataclass
class History:
    """Per-epoch record of a training run.

    Attributes
    ----------
    train_loss : list of float
        Mean training loss of each epoch (for full batch: the loss before that epoch's step).
    val_loss : list of float
        Validation loss after each epoch's step; empty without validation data.
    time : list of float
        Wall-clock seconds from the start of training to the end of each epoch.
    lr : list of float
        Learning rate used in each epoch.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C

    def __len__(self) -> int:
        return len(self.train_loss)

    @property
    def epochs(self) -> int:
        """Number of epochs recorded."""
        return len(self.train_loss)

    def best_epoch(self) -> int:
        """Index of the epoch with the lowest validation loss (training loss without one)."""
        losses = self.val_loss or self.train_loss
        if not losses:
            raise ValueError("History is empty.")
        finite = [v if math.isfinite(v) else math.inf for v in losses]
        return min(range(len(finite)), key=finite.__getitem__)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, ready for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        lists = {
            k: [float(v) for v in d.get(k, [])] for k in ("train_loss", "val_loss", "time", "lr")
        }
        return cls(**lists, interrupted=bool(d.get("interrupted", False)))


class TrainingDivergedError(ValueError):
    """The loss became NaN or infinite; ``history`` holds the epochs before it."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


@dataclass
class TrainState:
    """What a callback sees: the loop's objects and the record so far."""

    epoch: int  # 0-based index of the epoch that just ended
    epochs: int
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    start_time: float
    callbacks: Sequence[Callback]
    _train_buf: torch.Tensor
    _val_buf: torch.Tensor | None
    times: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    stop: bool = False
    aborted: bool = False  # Ctrl-C or divergence: the loop's objects are mid-epoch

    @property
    def train_loss(self) -> float:
        """Training loss of this epoch (synchronises with the device)."""
        return float(self._train_buf[self.epoch])

    @property
    def val_loss(self) -> float | None:
        """Validation loss of this epoch, or None without validation data."""
        return None if self._val_buf is None else float(self._val_buf[self.epoch])

    @property
    def elapsed(self) -> float:
        """Seconds since training started."""
        return time.perf_counter() - self.start_time

    def history(self, n_epochs: int | None = None) -> History:
        """The History of the first ``n_epochs`` epochs (default: up to this one)."""
        done = self.epoch + 1 if n_epochs is None else n_epochs
        return History(
            train_loss=self._train_buf[:done].tolist(),
            val_loss=[] if self._val_buf is None else self._val_buf[:done].tolist(),
            time=self.times[:done],
            lr=self.lrs[:done],
        )

    def payload(self) -> dict[str, Any]:
        """Everything an exact resume after this epoch needs (see ``regtorch.nn.checkpoint``)."""
        return {
            "epoch": self.epoch + 1,
            "epochs": self.epochs,
            "module": dict(self.module.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history().to_dict(),
            # stateful callbacks only, by class name: a resumed run may add or drop others
            "callbacks": [
                [type(cb).__name__, cb.state_dict()] for cb in self.callbacks if cb.state_dict()
            ],
            "stopped": self.stop,
        }


class Callback:
    """Base class: override the hooks you need. ``every`` limits ``on_epoch_end`` calls."""

    every: int = 1

    def on_train_begin(self, state: TrainState) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after epochs whose 1-based number is a multiple of ``every``, and the last.

        Set ``state.stop = True`` to end training after this epoch.
        """

    def on_train_stop(self, state: TrainState) -> None:
        """Called once when the epochs end normally, before any ``on_train_end`` (which may
        restore other weights): the place to record the run as it stopped."""

    def on_train_end(self, state: TrainState) -> None:
        """Called once after the last epoch (also after Ctrl-C or divergence)."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (tensors and JSON values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def init_module(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer as if built right after ``torch.manual_seed(seed)``.

    The global RNG state is restored afterwards, so callers see no side effect.
    """
    devices = [p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            # the root too when it is a bare layer (e.g. a single nn.Linear)
            if callable(reset) and (m is not module or not any(module.children())):
                reset()
    return module


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


def make_optimizer(
    name: str,
    params: Any,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Build an optimizer by name: ``"adam"``, ``"adamw"``, ``"sgd"`` or ``"lbfgs"``."""
    params = list(params)
    # The fused kernels (CPU and CUDA) take a tiny model's step in far less Python overhead.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lbfgs":
        return torch.optim.LBFGS(
            params,
            lr=lr,
            max_iter=20,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-16,
        )
    raise ValueError(
        f"The 'optimizer' parameter must be one of {OPTIMIZERS}. Got {name!r} instead."
    )


SCHEDULES = ("constant", "cosine", "linear")


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


@contextlib.contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (restored on exit)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _auto_threads(module: nn.Module, batch_rows: int) -> int | None:
    """One thread for tiny steps: thread start-up costs more than it saves there."""
    n_params = sum(p.numel() for p in module.parameters())
    return 1 if batch_rows * max(n_params, 1) < 2_000_000 else None


def _prepare(
    X: torch.Tensor | Any,
    y: torch.Tensor | Any,
    device: torch.device,
    names: tuple[str, str],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    from regtorch._validation import as_float_tensor

    Xt = as_float_tensor(X, name=names[0], dtype=dtype)
    yt = as_float_tensor(y, name=names[1], dtype=dtype)
    Xt, yt = check_X_y_tensors(Xt, yt, x_name=names[0], y_name=names[1])
    return Xt.to(device), yt.to(device)


def train(
    module: nn.Module,
    X: torch.Tensor | Any,
    y: torch.Tensor | Any,
    *,
    X_val: torch.Tensor | Any | None = None,
    y_val: torch.Tensor | Any | None = None,
    optimizer: str = "adam",
    lr: float = 1e-3,
    epochs: int = 100,
    batch_size: int | None = None,
    loss: str | nn.Module = "mse",
    weight_decay: float = 0.0,
    seed: int | None = None,
    device: str | torch.device = "auto",
    lr_schedule: str | None = None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    tol: float | None = None,
    dtype: torch.dtype = torch.float32,
    callbacks: Sequence[Callback] = (),
    num_threads: int | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    init: bool = True,
) -> History:
    """Train ``module`` on ``(X, y)`` and return its :class:`History`.

    Parameters
    ----------
    module : nn.Module
        Maps ``(n_samples, n_features)`` to ``(n_samples, n_targets)``; trained in place.
    X, y : tensor or array-like
        Training data; y may be 1-D (one target) or 2-D.
    X_val, y_val : tensor or array-like, optional
        Validation data, evaluated after every epoch under ``torch.inference_mode()``.
    optimizer : {"adam", "adamw", "sgd", "lbfgs"}
        L-BFGS needs full batch (``batch_size=None``).
    lr : float
        Learning rate.
    epochs : int
        Number of passes over the training data.
    batch_size : int or None
        Mini-batch size; None trains full batch (one step per epoch).
    loss : str or nn.Module
        ``"mse"`` (default), ``"mae"``, ``"huber"``, ``"smooth_l1"`` or a loss module.
    weight_decay : float
        L2 penalty passed to the optimizer.
    seed : int or None
        Fixes the initial weights (as ``torch.manual_seed(seed)`` before building the module
        would) and the batch order, without touching the global RNG. None keeps the module's
        current weights.
    device : str or torch.device
        ``"auto"`` picks CUDA, then MPS, then CPU.
    lr_schedule : {None, "constant", "cosine", "linear"}
        Per-epoch learning-rate decay: cosine or linear from ``lr`` to ``lr / 100``.
    penalty : callable, optional
        ``penalty(module)`` is added to every step's loss (e.g. an L2 term).
    tol : float or None
        Stop when an epoch improves the training loss by less than ``tol`` relative to it.
        None (default) always runs ``epochs`` epochs.
    dtype : torch.dtype
        Dtype of the data and the module during training (float32 by default).
    callbacks : sequence of Callback
        E.g. :class:`LoggingCallback`, :class:`ProgressBar`.
    num_threads : int or None
        Torch intra-op threads during training; None uses one thread for tiny models.
    init : bool
        With a ``seed``, re-initialise the weights (False continues from the current
        weights; the seed then fixes only the batch order).
    resume_from : path, optional
        A checkpoint written by :class:`regtorch.nn.callbacks.Checkpoint` during a run with the
        same arguments: training continues after its epoch and ends exactly as the
        uninterrupted run would (same weights, same History).

    Returns
    -------
    History
        ``interrupted`` is True if Ctrl-C stopped the run; the module then keeps the weights
        of the last completed epoch (or the best ones, with early stopping).

    Raises
    ------
    TrainingDivergedError
        When the training loss becomes NaN or infinite; the module keeps the weights of the
        last epoch with a finite loss.

    Examples
    --------
    >>> from regtorch.nn.modules import LinearModule
    >>> X = torch.linspace(0, 1, 20).reshape(-1, 1); y = 2 * X + 1
    >>> h = train(LinearModule(1), X, y, lr=0.1, epochs=50, seed=0)
    >>> len(h.train_loss)
    50
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if optimizer == "lbfgs" and batch_size is not None:
        raise ValueError("optimizer='lbfgs' needs full-batch training: set batch_size=None.")
    if (X_val is None) != (y_val is None):
        raise ValueError("Pass both X_val and y_val, or neither.")
    dev = resolve_device(device)
    Xt, yt = _prepare(X, y, dev, ("X", "y"), dtype)
    Xv = yv = None
    if X_val is not None:
        Xv, yv = _prepare(X_val, y_val, dev, ("X_val", "y_val"), dtype)
        if Xv.shape[1] != Xt.shape[1] or yv.shape[1] != yt.shape[1]:
            raise ValueError(
                f"Validation data has {Xv.shape[1]} features and {yv.shape[1]} targets, but "
                f"the training data has {Xt.shape[1]} and {yt.shape[1]}."
            )

    if seed is not None and init and resume_from is None:
        init_module(module, int(seed))
    # before the optimizer, whose fused kernels look at the parameters' device
    module.to(device=dev, dtype=dtype)
    loss_fn = make_loss(loss)
    opt = make_optimizer(optimizer, module.parameters(), lr, weight_decay)
    sched = make_scheduler(lr_schedule, opt, int(epochs))
    n = Xt.shape[0]
    bs = n if batch_size is None else min(int(batch_size), n)
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
    if seed is None:
        gen.seed()
    state = TrainState(
        0,
        int(epochs),
        module,
        opt,
        sched,
        gen,
        time.perf_counter(),
        callbacks,
        torch.zeros(int(epochs), dtype=_buf_dtype(dev), device=dev),
        None if Xv is None else torch.zeros(int(epochs), dtype=_buf_dtype(dev), device=dev),
    )
    start = 0 if resume_from is None else _restore(state, resume_from, lr_schedule)
    threads = num_threads if num_threads is not None else _auto_threads(module, bs)
    with _num_threads(threads):
        return _run(state, start, Xt, yt, Xv, yv, loss_fn, bs, penalty, tol, lr)


def _buf_dtype(dev: torch.device) -> torch.dtype:
    """Loss records in float64, except on MPS, which has no float64."""
    return torch.float32 if dev.type == "mps" else torch.float64


def _restore(state: TrainState, path: str | os.PathLike[str], lr_schedule: str | None) -> int:
    """Load a checkpoint into the loop's objects; return the epoch to start from."""
    from regtorch.nn.checkpoint import CheckpointError, load_checkpoint

    ck = load_checkpoint(path)
    try:
        return _restore_from(state, ck, path, lr_schedule)
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, RuntimeError, ValueError, IndexError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this run ({type(exc).__name__}: {exc}); it was "
            "not loaded. Resume with the same model and arguments, or start again."
        ) from exc


def _restore_from(
    state: TrainState, ck: dict[str, Any], path: str | os.PathLike[str], lr_schedule: str | None
) -> int:
    from regtorch.nn.checkpoint import CheckpointError

    if int(ck["epochs"]) != state.epochs:
        raise CheckpointError(
            f"Checkpoint {path} belongs to a run of {ck['epochs']} epochs, not {state.epochs}: "
            "resume with the same arguments."
        )
    done = int(ck["epoch"])
    hist = History.from_dict(ck["history"])
    if not 1 <= done <= state.epochs or len(hist.train_loss) != done or len(hist.lr) != done:
        raise CheckpointError(f"Checkpoint {path} has an inconsistent epoch count; not loaded.")
    if (state._val_buf is None) != (not hist.val_loss):
        raise CheckpointError(
            f"Checkpoint {path} was written {'with' if hist.val_loss else 'without'} "
            "validation data: resume with the same arguments."
        )
    saved = [(str(name), cb_state) for name, cb_state in ck["callbacks"]]
    stateful = [cb for cb in state.callbacks if cb.state_dict()]
    if [type(cb).__name__ for cb in stateful] != [name for name, _ in saved]:
        raise CheckpointError(
            f"Checkpoint {path} was written with callbacks {[n for n, _ in saved]} holding "
            f"state; this run has {[type(cb).__name__ for cb in stateful]}: resume with the "
            "same ones."
        )
    if state.scheduler is not None and ck["scheduler"] is None:
        raise CheckpointError(f"Checkpoint {path} was written without lr_schedule={lr_schedule!r}.")
    state.module.load_state_dict(ck["module"])
    opt_state = ck["optimizer"]
    opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
    state.optimizer.load_state_dict(opt_state)
    if state.scheduler is not None:
        state.scheduler.load_state_dict(ck["scheduler"])
    state.generator.set_state(ck["generator"])
    state._train_buf[:done] = torch.tensor(hist.train_loss, dtype=state._train_buf.dtype)
    if state._val_buf is not None:
        state._val_buf[:done] = torch.tensor(hist.val_loss, dtype=state._val_buf.dtype)
    state.times.extend(hist.time)
    state.lrs.extend(hist.lr)
    state.start_time -= hist.time[-1] if hist.time else 0.0
    for cb, (_, cb_state) in zip(stateful, saved):
        cb.load_state_dict(cb_state)
    state.epoch = done - 1
    state.stop = bool(ck.get("stopped", False))
    return done


def _run(
    state: TrainState,
    start: int,
    X: torch.Tensor,
    y: torch.Tensor,
    Xv: torch.Tensor | None,
    yv: torch.Tensor | None,
    loss_fn: nn.Module,
    bs: int,
    penalty: Callable[[nn.Module], torch.Tensor] | None,
    tol: float | None,
    lr: float,
) -> History:
    module, opt, sched, gen = state.module, state.optimizer, state.scheduler, state.generator
    train_buf, val_buf = state._train_buf, state._val_buf
    epochs = state.epochs
    dev = X.device
    n = X.shape[0]
    full_batch = bs >= n
    is_lbfgs = isinstance(opt, torch.optim.LBFGS)
    params: list[torch.Tensor] = list(module.parameters())
    submodules = list(module.modules())
    good = [p.detach().clone() for p in params]  # the last weights certified finite
    cand = [p.detach().clone() for p in params]  # this epoch's starting weights

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = loss_fn(module(xb), yb)
        return out if penalty is None else out + penalty(module)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = objective(X, y)
        out.backward()
        return out

    n_steps = -(-n // bs)
    step_loss = torch.zeros(n_steps, dtype=torch.float64, device=dev)
    step_rows = torch.full((n_steps,), float(bs), dtype=torch.float64, device=dev)
    step_rows[-1] = n - bs * (n_steps - 1)
    for cb in state.callbacks:
        cb.on_train_begin(state)
    prev_loss = float(train_buf[start - 1]) if start > 0 else math.inf
    done = start
    restore = cand  # the weights of the last completed epoch, for Ctrl-C
    interrupted = False
    try:
        for epoch in range(start, epochs if not state.stop else start):
            _set_mode(submodules, True)
            state.lrs.append(float(opt.param_groups[0]["lr"]))
            if is_lbfgs:
                step_closure = cast(Callable[[], float], closure)  # torch's stub says float
                train_buf[epoch] = cast(torch.Tensor, opt.step(step_closure)).detach()
            elif full_batch:
                train_buf[epoch] = closure().detach()
                opt.step()
            else:
                perm = torch.randperm(n, generator=gen).to(dev)
                for j, i in enumerate(range(0, n, bs)):
                    idx = perm[i : i + bs]  # gather per batch: stays in cache, no full copy
                    opt.zero_grad(set_to_none=True)
                    out = objective(X[idx], y[idx])
                    out.backward()
                    opt.step()
                    step_loss[j] = out.detach()
                # mean over rows: every batch is full except perhaps the last
                train_buf[epoch] = (step_loss @ step_rows) / n
            if sched is not None:
                sched.step()
            cur = float(train_buf[epoch])  # one sync per epoch, for the divergence check
            state.epoch = epoch
            if not math.isfinite(cur):
                _diverged(state, epoch, cur, good, params, lr)
            # a finite loss certifies the weights it was computed from: those at this
            # epoch's start, copied into `cand` at the previous epoch's end
            good, cand = cand, good
            restore = good  # this epoch is not complete yet: its start is the last complete
            if Xv is not None and val_buf is not None and yv is not None:
                _set_mode(submodules, False)
                with torch.inference_mode():
                    val_buf[epoch] = loss_fn(module(Xv), yv)
            state.times.append(state.elapsed)
            torch._foreach_copy_(cand, [p.detach() for p in params])
            done = epoch + 1
            restore = cand
            last = epoch == epochs - 1
            for cb in state.callbacks:
                if last or (epoch + 1) % max(1, cb.every) == 0:
                    cb.on_epoch_end(state)
            if tol is not None:
                if abs(prev_loss - cur) <= tol * max(abs(cur), 1e-300):
                    break
                prev_loss = cur
            if state.stop:
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep the weights of the last completed epoch; callbacks may restore better
        interrupted = True
        state.aborted = True
        with torch.no_grad():
            torch._foreach_copy_(params, restore)  # the weights after the last complete epoch
            if not _all_finite(params):
                torch._foreach_copy_(params, good)
        state.epoch = max(done - 1, 0)
        del state.lrs[done:]
    if not interrupted and done > start and not _all_finite(params):
        _diverged(state, done - 1, math.nan, good, params, lr)
    module.eval()
    if not interrupted:
        for cb in state.callbacks:
            cb.on_train_stop(state)
    for cb in state.callbacks:
        cb.on_train_end(state)
    if not _all_finite(params):  # a callback restored weights that were never certified
        with torch.no_grad():
            torch._foreach_copy_(params, good)
    history = state.history(done)
    history.interrupted = interrupted
    return history


def _all_finite(params: list[torch.Tensor]) -> bool:
    return bool(torch.stack(torch._foreach_norm(params)).isfinite().all()) if params else True


def _set_mode(modules: list[nn.Module], training: bool) -> None:
    """``module.train(training)`` without its per-call overhead (a hot-path cost for tiny
    models): the flag is set directly on every submodule."""
    for m in modules:
        m.__dict__["training"] = training


def _diverged(
    state: TrainState,
    epoch: int,
    loss: float,
    good: list[torch.Tensor],
    params: list[torch.Tensor],
    lr: float,
) -> None:
    """Restore the last finite weights, close the callbacks, raise a clear error."""
    state.module.eval()
    state.aborted = True
    state.epoch = max(epoch - 1, 0)
    for cb in state.callbacks:
        cb.on_train_end(state)
    with torch.no_grad():  # after the callbacks, which may restore uncertified weights
        torch._foreach_copy_(params, good)
    raise TrainingDivergedError(
        f"Training diverged at epoch {epoch + 1}: the loss became {loss}. Lower the learning "
        f"rate (it was {lr:g}) or standardise the inputs and targets; the model keeps the "
        "last weights that gave a finite loss.",
        state.history(epoch),
    )
