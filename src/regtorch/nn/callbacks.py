"""Ready-made training callbacks: logging, progress bar, early stopping, checkpoints."""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from regtorch.nn.loop import Callback, TrainState

__all__ = [
    "CSVLogger",
    "Checkpoint",
    "EarlyStopping",
    "LoggingCallback",
    "ProgressBar",
    "TensorBoardLogger",
]

logger = logging.getLogger("regtorch")

TENSORBOARD_HINT = 'pip install "regtorch[tensorboard]"'


class LoggingCallback(Callback):
    """Log (or hand to ``sink``) the losses every ``every`` epochs.

    Lines go to ``sink`` when given, else to the ``"regtorch"`` logger when logging is
    configured (a handler on it or on the root logger: your levels and formats apply), else
    straight to stderr, so that the lines show without any logging set-up.

    Examples
    --------
    >>> from regtorch.nn.modules import LinearModule
    >>> from regtorch.nn.loop import train
    >>> X = torch.linspace(0, 1, 20).reshape(-1, 1)
    >>> run = dict(lr=0.1, epochs=10, seed=0, callbacks=[LoggingCallback(every=5, sink=print)])
    >>> _ = train(LinearModule(1), X, 2 * X, **run)  # doctest: +ELLIPSIS
    epoch 5/10 train_loss ...
    epoch 10/10 train_loss ...
    """

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
        elif _rank() != 0:  # under torchrun, rank 0 speaks for all
            return
        elif logger.hasHandlers():  # the user's logging set-up decides (levels, format)
            logger.info(line)
        else:  # unconfigured: logging's last resort would drop INFO lines
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


class ProgressBar(Callback):
    """Training progress: a tqdm bar in a terminal or a notebook, plain lines in a log file.

    In a terminal (stderr is a tty) or a Jupyter kernel, a ``tqdm.auto`` bar shows the
    epoch, loss, validation loss and rate. Otherwise (stderr redirected to a file or a
    pipe) one line such as ``MLPRegressor epoch 40/300 loss 0.0123 val 0.015 1.2s`` is
    written to stderr every ``every`` epochs and after the last one. Under ``torchrun``
    only rank 0 shows progress.

    Parameters
    ----------
    every : int or None
        Epochs between updates. None: about 200 bar updates per run, and a line every
        ``ceil(epochs / 20)`` epochs (about 20 lines per run, every epoch up to 20 epochs).
    force : bool
        Show the bar even when stderr is neither a terminal nor a notebook.
    desc : str
        Label shown before the bar and at the start of each line.
    """

    def __init__(self, every: int | None = None, force: bool = False, desc: str = "train") -> None:
        self._every = every
        self.force = force
        self.desc = desc
        self._bar: Any = None
        self._shown = 0
        self._lines = False

    def on_train_begin(self, state: TrainState) -> None:
        from regtorch import distributed

        self._shown, self._bar, self._lines = len(state.times), None, False
        self.every = self._every or max(1, state.epochs // 200)
        if distributed.rank() != 0:
            self.every = state.epochs  # the last epoch only, where nothing is shown
            return
        if not (self.force or sys.stderr.isatty() or _in_notebook()):
            self._lines = True
            self.every = self._every or max(1, math.ceil(state.epochs / 20))
            return
        from tqdm.auto import tqdm

        # the loop calls back every `every` epochs (at most ~200 times a run): each call
        # shows, however fast the epochs (tqdm's default 0.1 s between refreshes hid a
        # whole fast run)
        self._bar = tqdm(
            total=state.epochs,
            initial=self._shown,
            desc=self.desc,
            unit="epoch",
            leave=False,
            mininterval=0,
        )

    def on_epoch_end(self, state: TrainState) -> None:
        if self._lines:
            self._line(state)
        if self._bar is None:
            return
        post = {"loss": f"{state.train_loss:.4g}"}
        if state.val_loss is not None:
            post["val"] = f"{state.val_loss:.4g}"
        self._bar.set_postfix(post, refresh=False)  # shown by the update's refresh
        self._bar.update(state.epoch + 1 - self._shown)
        self._shown = state.epoch + 1

    def on_train_stop(self, state: TrainState) -> None:
        # a run ended early (early stopping, tol) between two lines: say where it stopped
        if self._lines and self._shown != state.epoch + 1 and len(state.times) > self._shown:
            self._line(state)

    def on_train_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar (also when an error stops training)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, state: TrainState) -> None:
        line = f"{self.desc} epoch {state.epoch + 1}/{state.epochs} loss {state.train_loss:.4g}"
        if state.val_loss is not None:
            line += f" val {state.val_loss:.4g}"
        seconds = state.times[state.epoch] if len(state.times) > state.epoch else state.elapsed
        sys.stderr.write(f"{line} {seconds:.1f}s\n")
        sys.stderr.flush()
        self._shown = state.epoch + 1


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (whose stderr is no tty, but shows widgets)."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    return callable(get) and get() is not None


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
    The file is locked while training runs: a second run (or fit) writing the same file
    fails when it begins, naming the first, rather than interleaving its checkpoints.
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.path = Path(path)
        self.every = every
        self._saved_epoch = -1
        self._lock: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        from regtorch._lock import PathLock

        _refuse_if_in_use(self, self._lock is not None)
        if _rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # as the first save would
            lock = PathLock(self.path, "Checkpoint")
            lock.acquire()
            self._lock = lock

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

    def close(self) -> None:
        """Release the file's lock (at the end of training, however it ends)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    def __deepcopy__(self, memo: dict[int, Any]) -> Checkpoint:
        # a copy (sklearn's clone) gets the settings, never the lock
        return _copy_settings(self, memo, ("_lock",))


def _refuse_if_in_use(cb: Checkpoint | CSVLogger, in_use: bool) -> None:
    """One callback object in two fits at once would write one file from both: refused.
    (``train`` closes its callbacks however it ends, so a held file means a running fit.)"""
    if in_use:
        from regtorch._lock import CallbackInUseError

        raise CallbackInUseError(
            f"{type(cb).__name__} {cb.path} is being written by another fit in this process "
            "(this callback object is in use); give each fit its own callback and file."
        )


def _copy_settings(cb: Any, memo: dict[int, Any], handles: tuple[str, ...]) -> Any:
    """A deep copy of ``cb`` whose open ``handles`` (files, locks) are None: a copy (sklearn's
    clone) gets the settings, subclasses' included, never what the original holds."""
    new = copy.copy(cb)
    memo[id(cb)] = new
    for key, value in vars(cb).items():
        setattr(new, key, None if key in handles else copy.deepcopy(value, memo))
    return new


def _rank() -> int:
    from regtorch import distributed

    return distributed.rank()


def check_log_file(path: str | os.PathLike[str], what: str = "CSVLogger") -> Path:
    """``path`` as a file to write: refuse a folder or a missing parent folder (ValueError)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{what} {out}: is a folder; give a file name, e.g. {out / 'log.csv'}")
    if not out.parent.is_dir():
        raise ValueError(f"{what} {out}: the folder {out.parent} does not exist.")
    return out


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch, train_loss, val_loss, lr, seconds``.

    ``epoch`` is 1-based, ``val_loss`` is empty without validation data and ``seconds``
    counts from the start of training. Each row is flushed when written, so a killed run
    keeps its rows. The file is opened when training begins: ``append=False`` starts it
    afresh, ``append=True`` adds to an existing file (with the same columns). A run resumed
    from a checkpoint continues the file: rows after the checkpoint's epoch (those of the
    interrupted run) are dropped and the checkpoint's epochs are written when missing, so
    every epoch appears once. Under ``torchrun`` rank 0 writes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from regtorch.nn.modules import LinearModule
    >>> from regtorch.nn.loop import train
    >>> X = torch.linspace(0, 1, 20).reshape(-1, 1)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
    >>> _ = train(LinearModule(1), X, 2 * X, epochs=3, seed=0, callbacks=[CSVLogger(path)])
    >>> path.read_text().splitlines()[0]
    'epoch,train_loss,val_loss,lr,seconds'
    """

    COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "seconds")

    def __init__(self, path: str | os.PathLike[str], append: bool = False) -> None:
        self.path = path
        self.append = append
        self._file: Any = None
        self._lock: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        from regtorch._lock import PathLock

        _refuse_if_in_use(self, self._file is not None or self._lock is not None)
        if _rank() != 0:
            return
        path = check_log_file(self.path, "CSVLogger")
        # two runs appending to one file would interleave their rows: the second is refused
        self._lock = PathLock(path, "CSVLogger")
        self._lock.acquire()
        done = len(state.times)  # epochs restored from a checkpoint (0: a fresh run)
        if done:
            _continue_csv(path, state.history(done), self.COLUMNS)
        elif self.append and path.is_file() and path.stat().st_size:
            _check_header(path, self.COLUMNS)
        else:
            path.write_text(",".join(self.COLUMNS) + "\n", encoding="utf-8")
        self._file = path.open("a", encoding="utf-8", newline="")

    def on_epoch_end(self, state: TrainState) -> None:
        if self._file is None:
            return
        e = state.epoch
        self._file.write(
            _csv_row(e + 1, state.train_loss, state.val_loss, state.lrs[e], state.times[e])
        )
        self._file.flush()

    def on_train_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (done at the end of training, also after Ctrl-C or divergence)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    def __deepcopy__(self, memo: dict[int, Any]) -> CSVLogger:
        # a copy (sklearn's clone) gets the settings, never the open file
        return _copy_settings(self, memo, ("_file", "_lock"))


def _csv_row(epoch: int, train: float, val: float | None, lr: float, seconds: float) -> str:
    """One CSV line; floats in ``repr`` form, which reads back to the same number."""
    cells = [str(epoch), repr(float(train)), "" if val is None else repr(float(val))]
    return ",".join([*cells, repr(float(lr)), repr(float(seconds))]) + "\n"


def _check_header(path: Path, columns: tuple[str, ...]) -> None:
    with path.open(encoding="utf-8") as f:
        header = f.readline().strip()
    if header != ",".join(columns):
        raise ValueError(
            f"CSVLogger {path}: cannot append, its header is {header[:80]!r}, not "
            f"{','.join(columns)!r}; give another file or append=False."
        )


def _continue_csv(path: Path, history: Any, columns: tuple[str, ...]) -> None:
    """Rewrite ``path`` (atomically) to hold exactly the first ``len(history)`` epochs: the
    file's own rows up to there, then the checkpoint's rows it lacks."""
    done = len(history)
    lines: list[str] = []
    if path.is_file() and path.stat().st_size:
        _check_header(path, columns)
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        while lines and not _epoch_at_most(lines[-1], done, len(columns)):
            lines.pop()  # written after the checkpoint: the resumed run writes them again
    last = int(lines[-1].split(",", 1)[0]) if lines else 0
    val = history.val_loss or [None] * done
    rows = [
        _csv_row(e + 1, history.train_loss[e], val[e], history.lr[e], history.time[e])
        for e in range(last, done)
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        ",".join(columns) + "\n" + "".join(f"{line}\n" for line in lines) + "".join(rows),
        encoding="utf-8",
    )
    os.replace(tmp, path)


def _epoch_at_most(line: str, done: int, n_columns: int) -> bool:
    """Whether ``line`` is a whole row of an epoch up to ``done`` (not one cut by a kill)."""
    cells = line.split(",")
    try:
        return len(cells) == n_columns and 1 <= int(cells[0]) <= done
    except ValueError:
        return False


class TensorBoardLogger(Callback):
    """Write the scalars ``loss/train``, ``loss/val`` and ``lr`` of every epoch (step =
    1-based epoch) for TensorBoard, through ``torch.utils.tensorboard``.

    Needs the optional ``tensorboard`` package (``pip install "regtorch[tensorboard]"``).
    The writer opens when training begins, flushes every epoch (a killed run keeps its
    scalars) and closes at the end; a run resumed from a checkpoint drops the events after
    the checkpoint's epoch. Under ``torchrun`` rank 0 writes.

    Parameters
    ----------
    logdir : str or path
        Folder of the event files (created if missing); ``tensorboard --logdir`` it.
    """

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        self.logdir = logdir
        self._writer: Any = None

    def on_train_begin(self, state: TrainState) -> None:
        self.close()
        if _rank() != 0:
            return
        writer_cls = summary_writer()
        logdir = Path(self.logdir)
        if logdir.exists() and not logdir.is_dir():
            raise ValueError(f"TensorBoardLogger {logdir}: is a file; give a folder.")
        done = len(state.times)
        # purge_step: events of epochs after the checkpoint (an interrupted run's) are dropped
        self._writer = writer_cls(log_dir=str(logdir), purge_step=done + 1 if done else None)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._writer is None:
            return
        step = state.epoch + 1
        self._writer.add_scalar("loss/train", state.train_loss, step)
        if state.val_loss is not None:
            self._writer.add_scalar("loss/val", state.val_loss, step)
        self._writer.add_scalar("lr", state.lrs[state.epoch], step)
        self._writer.flush()

    def on_train_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Close the writer (done at the end of training, also after Ctrl-C or divergence)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __deepcopy__(self, memo: dict[int, Any]) -> TensorBoardLogger:
        return _copy_settings(self, memo, ("_writer",))


def summary_writer() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"TensorBoardLogger needs the tensorboard package: {TENSORBOARD_HINT} "
            f"(or pip install tensorboard). ({exc})"
        ) from exc
    return SummaryWriter
