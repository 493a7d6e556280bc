"""Ready-made training callbacks: logging, progress bar, early stopping, checkpoints."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from regtorch.nn.loop import Callback, TrainState

__all__ = ["Checkpoint", "EarlyStopping", "LoggingCallback", "ProgressBar"]

logger = logging.getLogger("regtorch")


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


class EarlyStopping(Callback):
    """Stop when the monitored loss has not improved by ``tol`` for ``patience`` epochs.

    The best epoch's weights are restored at the end (also after Ctrl-C). Monitors the
    validation loss when there is validation data, else the training loss.

    Attributes
    ----------
    best_epoch : int
        1-based number of the best epoch.
    best_loss : float
    """

    def __init__(self, patience: int = 10, tol: float = 1e-4, restore_best: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.tol = tol
        self.restore_best = restore_best
        self.best_loss = math.inf
        self.best_epoch = 0
        self.wait = 0
        self._best: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, state: TrainState) -> None:
        if state.epoch == 0 and not state.times:  # a fresh run, not a resumed one
            self.best_loss, self.best_epoch, self.wait, self._best = math.inf, 0, 0, None

    def on_epoch_end(self, state: TrainState) -> None:
        cur = state.val_loss if state.val_loss is not None else state.train_loss
        if cur < self.best_loss - self.tol:
            self.best_loss, self.best_epoch, self.wait = cur, state.epoch + 1, 0
            self._best = {k: v.detach().clone() for k, v in state.module.state_dict().items()}
        else:
            if cur < self.best_loss:  # better, but not by tol: keep its weights, keep waiting
                self.best_loss, self.best_epoch = cur, state.epoch + 1
                self._best = {k: v.detach().clone() for k, v in state.module.state_dict().items()}
            self.wait += 1
            if self.wait >= self.patience:
                state.stop = True

    def on_train_end(self, state: TrainState) -> None:
        if self.restore_best and self._best is not None:
            state.module.load_state_dict(self._best)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best": self._best,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])
        self._best = state["best"]


class Checkpoint(Callback):
    """Write a resumable checkpoint every ``every`` epochs and at the end, atomically.

    Pass the file to ``train(..., resume_from=path)`` (or the estimator's ``resume_from``)
    to continue: the result equals the uninterrupted run's. Under ``torchrun`` rank 0 writes
    it, with every rank's batch-order generator; resume with the same number of processes.
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.path = Path(path)
        self.every = every
        self._saved_epoch = -1

    def on_epoch_end(self, state: TrainState) -> None:
        from regtorch import distributed
        from regtorch.nn.checkpoint import save_checkpoint

        payload = state.payload()  # on every rank: it gathers the ranks' generators
        if distributed.rank() == 0:  # one file holds what every rank needs
            save_checkpoint(self.path, payload)
        self._saved_epoch = state.epoch

    def on_train_stop(self, state: TrainState) -> None:
        # the run as it stopped (early stopping included), before any weights are restored;
        # after Ctrl-C or divergence this is not called: the last clean checkpoint stays
        if self._saved_epoch != state.epoch and state.times:
            self.on_epoch_end(state)
