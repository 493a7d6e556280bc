"""Training engine: seconds per MLP epoch in memory and streamed, against hand-written loops.

Same rows (200,000 x 20 float32 in batches of 256, then 1,000,000 in batches of 1,024;
``--quick``: 20,000 in 256), same network (MLP 64-64, ReLU), Adam lr 1e-3, 3 epochs per run, interleaved repeats, best of 3:

- regtorch ``train()`` on tensors in memory;
- a hand-written ``torch.randperm`` loop (``X[idx]`` per batch), with ``torch.optim.Adam`` as a
  user writes it, with ``fused=True`` as regtorch's ``make_optimizer`` builds it, and that on
  one thread as regtorch runs tiny models ("best randperm" is the fastest of the three);
- a ``DataLoader(TensorDataset(X, y), shuffle=True)`` loop;
- regtorch ``stream_fit_mlp`` on the same rows in a Parquet file (64k-row groups) read by
  ``TableSource``, with the file in the page cache.

Goals: regtorch in memory >= 1.0x the randperm loop and >= 6x the DataLoader loop; the
streamed epoch >= 0.8x the in-memory one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _table import table

FEATURES = 20
HIDDEN = (64, 64)
BATCH = 256
EPOCHS = 3
LR = 1e-3
ROW_GROUP = 65_536


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = np.sin(X[:, :5]).sum(1, keepdims=True) + 0.1 * rng.normal(size=(n, 1))
    return X, y.astype(np.float32)


def _parquet(X: np.ndarray, y: np.ndarray) -> Path:
    """The same rows as a Parquet file (float32 columns x0..x19, y), read once into the cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(tempfile.gettempdir()) / f"regtorch-bench-engine-{len(X)}.parquet"
    if not path.exists():
        cols = {f"x{j}": X[:, j] for j in range(X.shape[1])} | {"y": y[:, 0]}
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table(cols), tmp, row_group_size=ROW_GROUP)
        tmp.replace(path)  # no half-written file left for the next run
    pq.read_table(path)  # into the page cache
    return path


def _model() -> torch.nn.Module:
    from regtorch.nn.modules import MLP

    torch.manual_seed(0)
    return MLP(FEATURES, HIDDEN)


def _hand_loop(X: torch.Tensor, y: torch.Tensor, fused: bool, threads: int | None = None) -> None:
    """What a user writes: randperm, index, zero_grad / forward / MSE / backward / step."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _hand_epochs(X, y, fused)
    finally:
        torch.set_num_threads(old)


def _hand_epochs(X: torch.Tensor, y: torch.Tensor, fused: bool) -> None:
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=LR, fused=True if fused else None)
    lossf = torch.nn.MSELoss()
    n = len(X)
    for _ in range(EPOCHS):
        perm = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            xb, yb = X[idx], y[idx]
            opt.zero_grad()
            loss = lossf(m(xb), yb)
            loss.backward()
            opt.step()


def _dataloader_loop(X: torch.Tensor, y: torch.Tensor) -> None:
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=LR)
    lossf = torch.nn.MSELoss()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=BATCH, shuffle=True
    )
    for _ in range(EPOCHS):
        for xb, yb in loader:
            opt.zero_grad()
            loss = lossf(m(xb), yb)
            loss.backward()
            opt.step()


def _regtorch_memory(X: torch.Tensor, y: torch.Tensor) -> None:
    from regtorch.nn.loop import train
    from regtorch.nn.modules import MLP

    train(
        MLP(FEATURES, HIDDEN),
        X,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        optimizer="adam",
        lr=LR,
        seed=0,
        device="cpu",
    )


def _regtorch_streamed(path: Path) -> tuple[float, float]:
    """One streamed fit; returns (seconds per training epoch, whole call seconds).

    Kept in one function so it follows ``stream_fit_mlp``'s API. ``history_.time`` is
    cumulative from before the statistics pass, so the training epochs are its differences
    from the second epoch on (the first also holds the statistics and validation passes).
    """
    from regtorch.data import TableSource
    from regtorch.nn import MLPRegressor, stream_fit_mlp

    est = MLPRegressor(
        hidden_layer_sizes=HIDDEN,
        activation="relu",  # regtorch.nn.modules.MLP's default, used by the other loops
        batch_size=BATCH,
        max_epochs=EPOCHS,
        learning_rate_init=LR,
        lr_schedule="constant",
        early_stopping=False,
        random_state=0,
        device="cpu",
    )
    t0 = time.perf_counter()
    stream_fit_mlp(est, TableSource(path, "y"), test_fraction=0.0, val_fraction=0.0)
    whole = time.perf_counter() - t0
    times = est.history_.time
    if len(times) != EPOCHS:
        raise RuntimeError(f"stream_fit_mlp ran {len(times)} epochs, expected {EPOCHS}.")
    return (times[-1] - times[0]) / (EPOCHS - 1), whole


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / EPOCHS


def _warm_up() -> None:
    """Pay torch.optim's one-off first-step import (torch._dynamo, ~1 s) before any timing."""
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w])
    opt.zero_grad()
    w.grad = torch.zeros(1)
    opt.step()


def _measure(n: int, repeats: int) -> dict[str, float]:
    _warm_up()
    X, y = _data(n)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    path = _parquet(X, y)
    loops: dict[str, Callable[[], float]] = {
        "memory": lambda: _timed(lambda: _regtorch_memory(Xt, yt)),
        "randperm": lambda: _timed(lambda: _hand_loop(Xt, yt, fused=False)),
        "randperm_fused": lambda: _timed(lambda: _hand_loop(Xt, yt, fused=True)),
        # regtorch runs tiny models on one thread: the same choice, made by hand
        "randperm_fused_1t": lambda: _timed(lambda: _hand_loop(Xt, yt, fused=True, threads=1)),
        "dataloader": lambda: _timed(lambda: _dataloader_loop(Xt, yt)),
    }
    best = dict.fromkeys([*loops, "streamed", "streamed_whole"], float("inf"))
    for _ in range(repeats):  # interleaved, best of each: the machine is noisy
        for name, fn in loops.items():
            best[name] = min(best[name], fn())
        epoch_s, whole = _regtorch_streamed(path)
        best["streamed"] = min(best["streamed"], epoch_s)
        best["streamed_whole"] = min(best["streamed_whole"], whole / EPOCHS)
    return best


def _goal(ratio: float, goal: float) -> str:
    return f">= {goal:g}x: {'met' if ratio >= goal else 'MISSED'}"


def run(args: Any) -> str:
    configs = [(20_000, 256)] if args.quick else [(200_000, 256), (1_000_000, 1024)]
    return "\n".join(_report(n, batch) for n, batch in configs)


def _report(n: int, batch: int) -> str:
    """One table: every loop over the same ``n`` rows in batches of ``batch``."""
    global BATCH
    BATCH = batch
    s = _measure(n, repeats=3)
    # the strictest hand-written anchor: the fastest of its three variants
    s["best_randperm"] = min(s["randperm"], s["randperm_fused"], s["randperm_fused_1t"])

    def x(anchor: str, name: str) -> str:
        return f"{s[anchor] / s[name]:.2f}x"

    labels = {
        "memory": "regtorch train() (in memory)",
        "randperm": "hand-written randperm loop, Adam",
        "randperm_fused": "hand-written randperm loop, Adam(fused=True)",
        "randperm_fused_1t": "hand-written randperm loop, Adam(fused=True), 1 thread",
        "dataloader": "DataLoader(shuffle=True) loop, Adam",
        "streamed": "regtorch stream_fit_mlp, training epochs",
        "streamed_whole": "regtorch stream_fit_mlp, whole call / epochs",
    }
    goals = {
        "memory": f"randperm {_goal(s['randperm'] / s['memory'], 1.0)} "
        f"(best {_goal(s['best_randperm'] / s['memory'], 1.0)}); "
        f"DataLoader {_goal(s['dataloader'] / s['memory'], 6.0)}",
        "streamed": f"in-memory {_goal(s['memory'] / s['streamed'], 0.8)}",
    }
    rows = [
        [
            label,
            s[name],
            x("randperm", name),
            x("best_randperm", name),
            x("dataloader", name),
            x("memory", name) if name.startswith("streamed") else "-",
            goals.get(name, ""),
        ]
        for name, label in labels.items()
    ]
    head = (
        f"{n:,} x {FEATURES} float32, MLP {'-'.join(map(str, HIDDEN))} ReLU, batch {BATCH}, "
        f"Adam lr {LR:g}, {EPOCHS} epochs per run, best of 3 interleaved; torch threads "
        f"{torch.get_num_threads()} (regtorch picks its own). Ratios are throughput "
        "(anchor seconds / these seconds): > 1 is faster than the anchor.\n"
        "In-memory rows: whole call / epochs. Streamed training epochs: mean of epochs 2.."
        f"{EPOCHS} from history_.time (epoch 1 also holds the statistics and validation "
        "passes); Parquet in the page cache.\n"
    )
    return head + table(
        [
            "method",
            "s/epoch",
            "vs randperm",
            "vs best randperm",
            "vs DataLoader",
            "vs in-memory",
            "goal",
        ],
        rows,
    )
