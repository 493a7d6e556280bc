"""MLP: time to quality on the sine, training throughput, and quality at default settings.

1. Seconds to reach test R2 >= 0.976 on the reference sine split: regtorch's default
   MLPRegressor, the reference recipe (Adam 1e-3, 8-8-8, full batch), scikit-learn's default
   MLPRegressor and skorch's NeuralNetRegressor (same network and recipe as regtorch's default).
2. Throughput, one epoch over 1,000,000 x 20 rows, MLP 64-64, batch 1024, Adam: regtorch's
   loop against a plain DataLoader loop, a hand-written randperm-slicing loop, skorch and
   scikit-learn (``--quick``: 200,000 rows).
3. Default settings on scikit-learn's diabetes data and make_friedman1 (n=20,000): test R2
   and seconds against scikit-learn's default MLPRegressor.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
from _table import table
from sklearn.metrics import r2_score

from regtorch import MLPRegressor
from regtorch.datasets import make_sine
from regtorch.nn.loop import Callback, train
from regtorch.nn.modules import MLP

TARGET_R2 = 0.976


class _FirstReach(Callback):
    """Records the training time when the test R2 first reaches the target."""

    def __init__(self, X: np.ndarray, y: np.ndarray, every: int, scale: Any = None) -> None:
        self.X, self.y, self.every = torch.as_tensor(X), y, every
        self.scale = scale
        self.reached: tuple[int, float] | None = None
        self.eval_time = 0.0

    def on_epoch_end(self, state: Any) -> None:
        if self.reached is not None:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred = state.module(self.X).double().numpy()
        if self.scale is not None:
            pred = pred * self.scale[1] + self.scale[0]
        if r2_score(self.y, pred) >= TARGET_R2:
            self.reached = (state.epoch + 1, state.elapsed - self.eval_time)
            state.stop = True
        self.eval_time += time.perf_counter() - t0


def _time_to_quality() -> str:
    d = make_sine()
    rows = []
    # warm-up (first-call costs of torch kernels)
    MLPRegressor(random_state=0, max_epochs=5).fit(d.X_train, d.y_train.ravel())
    for seed in range(5):
        t0 = time.perf_counter()
        m = MLPRegressor(random_state=seed).fit(d.X_train, d.y_train.ravel())
        rows.append(
            [
                f"regtorch MLPRegressor() seed {seed}",
                m.n_iter_,
                time.perf_counter() - t0,
                m.score(d.X_test, d.y_test.ravel()),
            ]
        )
    probe = _FirstReach(d.X_test, d.y_test, every=100)
    t0 = time.perf_counter()
    train(
        MLP(1, (8, 8, 8)),
        d.X_train,
        d.y_train,
        X_val=d.X_val,
        y_val=d.y_val,
        lr=1e-3,
        epochs=10_000,
        seed=42,
        device="cpu",
        callbacks=[probe],
    )
    if probe.reached:
        rows.append(
            [
                "reference recipe (to first R2 >= 0.976)",
                probe.reached[0],
                probe.reached[1],
                TARGET_R2,
            ]
        )
    from sklearn.neural_network import MLPRegressor as SkMLP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        sk = SkMLP(random_state=0).fit(d.X_train, d.y_train.ravel())
        rows.append(
            [
                "scikit-learn MLPRegressor() (default)",
                sk.n_iter_,
                time.perf_counter() - t0,
                sk.score(d.X_test, d.y_test.ravel()),
            ]
        )
    rows.append(_skorch_sine(d))
    return table(["method", "epochs", "seconds", "test R2"], rows)


def _skorch_sine(d: Any) -> list[Any]:
    from skorch import NeuralNetRegressor

    mx, sx = d.X_train.mean(0), d.X_train.std(0)
    my, sy = d.y_train.mean(0), d.y_train.std(0)
    torch.manual_seed(0)
    net = NeuralNetRegressor(
        MLP,
        module__n_features=1,
        module__hidden_layer_sizes=(32, 32, 32),
        optimizer=torch.optim.Adam,
        lr=0.01,
        max_epochs=300,
        batch_size=-1,
        train_split=None,
        verbose=0,
        callbacks=[
            (
                "lr",
                __import__("skorch.callbacks", fromlist=["LRScheduler"]).LRScheduler(
                    policy="CosineAnnealingLR", T_max=300, eta_min=1e-4
                ),
            )
        ],
    )
    t0 = time.perf_counter()
    net.fit((d.X_train - mx) / sx, (d.y_train - my) / sy)
    seconds = time.perf_counter() - t0
    pred = net.predict((d.X_test - mx) / sx) * sy + my
    return [
        "skorch NeuralNetRegressor (same net and recipe)",
        300,
        seconds,
        r2_score(d.y_test, pred),
    ]


def _throughput(n: int, repeats: int = 2) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    y = (np.sin(X[:, :5]).sum(1, keepdims=True) + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    bs = 1024
    lossf = torch.nn.MSELoss()

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = MLP(20, (64, 64))
        return m, torch.optim.Adam(m.parameters(), lr=1e-3)

    def regtorch_loop() -> None:
        train(MLP(20, (64, 64)), Xt, yt, epochs=1, batch_size=bs, seed=0, device="cpu")

    def randperm_loop() -> None:  # hand-written: no framework overhead
        m, opt = fresh()
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            opt.zero_grad()
            loss = lossf(m(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()

    def dataloader_loop() -> None:
        m, opt = fresh()
        ds = torch.utils.data.TensorDataset(Xt, yt)
        for xb, yb in torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True):
            opt.zero_grad()
            loss = lossf(m(xb), yb)
            loss.backward()
            opt.step()

    def skorch_loop() -> None:
        from skorch import NeuralNetRegressor

        NeuralNetRegressor(
            MLP,
            module__n_features=20,
            module__hidden_layer_sizes=(64, 64),
            optimizer=torch.optim.Adam,
            lr=1e-3,
            max_epochs=1,
            batch_size=bs,
            train_split=None,
            verbose=0,
        ).fit(X, y)

    def sklearn_loop() -> None:
        from sklearn.neural_network import MLPRegressor as SkMLP

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SkMLP(hidden_layer_sizes=(64, 64), batch_size=bs, max_iter=1, random_state=0).fit(
                X, y.ravel()
            )

    loops = {
        "regtorch train()": regtorch_loop,
        "hand-written randperm loop": randperm_loop,
        "PyTorch DataLoader loop": dataloader_loop,
        "skorch NeuralNetRegressor": skorch_loop,
        "scikit-learn MLPRegressor": sklearn_loop,
    }
    seconds = {name: float("inf") for name in loops}
    for _ in range(repeats):  # interleaved repeats, best of each: the machine is noisy
        for name, fn in loops.items():
            t0 = time.perf_counter()
            fn()
            seconds[name] = min(seconds[name], time.perf_counter() - t0)
    ours = n / seconds["regtorch train()"]
    rows = [[name, n / s, f"{ours / (n / s):.2f}x"] for name, s in seconds.items()]
    return table(["loop (1 epoch, best of 2)", "rows/s", "regtorch / this"], rows)


def _quality() -> str:
    from sklearn.datasets import load_diabetes, make_friedman1
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor as SkMLP

    rows = []
    for name, (X, y) in [
        ("diabetes", load_diabetes(return_X_y=True)),
        ("friedman1 n=20000", make_friedman1(n_samples=20_000, random_state=0)),
    ]:
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
        for label, est in [
            ("regtorch MLPRegressor()", MLPRegressor(random_state=0)),
            ("scikit-learn MLPRegressor()", SkMLP(random_state=0)),
        ]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                est.fit(Xtr, ytr)
                rows.append([name, label, time.perf_counter() - t0, est.score(Xte, yte)])
    return table(["data", "model", "seconds", "test R2"], rows)


def run(args: Any) -> str:
    n = 200_000 if args.quick else 1_000_000
    return "\n\n".join(
        [
            "Time to quality (sine, target test R2 >= 0.976)\n" + _time_to_quality(),
            f"Throughput ({n} x 20, MLP 64-64, batch 1024, Adam, one epoch)\n" + _throughput(n),
            "Quality at default settings\n" + _quality(),
        ]
    )
