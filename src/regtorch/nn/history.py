"""``History``: the per-epoch record of a training run (losses, learning rates, times)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["History"]


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

    def to_frame(self) -> Any:
        """A pandas DataFrame: index ``epoch`` (1-based), columns ``train_loss``,
        ``val_loss`` (only with validation data), ``lr`` and ``time`` (seconds)."""
        import pandas as pd

        cols = {"train_loss": self.train_loss}
        if self.val_loss:
            cols["val_loss"] = self.val_loss
        cols |= {"lr": self.lr, "time": self.time}
        index = pd.RangeIndex(1, len(self) + 1, name="epoch")
        return pd.DataFrame({k: pd.array(v, dtype="float64") for k, v in cols.items()}, index)

    def plot(self, ax: Any = None, log: bool = True) -> Any:
        """Draw the training (and validation) loss per epoch, the best epoch marked, on
        ``ax`` (default: a new figure's); a log scale when ``log`` and the losses are
        positive. Returns the matplotlib Axes."""
        if ax is None:
            import matplotlib.pyplot as plt

            ax = plt.subplots(figsize=(6.4, 4.0))[1]
        epochs = range(1, len(self) + 1)
        ax.plot(epochs, self.train_loss, label="train")
        if self.val_loss:
            ax.plot(epochs, self.val_loss, label="validation")
        if self.train_loss:
            best = self.best_epoch()
            loss = (self.val_loss or self.train_loss)[best]
            ax.plot([best + 1], [loss], "o", color="black", label=f"best epoch {best + 1}")
        if log and min(self.train_loss + self.val_loss, default=0) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        return ax

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        lists = {
            k: [float(v) for v in d.get(k, [])] for k in ("train_loss", "val_loss", "time", "lr")
        }
        return cls(**lists, interrupted=bool(d.get("interrupted", False)))
