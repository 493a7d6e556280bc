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
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from regtorch import distributed
from regtorch._threads import torch_threads
from regtorch.nn.batches import WeightedLoss
from regtorch.nn.history import History
from regtorch.nn.optim import (  # noqa: F401
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    make_loss,
    make_optimizer,
    make_scheduler,
)

__all__ = [
    "Callback",
    "History",
    "TrainState",
    "TrainingDivergedError",
    "WeightedLoss",
    "init_module",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "train",
]

logger = logging.getLogger("regtorch")


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
    batches: Any = None  # the batch provider (regtorch.nn.batches)

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
        """Everything an exact resume after this epoch needs (see ``regtorch.nn.checkpoint``).

        Under ``torchrun`` every rank must call it (it gathers the ranks' generators); rank 0
        writes the result.
        """
        return {
            "epoch": self.epoch + 1,
            "epochs": self.epochs,
            "module": dict(self.module.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            # every rank's batch-order generator (a collective: all ranks call payload())
            "generators": torch.stack(distributed.all_gather(self.generator.get_state())),
            "batches": {} if self.batches is None else self.batches.state_dict(),
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

    def close(self) -> None:
        """Release the files and locks the callback holds: called when training ends,
        however it ends (after ``on_train_end``, and also when an error stops it)."""

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


def _auto_threads(module: nn.Module, batch_rows: int) -> int | None:
    """One thread for tiny steps: thread start-up costs more than it saves there."""
    n_params = sum(p.numel() for p in module.parameters())
    return 1 if batch_rows * max(n_params, 1) < 2_000_000 else None


def train(
    module: nn.Module,
    X: torch.Tensor | Any | None = None,
    y: torch.Tensor | Any | None = None,
    *,
    X_val: torch.Tensor | Any | None = None,
    y_val: torch.Tensor | Any | None = None,
    batches: Any | None = None,
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
    sample_weight: torch.Tensor | Any | None = None,
    sample_weight_val: torch.Tensor | Any | None = None,
) -> History:
    """Train ``module`` on ``(X, y)`` or on a batch provider; return its :class:`History`.

    ``module`` maps ``(n_samples, n_features)`` to ``(n_samples, n_targets)`` and is trained
    in place. ``X, y`` (y 1-D or 2-D), optional ``X_val, y_val`` (evaluated after every
    epoch) and row weights ``sample_weight, sample_weight_val`` (:class:`WeightedLoss`) go
    on ``device`` ("auto": CUDA, MPS, CPU) as ``dtype``; or ``batches`` (e.g. a table
    streamed under ``torchrun``, the module then in DistributedDataParallel) brings its own.
    ``optimizer`` is "adam", "adamw", "sgd" or "lbfgs" (full batch only); ``batch_size=None``
    trains full batch; ``loss`` is "mse", "mae", "huber", "smooth_l1" or a module;
    ``lr_schedule`` ("cosine", "linear") decays ``lr`` to ``lr / 100`` over the epochs;
    ``penalty(module)`` is added to every step's loss; ``tol`` stops when an epoch improves
    the training loss by less than that fraction. ``seed`` fixes the initial weights (as
    ``torch.manual_seed`` before building the module would; ``init=False`` keeps them) and
    the batch order, without touching the global RNG. ``callbacks``: see
    :mod:`regtorch.nn.callbacks`. ``num_threads``: torch's threads (None: one for tiny
    models). ``resume_from``: a :class:`~regtorch.nn.callbacks.Checkpoint` file of a run with
    the same arguments and processes; the run then ends exactly as the uninterrupted one.

    Returns
    -------
    History
        ``interrupted`` is True if Ctrl-C or SIGTERM stopped the run; the module then keeps
        the weights of the last completed epoch (or the best ones, with early stopping).

    Raises
    ------
    TrainingDivergedError
        When the training loss becomes NaN or infinite (the last finite weights are kept).

    Examples
    --------
    >>> from regtorch.nn.modules import LinearModule
    >>> X = torch.linspace(0, 1, 20).reshape(-1, 1); y = 2 * X + 1
    >>> len(train(LinearModule(1), X, y, lr=0.1, epochs=50, seed=0).train_loss)
    50
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    data = (X, y, X_val, y_val, sample_weight, sample_weight_val)
    batches = _provider(batches, data, batch_size, optimizer, device, dtype)
    if seed is not None and init and resume_from is None:
        init_module(module, int(seed))
    state = _state(module, batches, optimizer, lr, weight_decay, epochs, lr_schedule, seed, dtype)
    state.callbacks = callbacks
    start = 0
    if resume_from is not None:
        from regtorch.nn.checkpoint import restore

        start = restore(state, resume_from, lr_schedule)
    loop = _Loop(state, make_loss(loss), penalty, lr)
    threads = num_threads if num_threads is not None else _auto_threads(module, batches.batch_size)
    return _run_closing(loop, threads, start, tol)


def _run_closing(loop: _Loop, threads: int | None, start: int, tol: float | None) -> History:
    """Run the loop with ``threads`` torch threads; close the callbacks it began however
    it ends."""
    try:
        with torch_threads(threads), _sigterm_as_interrupt():
            return loop.run(start, tol)
    finally:
        _close_all(loop.begun)


def _close_all(callbacks: Sequence[Callback]) -> None:
    """``close()`` every callback, even when one of them raises (the first error is raised
    after all are closed): none keeps a file or lock after training."""
    error: Exception | None = None
    for cb in callbacks:
        if isinstance(cb, Callback):
            try:
                cb.close()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
    if error is not None:
        raise error


def _provider(
    batches: Any,
    data: tuple[Any, ...],
    batch_size: int | None,
    optimizer: str,
    device: str | torch.device,
    dtype: torch.dtype,
) -> Any:
    """The given batch provider, or the in-memory data's (checked, weighted if given)."""
    X, y, X_val, y_val, w, w_val = data
    if batches is None:
        from regtorch.nn.batches import tensor_batches

        batches = tensor_batches(X, y, X_val, y_val, batch_size, optimizer, device, dtype)
        if w is not None or w_val is not None:
            batches.set_weights(w, w_val)
    elif any(v is not None for v in data):
        raise ValueError(
            "Pass either X and y (and X_val, y_val, sample weights) or batches, not both."
        )
    elif optimizer == "lbfgs" and not batches.full_batch:
        raise ValueError(
            "optimizer='lbfgs' needs full batches; streamed training uses adam, adamw or sgd."
        )
    return batches


def _state(
    module: nn.Module,
    batches: Any,
    optimizer: str,
    lr: float,
    weight_decay: float,
    epochs: int,
    lr_schedule: str | None,
    seed: int | None,
    dtype: torch.dtype,
) -> TrainState:
    """The loop's objects: the module on the batches' device, optimizer, schedule, records."""
    dev = batches.device
    # before the optimizer, whose fused kernels look at the parameters' device
    module.to(device=dev, dtype=dtype)
    opt = make_optimizer(optimizer, module.parameters(), lr, weight_decay)
    state = TrainState(
        0,
        int(epochs),
        module,
        opt,
        make_scheduler(lr_schedule, opt, int(epochs)),
        _generator(seed, batches.world),
        time.perf_counter(),
        (),
        torch.zeros(int(epochs), dtype=_buf_dtype(dev), device=dev),
        torch.zeros(int(epochs), dtype=_buf_dtype(dev), device=dev)
        if batches.has_validation
        else None,
        batches=batches,
    )
    return state


def _generator(seed: int | None, world: int) -> torch.Generator:
    """The batch-order generator; under ``torchrun`` each rank's derives from the seed."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    elif world > 1:
        gen.manual_seed(int(seed) * 1000 + distributed.rank())
    else:
        gen.manual_seed(int(seed))
    return gen


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (sent by ``torchrun`` to the surviving ranks, or by a scheduler) stops the run
    as Ctrl-C does: the last checkpoint stays intact."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _buf_dtype(dev: torch.device) -> torch.dtype:
    """Loss records in float64, except on MPS, which has no float64."""
    return torch.float32 if dev.type == "mps" else torch.float64


class _Loop:
    """One training run: epochs of steps over the provider's batches, and the callbacks."""

    def __init__(
        self,
        state: TrainState,
        loss_fn: nn.Module,
        penalty: Callable[[nn.Module], torch.Tensor] | None,
        lr: float,
    ) -> None:
        self.state, self.loss_fn, self.penalty, self.lr = state, loss_fn, penalty, lr
        # callbacks this run began (closed when it ends): not one that refused to begin
        # because another fit is using it, whose files are that fit's to close
        self.begun: list[Callback] = []
        self.batches = state.batches
        self.module = state.module
        self.model: nn.Module = self.module
        if self.batches.world > 1 and distributed.is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            dev = self.batches.device
            ids = [dev.index] if dev.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        self.params: list[torch.Tensor] = list(self.module.parameters())
        self.submodules = list(self.module.modules())
        self.good = [p.detach().clone() for p in self.params]  # the last weights certified finite
        self.cand = [p.detach().clone() for p in self.params]  # this epoch's starting weights
        self.is_lbfgs = isinstance(state.optimizer, torch.optim.LBFGS)
        self.done = 0
        self.weighted = bool(getattr(self.batches, "weighted", False))
        # the validation loss: weighted where the provider holds validation weights
        self.val_loss_fn: Any = WeightedLoss(loss_fn) if self.weighted else loss_fn

    def objective(
        self, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None = None
    ) -> torch.Tensor:
        if wb is None:
            out = self.loss_fn(self.model(xb), yb)
        else:
            out = self.val_loss_fn(self.model(xb), yb, wb)
        return out if self.penalty is None else out + self.penalty(self.module)

    def closure(self) -> torch.Tensor:
        self.state.optimizer.zero_grad(set_to_none=True)
        out = self.objective(*self.batches.full())
        out.backward()
        return out

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """One epoch's steps; its mean training loss, on the device (no sync per step)."""
        opt, batches = self.state.optimizer, self.batches
        if self.is_lbfgs:
            step_closure = cast(Callable[[], float], self.closure)  # torch's stub says float
            return cast(torch.Tensor, opt.step(step_closure)).detach()
        if batches.full_batch:
            out = self.closure().detach()
            opt.step()
            return out
        if self.weighted:
            return self.weighted_epoch(epoch)
        buf = self.state._train_buf
        total = torch.zeros((), dtype=buf.dtype, device=buf.device)
        count = 0
        for xb, yb in batches.epoch(self.state.generator, epoch):
            opt.zero_grad(set_to_none=True)
            out = self.objective(xb, yb)
            out.backward()
            opt.step()
            rows = xb.shape[0]
            total.add_(out.detach(), alpha=rows)
            count += rows
        return batches.epoch_loss(total, max(count, 1))

    def weighted_epoch(self, epoch: int) -> torch.Tensor:
        """A weighted epoch's steps (kept apart from the unweighted hot path); its weighted
        mean training loss."""
        opt, buf = self.state.optimizer, self.state._train_buf
        total = torch.zeros((), dtype=buf.dtype, device=buf.device)
        weight = torch.zeros((), dtype=buf.dtype, device=buf.device)
        for xb, yb, wb in self.batches.epoch(self.state.generator, epoch):
            opt.zero_grad(set_to_none=True)
            out = self.objective(xb, yb, wb)
            out.backward()
            opt.step()
            w_sum = wb.sum().to(buf.dtype)
            total.add_(out.detach().to(buf.dtype) * w_sum)
            weight.add_(w_sum)
        return self.batches.epoch_loss(total, weight.clamp_min(torch.finfo(buf.dtype).tiny))

    def end_epoch(self, epoch: int) -> float:
        """Record the epoch (loss, validation, time, weights), check for divergence, call
        the callbacks; return the training loss."""
        state = self.state
        cur = float(state._train_buf[epoch])  # one sync per epoch, for the divergence check
        state.epoch = epoch
        if not math.isfinite(cur):
            _diverged(state, epoch, cur, self.good, self.params, self.lr)
        # a finite loss certifies the weights it was computed from: those at this epoch's
        # start, copied into `cand` at the previous epoch's end
        self.good, self.cand = self.cand, self.good
        self.restore = self.good  # this epoch is not complete yet: its start is the last one
        if state._val_buf is not None:
            _set_mode(self.submodules, False)
            with torch.inference_mode():
                val = self.batches.validation_loss(self.module, self.val_loss_fn)
            state._val_buf[epoch] = val
        state.times.append(state.elapsed)
        torch._foreach_copy_(self.cand, [p.detach() for p in self.params])
        self.done = epoch + 1
        self.restore = self.cand
        last = epoch == state.epochs - 1
        for cb in state.callbacks:
            if last or (epoch + 1) % max(1, cb.every) == 0:
                cb.on_epoch_end(state)
        return cur

    def epochs(self, start: int, tol: float | None) -> None:
        state = self.state
        prev_loss = float(state._train_buf[start - 1]) if start > 0 else math.inf
        for epoch in range(start, state.epochs if not state.stop else start):
            _set_mode(self.submodules, True)
            state.lrs.append(float(state.optimizer.param_groups[0]["lr"]))
            state._train_buf[epoch] = self.train_epoch(epoch)
            if state.scheduler is not None:
                state.scheduler.step()
            cur = self.end_epoch(epoch)
            if tol is not None:
                if abs(prev_loss - cur) <= tol * max(abs(cur), 1e-300):
                    break
                prev_loss = cur
            if state.stop:
                break

    def run(self, start: int, tol: float | None) -> History:
        state, params = self.state, self.params
        from regtorch._lock import CallbackInUseError

        for cb in state.callbacks:
            try:
                cb.on_train_begin(state)
            except CallbackInUseError:
                raise
            except BaseException:
                self.begun.append(cb)  # it may hold what it took before failing
                raise
            self.begun.append(cb)
        self.done = start
        self.restore = self.cand  # the weights of the last completed epoch, for Ctrl-C
        interrupted = False
        try:
            self.epochs(start, tol)
        except KeyboardInterrupt:
            # Ctrl-C: keep the weights of the last completed epoch; callbacks may restore better
            interrupted = True
            state.aborted = True
            with torch.no_grad():
                torch._foreach_copy_(params, self.restore)
                if not _all_finite(params):
                    torch._foreach_copy_(params, self.good)
            state.epoch = max(self.done - 1, 0)
            del state.lrs[self.done :]
        if not interrupted and self.done > start and not _all_finite(params):
            _diverged(state, self.done - 1, math.nan, self.good, params, self.lr)
        self.module.eval()
        if not interrupted:
            for cb in state.callbacks:
                cb.on_train_stop(state)
        for cb in state.callbacks:
            cb.on_train_end(state)
        if not _all_finite(params):  # a callback restored weights that were never certified
            with torch.no_grad():
                torch._foreach_copy_(params, self.good)
        history = state.history(self.done)
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
