"""The one training loop: optimizers without torch's compiler, batches in memory and streamed,
early stopping, checkpoints with exact resume, divergence, SIGTERM (torchrun: test_elastic.py)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import regtorch.nn.loop as loop
from regtorch import MLPRegressor
from regtorch.data import TableSource
from regtorch.data.split import hash01
from regtorch.nn import stream_fit_mlp
from regtorch.nn.callbacks import Checkpoint, EarlyStopping
from regtorch.nn.loop import Callback, TrainingDivergedError, train
from regtorch.nn.optim import make_optimizer


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lbfgs"])
def test_optimizers_step_bitwise_like_torch(name):
    X, y = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)), torch.randn(64, 2)
    stock_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    kw = {"lr": 0.05, "weight_decay": 0.01}
    ours_net, ref_net = _net(), _net()
    ours = make_optimizer(name, ours_net.parameters(), **kw)
    if name == "lbfgs":
        ref = torch.optim.LBFGS(
            ref_net.parameters(),
            lr=0.05,
            max_iter=20,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-16,
        )
    elif name == "sgd":
        ref = torch.optim.SGD(ref_net.parameters(), momentum=0.9, **kw)
    else:
        ref = stock_cls[name](ref_net.parameters(), fused=True, **kw)
    for net, opt in ((ours_net, ours), (ref_net, ref)):

        def closure(net=net, opt=opt):
            opt.zero_grad()
            out = torch.nn.functional.mse_loss(net(X), y)
            out.backward()
            return out

        for _ in range(4):
            if name == "lbfgs":
                opt.step(closure)
            else:
                closure()
                opt.step()
    for a, b in zip(ours_net.parameters(), ref_net.parameters()):
        assert torch.equal(a, b)
    # and the checkpoint round trip of its state
    again = make_optimizer(name, _net().parameters(), **kw)
    again.load_state_dict(ours.state_dict())
    assert again.state_dict()["param_groups"] == ours.state_dict()["param_groups"]


def test_training_does_not_load_torchs_compiler():
    code = (
        "import sys, numpy as np\n"
        "from regtorch import MLPRegressor\n"
        "X = np.random.default_rng(0).normal(size=(300, 3)); y = X.sum(1)\n"
        "for s in ['adam', 'adamw', 'sgd', 'lbfgs']:\n"
        "    MLPRegressor((8,), solver=s, max_epochs=3, batch_size=64 if s != 'lbfgs' else None,"
        " random_state=0).fit(X, y)\n"
        "from regtorch.nn.optim import make_optimizer\n"
        "import torch\n"
        "w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.ones(2)\n"
        "o = make_optimizer('adam', [w], 0.1); o.step()\n"
        "make_optimizer('adam', [w], 0.1).load_state_dict(o.state_dict())  # checkpoints\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


class _StopAt(Callback):
    """Ctrl-C after ``n`` complete epochs."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, state):
        if state.epoch + 1 == self.n:
            raise KeyboardInterrupt


def _same_run(h1, h2, m1, m2):
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss and h1.lr == h2.lr
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_in_memory_mini_batch_resume_equals_uninterrupted(tmp_path):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(300, 3, generator=g), torch.randn(300, 2, generator=g)
    kw = dict(lr=0.01, epochs=8, batch_size=32, seed=3, lr_schedule="cosine", loss="huber")
    full = _net()
    h_full = train(full, X, y, X_val=X[:50], y_val=y[:50], callbacks=[EarlyStopping(3)], **kw)
    ck = tmp_path / "ck.safetensors"
    part = _net()
    cbs = [EarlyStopping(3), Checkpoint(ck, every=1), _StopAt(4)]
    h_part = train(part, X, y, X_val=X[:50], y_val=y[:50], callbacks=cbs, **kw)
    assert h_part.interrupted and len(h_part) == 4
    back = _net(seed=99)
    h_back = train(
        back,
        X,
        y,
        X_val=X[:50],
        y_val=y[:50],
        callbacks=[EarlyStopping(3), Checkpoint(ck, every=1)],
        resume_from=ck,
        **kw,
    )
    _same_run(h_full, h_back, full, back)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    rng = np.random.default_rng(0)
    n = 3000
    X = rng.normal(size=(n, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["y"] = np.sin(2 * X[:, 0]) + X[:, 1] + 0.05 * rng.normal(size=n)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), d / "t.parquet", row_group_size=500
    )
    noise = pd.DataFrame(rng.normal(size=(600, 5)), columns=list("abcde"))
    noise["y"] = rng.normal(size=600)  # nothing to learn: a wide network can only overfit
    pq.write_table(
        pa.Table.from_pandas(noise, preserve_index=False), d / "noise.parquet", row_group_size=100
    )
    return d, df, noise


def _stream(est, path, **kw):
    src = TableSource(path, "y", batch_rows=256)
    return stream_fit_mlp(
        est, src, test_fraction=0.2, val_fraction=0.2, seed=1, shuffle_rows=512, **kw
    )


def test_streamed_early_stopping_stops_and_keeps_the_best_weights(table):
    d, _, noise = table
    est = MLPRegressor(
        (128, 128),
        learning_rate_init=0.01,
        lr_schedule="constant",
        batch_size=32,
        max_epochs=80,
        n_iter_no_change=3,
        random_state=0,
        device="cpu",
    )
    _stream(est, d / "noise.parquet")
    h = est.history_
    assert len(h) < 80  # stopped by patience
    assert est.best_epoch_ == int(np.argmin(h.val_loss)) + 1 < len(h)
    # the model holds the best epoch's weights: its validation loss is the recorded one
    val = (hash01(np.arange(600), 1) >= 0.2) & (hash01(np.arange(600), 1) < 0.4)
    pred = est.predict(noise[list("abcde")][val])
    mse = float(np.mean(((pred - noise.y[val]) / est.y_scale_[0]) ** 2))
    np.testing.assert_allclose(mse, h.val_loss[est.best_epoch_ - 1], rtol=1e-4)


def _interrupt_train_after(monkeypatch, n):
    real = loop.train

    def train_then_ctrl_c(module, *args, callbacks=(), **kwargs):
        return real(module, *args, callbacks=[*callbacks, _StopAt(n)], **kwargs)

    monkeypatch.setattr(loop, "train", train_then_ctrl_c)


def test_streamed_checkpoint_resume_equals_uninterrupted(table, tmp_path, monkeypatch):
    d, _, _ = table
    kw = dict(batch_size=64, max_epochs=6, solver="adamw", alpha=1e-3, random_state=0, device="cpu")
    full = MLPRegressor((16,), **kw)
    _stream(full, d / "t.parquet")
    ck = tmp_path / "s.ckpt"
    part = MLPRegressor((16,), **kw)
    with monkeypatch.context() as m:
        _interrupt_train_after(m, 3)
        with pytest.warns(UserWarning, match="interrupted after 3 epochs"):
            _stream(part, d / "t.parquet", checkpoint_path=ck)
    assert part.history_.interrupted and len(part.history_) == 3
    back = MLPRegressor((16,), **kw)
    _stream(back, d / "t.parquet", checkpoint_path=ck, resume_from=ck)
    assert len(back.history_) == 6 and not back.history_.interrupted
    _same_run(full.history_, back.history_, full.module_, back.module_)
    assert back.best_epoch_ == full.best_epoch_


def test_streamed_divergence_raises_training_diverged(table):
    d, _, _ = table
    est = MLPRegressor(
        (64,), solver="sgd", learning_rate_init=1e4, batch_size=32, max_epochs=5, random_state=0
    )
    with pytest.raises(TrainingDivergedError, match="Training diverged at epoch"):
        _stream(est, d / "t.parquet")


def test_streamed_lbfgs_is_refused_with_the_reason(table):
    d, _, _ = table
    with pytest.raises(ValueError, match="lbfgs' needs full batches"):
        _stream(MLPRegressor(solver="lbfgs"), d / "t.parquet")


def test_streamed_resume_with_other_batch_size_is_refused(table, tmp_path):
    from regtorch.nn.checkpoint import CheckpointError

    d, _, _ = table
    ck = tmp_path / "b.ckpt"
    _stream(
        MLPRegressor((8,), batch_size=64, max_epochs=2, random_state=0),
        d / "t.parquet",
        checkpoint_path=ck,
    )
    with pytest.raises(CheckpointError, match="rows per batch"):
        _stream(
            MLPRegressor((8,), batch_size=32, max_epochs=2, random_state=0),
            d / "t.parquet",
            resume_from=ck,
        )


def test_torch_sigterm_is_an_interrupt_and_leaves_the_checkpoint(tmp_path):
    import os
    import signal

    class Term(Callback):
        def on_epoch_end(self, state):
            if state.epoch + 1 == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    X, y = torch.randn(100, 3), torch.randn(100, 2)
    ck = tmp_path / "t.ckpt"
    before = signal.getsignal(signal.SIGTERM)
    h = train(
        _net(), X, y, epochs=5, batch_size=10, seed=0, callbacks=[Checkpoint(ck, every=1), Term()]
    )
    assert h.interrupted and len(h) == 2
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    from regtorch.nn.checkpoint import load_checkpoint

    assert load_checkpoint(ck)["epoch"] == 2


def _stream_batches(path, bs=64, seed=1):
    from regtorch.nn.batches import StreamBatches

    src = TableSource(path, "y", batch_rows=256)
    return StreamBatches(
        src,
        keep=lambda r: hash01(r, seed) >= 0.4,
        is_val=lambda r: (hash01(r, seed) >= 0.2) & (hash01(r, seed) < 0.4),
        mean=np.zeros(4),
        scale=np.ones(4),
        train_rows=int((hash01(np.arange(3000), seed) >= 0.4).sum()),
        batch_size=bs,
        seed=seed,
        shuffle_rows=500,
        max_val_rows=10_000,
    )


def test_stream_batches_visit_each_training_row_at_most_once_per_epoch(table):
    d, df, _ = table
    batches = _stream_batches(d / "t.parquet")
    train_y = np.sort(df.y.to_numpy()[hash01(np.arange(3000), 1) >= 0.4].astype(np.float32))
    gen = torch.Generator().manual_seed(0)
    seen = [yb.numpy().ravel() for _, yb in batches.epoch(gen, 0)]
    assert all(len(s) == 64 for s in seen) and len(seen) == len(train_y) // 64
    got = np.concatenate(seen)
    assert len(np.unique(got)) == len(got) and np.isin(got, train_y).all()
    again = [yb.numpy().ravel() for _, yb in batches.epoch(gen, 1)]
    assert not np.array_equal(np.concatenate(again), got)  # another order in each epoch


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "smooth_l1"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_streamed_train_takes_every_loss_and_mini_batch_optimizer(table, loss, optimizer):
    d, _, _ = table
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
    h = train(
        module,
        batches=_stream_batches(d / "t.parquet"),
        optimizer=optimizer,
        lr=0.01,
        epochs=4,
        loss=loss,
        seed=0,
    )
    assert len(h) == 4 and len(h.val_loss) == 4
    assert h.train_loss[-1] < h.train_loss[0] and np.isfinite(h.val_loss).all()
    with pytest.raises(ValueError, match="lbfgs' needs full batches"):
        train(module, batches=_stream_batches(d / "t.parquet"), optimizer="lbfgs")
