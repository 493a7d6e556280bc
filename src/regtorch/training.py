"""The training loop, its ``History`` and callbacks. Knows nothing of scikit-learn.

The hot path keeps losses on the device (no ``.item()`` per step); callbacks that need a
number ask for it through ``TrainState`` only on the epochs they run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
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
    "LoggingCallback",
    "ProgressBar",
    "TrainState",
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

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists, ready for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: [float(v) for v in d.get(k, [])] for k in cls.__dataclass_fields__})


@dataclass
class TrainState:
    """What a callback sees at the end of an epoch."""

    epoch: int  # 0-based index of the epoch that just ended
    epochs: int
    module: nn.Module
    optimizer: torch.optim.Optimizer
    start_time: float
    _train_buf: torch.Tensor
    _val_buf: torch.Tensor | None
    stop: bool = False

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


class Callback:
    """Base class: override the hooks you need. ``every`` limits ``on_epoch_end`` calls."""

    every: int = 1

    def on_train_begin(self, state: TrainState) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after epochs whose 1-based number is a multiple of ``every``, and the last.

        Set ``state.stop = True`` to end training after this epoch.
        """

    def on_train_end(self, state: TrainState) -> None:
        """Called once after the last epoch."""


class LoggingCallback(Callback):
    """Log (or hand to ``sink``) the losses every ``every`` epochs."""

    def __init__(self, every: int = 100, sink: Callable[[str], None] | None = None) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.sink = sink
        self.lines: list[str] = []

    def on_epoch_end(self, state: TrainState) -> None:
        line = f"epoch {state.epoch + 1}/{state.epochs} train_loss {state.train_loss:.6g}"
        if state.val_loss is not None:
            line += f" val_loss {state.val_loss:.6g}"
        self.lines.append(line)
        if self.sink is not None:
            self.sink(line)
        else:
            logger.info(line)


class ProgressBar(Callback):
    """A tqdm progress bar (epoch, loss, validation loss, rate), shown only in a terminal.

    Parameters
    ----------
    every : int or None
        Update every this many epochs; None picks about 200 updates per run.
    force : bool
        Show the bar even when stderr is not a terminal.
    desc : str
        Label shown before the bar.
    """

    def __init__(self, every: int | None = None, force: bool = False, desc: str = "train") -> None:
        self._every = every
        self.force = force
        self.desc = desc
        self._bar: Any = None
        self._shown = 0

    def on_train_begin(self, state: TrainState) -> None:
        self.every = self._every or max(1, state.epochs // 200)
        self._shown = 0
        if not (self.force or sys.stderr.isatty()):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=state.epochs, desc=self.desc, unit="epoch", leave=False)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._bar is None:
            return
        self._bar.update(state.epoch + 1 - self._shown)
        self._shown = state.epoch + 1
        post = {"loss": f"{state.train_loss:.4g}"}
        if state.val_loss is not None:
            post["val"] = f"{state.val_loss:.4g}"
        self._bar.set_postfix(post, refresh=False)

    def on_train_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def init_module(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every layer as if built right after ``torch.manual_seed(seed)``.

    The global RNG state is restored afterwards, so callers see no side effect.
    """
    devices = [p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and m is not module:
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

    Returns
    -------
    History

    Examples
    --------
    >>> from regtorch.modules import LinearModule
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

    if seed is not None:
        init_module(module, int(seed))
    module.to(
        device=dev, dtype=dtype
    )  # before the optimizer, whose fused kernels look at the parameters' device
    loss_fn = make_loss(loss)
    opt = make_optimizer(optimizer, module.parameters(), lr, weight_decay)
    sched = make_scheduler(lr_schedule, opt, int(epochs))
    n = Xt.shape[0]
    bs = n if batch_size is None else min(int(batch_size), n)
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
    if seed is None:
        gen.seed()
    threads = num_threads if num_threads is not None else _auto_threads(module, bs)
    with _num_threads(threads):
        return _run(
            module,
            Xt,
            yt,
            Xv,
            yv,
            loss_fn,
            opt,
            sched,
            int(epochs),
            bs,
            gen,
            callbacks,
            penalty,
            tol,
        )


def _run(
    module: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    Xv: torch.Tensor | None,
    yv: torch.Tensor | None,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None,
    epochs: int,
    bs: int,
    gen: torch.Generator,
    callbacks: Sequence[Callback],
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    tol: float | None = None,
) -> History:
    dev = X.device
    n = X.shape[0]
    train_buf = torch.zeros(epochs, dtype=torch.float64, device=dev)
    val_buf = None if Xv is None else torch.zeros(epochs, dtype=torch.float64, device=dev)
    times: list[float] = []
    lrs: list[float] = []
    start = time.perf_counter()
    state = TrainState(0, epochs, module, opt, start, train_buf, val_buf)
    for cb in callbacks:
        cb.on_train_begin(state)
    full_batch = bs >= n
    is_lbfgs = isinstance(opt, torch.optim.LBFGS)

    def objective(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = loss_fn(module(xb), yb)
        return out if penalty is None else out + penalty(module)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = objective(X, y)
        out.backward()
        return out

    prev_loss = math.inf

    done = 0
    for epoch in range(epochs):
        module.train()
        lrs.append(float(opt.param_groups[0]["lr"]))
        if is_lbfgs:
            step_closure = cast(Callable[[], float], closure)  # torch's stub says float
            train_buf[epoch] = cast(torch.Tensor, opt.step(step_closure)).detach()
        elif full_batch:
            train_buf[epoch] = closure().detach()
            opt.step()
        else:
            perm = torch.randperm(n, generator=gen).to(dev)
            Xp, yp = X[perm], y[perm]
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for i in range(0, n, bs):
                xb, yb = Xp[i : i + bs], yp[i : i + bs]
                opt.zero_grad(set_to_none=True)
                out = objective(xb, yb)
                out.backward()
                opt.step()
                total += out.detach() * xb.shape[0]
            train_buf[epoch] = total / n
        if sched is not None:
            sched.step()
        if Xv is not None and val_buf is not None and yv is not None:
            module.eval()
            with torch.inference_mode():
                v = loss_fn(module(Xv), yv)
            val_buf[epoch] = v
        times.append(time.perf_counter() - start)
        done = epoch + 1
        state.epoch = epoch
        last = epoch == epochs - 1
        for cb in callbacks:
            if last or (epoch + 1) % max(1, cb.every) == 0:
                cb.on_epoch_end(state)
        if tol is not None:
            cur = float(train_buf[epoch])
            if abs(prev_loss - cur) <= tol * max(abs(cur), 1e-300):
                break
            prev_loss = cur
        if state.stop:
            break
    module.eval()
    for cb in callbacks:
        cb.on_train_end(state)
    history = History(
        train_loss=train_buf[:done].tolist(),
        val_loss=[] if val_buf is None else val_buf[:done].tolist(),
        time=times,
        lr=lrs,
    )
    return history
