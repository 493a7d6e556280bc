"""MLPRegressor's sample weights (in memory and streamed), its callbacks parameter and
partial_fit: integer weights train as repeated rows, callbacks see every epoch, partial_fit
calls train as the epochs of one fit."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LinearRegression as SkLinear

import regtorch
from regtorch import MLPRegressor
from regtorch.data import TableSource
from regtorch.data.split import hash01
from regtorch.nn import stream_fit_mlp
from regtorch.nn.loop import LOSSES, Callback, WeightedLoss, train


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.normal(size=n)
    w = rng.integers(0, 4, size=n)
    w[:2] = (2, 3)  # some weight for sure
    return X, y, w


FULL = dict(hidden_layer_sizes=(16, 16), early_stopping=False, random_state=0, batch_size=None)


class Recorder(Callback):
    """Records the epochs it saw and the callbacks that ran before it."""

    def __init__(self):
        self.epochs = []
        self.before = []

    def on_train_begin(self, state):
        self.before = [type(cb).__name__ for cb in state.callbacks]

    def on_epoch_end(self, state):
        self.epochs.append((state.epoch, state.train_loss))


class StopAt(Callback):
    """Ctrl-C after ``n`` complete epochs (after the checkpoint of that epoch is written)."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, state):
        if state.epoch + 1 == self.n:
            raise KeyboardInterrupt


# --- integer weights are repeated rows ------------------------------------------------


def test_integer_weights_equal_repeated_rows_full_batch_adam():
    X, y, w = _data()
    kw = dict(FULL, max_epochs=100)
    a = MLPRegressor(**kw).fit(X, y, sample_weight=w)
    b = MLPRegressor(**kw).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    for attr in ("x_mean_", "x_scale_", "y_mean_", "y_scale_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-12)
    pa_, pb = a.predict(X), b.predict(X)
    np.testing.assert_allclose(pa_, pb, rtol=1e-5, atol=1e-5 * np.abs(pb).max())
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-5)


def test_weighted_objective_equals_repeated_rows_lbfgs():
    """L-BFGS in float32 is chaotic (permuting the rows of an unweighted fit moves its
    predictions by percents after 20 iterations), so its objective and gradient are compared
    exactly, and a converging fit against scikit-learn's weighted least squares."""
    X, y, w = _data()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]
    wt = torch.tensor(w, dtype=torch.float32)
    grads = []
    for loss in (
        WeightedLoss(torch.nn.MSELoss())(net(Xt), yt, wt),
        torch.nn.MSELoss()(
            net(Xt.repeat_interleave(wt.long(), 0)), yt.repeat_interleave(wt.long(), 0)
        ),
    ):
        net.zero_grad()
        loss.backward()
        grads.append((float(loss.detach()), [p.grad.clone() for p in net.parameters()]))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-6)
    for g1, g2 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    # a linear network trained by L-BFGS lands on the weighted least-squares fit
    y_lin = X @ [1.0, -2.0, 0.5] + 0.3 * np.random.default_rng(1).normal(size=len(X))
    kw = dict(FULL, hidden_layer_sizes=(4,), activation="identity", solver="lbfgs", max_epochs=5)
    a = MLPRegressor(**kw).fit(X, y_lin, sample_weight=w)
    b = MLPRegressor(**kw).fit(np.repeat(X, w, axis=0), np.repeat(y_lin, w))
    ref = SkLinear().fit(X, y_lin, sample_weight=w).predict(X)
    for est in (a, b):
        np.testing.assert_allclose(est.predict(X), ref, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(a.x_scale_, b.x_scale_, rtol=1e-12)
    unweighted = SkLinear().fit(X, y_lin).predict(X)
    assert np.abs(unweighted - ref).max() > 1e-2 * np.abs(ref).max()  # weights matter here


def test_weights_change_the_fit_and_ones_do_not():
    X, y, w = _data()
    kw = dict(FULL, max_epochs=50)
    plain = MLPRegressor(**kw).fit(X, y).predict(X)
    ones = MLPRegressor(**kw).fit(X, y, sample_weight=np.ones(len(X))).predict(X)
    weighted = MLPRegressor(**kw).fit(X, y, sample_weight=w).predict(X)
    np.testing.assert_allclose(ones, plain, rtol=1e-6, atol=1e-7)
    assert np.abs(weighted - plain).max() > 1e-3


def test_zero_weights_equal_dropping_the_rows():
    X, y, w = _data()
    y = y.copy()
    y[w == 0] = 1e3  # outliers that must not count
    keep = w > 0
    for extra in ({}, {"early_stopping": True}):
        kw = {**FULL, "max_epochs": 40, **extra}
        a = MLPRegressor(**kw).fit(X, y, sample_weight=keep.astype(float))
        b = MLPRegressor(**kw).fit(X[keep], y[keep])
        np.testing.assert_allclose(a.y_mean_, b.y_mean_, rtol=1e-12)
        np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "weights, match",
    [
        (-np.ones(60), "Negative values"),
        (np.r_[np.nan, np.ones(59)], "NaN"),
        (np.r_[np.inf, np.ones(59)], "infinity"),
        (np.ones(59), "sample_weight"),
        (np.zeros(60), "[Ww]eight.*zero"),
        (np.ones((60, 2)), "1D"),
    ],
)
def test_bad_weights_are_clear_errors(weights, match):
    X, y, _ = _data()
    with pytest.raises(ValueError, match=match):
        MLPRegressor(**FULL, max_epochs=2).fit(X, y, sample_weight=weights)


def test_validation_loss_is_weighted():
    X, y, w = _data(200)
    est = MLPRegressor((8,), max_epochs=5, random_state=0, n_iter_no_change=100)
    est.fit(X, y, sample_weight=w)
    # the held-out rows: the seeded permutation of the positive-weight rows
    keep = w > 0
    Xk, yk, wk = X[keep], y[keep], w[keep]
    n_val = int(round(0.1 * len(Xk)))
    va = np.random.default_rng(0).permutation(len(Xk))[:n_val]
    r2 = ((est.predict(Xk[va]) - yk[va]) / est.y_scale_[0]) ** 2
    np.testing.assert_allclose(est.history_.val_loss[-1], np.average(r2, weights=wk[va]), rtol=1e-4)
    assert not np.isclose(est.history_.val_loss[-1], r2.mean(), rtol=1e-3)
    # explicit validation rows with their own weights
    est2 = MLPRegressor((8,), max_epochs=3, random_state=0, early_stopping=False)
    est2.fit(X, y, sample_weight=w, X_val=X[:50], y_val=y[:50], sample_weight_val=w[:50] + 1.0)
    r2 = ((est2.predict(X[:50]) - y[:50]) / est2.y_scale_[0]) ** 2
    np.testing.assert_allclose(
        est2.history_.val_loss[-1], np.average(r2, weights=w[:50] + 1.0), rtol=1e-4
    )


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_takes_weights_as_repeated_rows(loss):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(30, 2, generator=g) * 3, torch.randn(30, 2, generator=g)
    w = torch.randint(0, 4, (30,), generator=g)
    w[0] = 2
    f = WeightedLoss(LOSSES[loss]())
    rep = LOSSES[loss]()(pred.repeat_interleave(w, 0), target.repeat_interleave(w, 0))
    torch.testing.assert_close(f(pred, target, w.float()), rep, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(f(pred, target), LOSSES[loss]()(pred, target))
    # and through the loop, mini-batches of a weighted run
    net = torch.nn.Linear(2, 2)
    h = train(net, pred, target, sample_weight=w, loss=loss, epochs=3, batch_size=8, seed=0)
    assert len(h) == 3 and np.isfinite(h.train_loss).all()


def test_custom_loss_without_reduction_is_refused_with_weights():
    class Odd(torch.nn.Module):
        def forward(self, a, b):
            return ((a - b) ** 2).mean()

    X, y = torch.randn(10, 2), torch.randn(10, 1)
    with pytest.raises(ValueError, match="reduction"):
        train(torch.nn.Linear(2, 1), X, y, loss=Odd(), sample_weight=torch.ones(10), epochs=1)


def test_weighted_mini_batches_are_reproducible():
    X, y, w = _data(500)
    kw = dict(hidden_layer_sizes=(8,), batch_size=32, max_epochs=4, random_state=3)
    a = MLPRegressor(**kw).fit(X, y, sample_weight=w)
    b = MLPRegressor(**kw).fit(X, y, sample_weight=w)
    assert a.history_.train_loss == b.history_.train_loss
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    c = MLPRegressor(**kw).fit(X, y)
    assert a.history_.train_loss != c.history_.train_loss


def test_weighted_resume_equals_uninterrupted(tmp_path):
    X, y, w = _data(300)
    kw = dict(hidden_layer_sizes=(8,), batch_size=32, max_epochs=6, random_state=0)
    full = MLPRegressor(**kw).fit(X, y, sample_weight=w)
    ck = tmp_path / "w.ckpt"
    part = MLPRegressor(**kw, checkpoint_path=str(ck), checkpoint_every=1, callbacks=[StopAt(3)])
    with pytest.warns(UserWarning, match="interrupted after 3 epochs"):
        part.fit(X, y, sample_weight=w)
    back = MLPRegressor(**kw, checkpoint_path=str(ck), checkpoint_every=1)
    back.fit(X, y, sample_weight=w, resume_from=ck)
    assert back.history_.train_loss == full.history_.train_loss
    np.testing.assert_array_equal(back.predict(X), full.predict(X))
    # a weighted checkpoint does not resume an unweighted run
    with pytest.raises(ValueError, match="sample weights"):
        MLPRegressor(**kw, checkpoint_path=str(ck)).fit(X, y, resume_from=ck)


# --- callbacks ---------------------------------------------------------------------------


def test_callbacks_run_after_the_built_in_ones_in_memory(tmp_path):
    X, y, _ = _data()
    rec = Recorder()
    est = MLPRegressor(
        (8,), max_epochs=5, random_state=0, checkpoint_path=str(tmp_path / "c"), callbacks=[rec]
    )
    est.fit(X, y)
    assert [e for e, _ in rec.epochs] == list(range(len(est.history_)))
    assert [v for _, v in rec.epochs] == pytest.approx(est.history_.train_loss)
    assert rec.before == ["_OverfitStopping", "Checkpoint", "Recorder"]


def test_callbacks_param_clones_and_is_checked():
    est = MLPRegressor(callbacks=[Recorder()])
    twin = clone(est)
    assert isinstance(twin.callbacks[0], Recorder) and twin.callbacks[0] is not est.callbacks[0]
    assert "callbacks" in est.get_params()
    X, y, _ = _data()
    for bad in ([object()], "Recorder", Recorder()):
        with pytest.raises(ValueError, match="'callbacks' parameter must be a list of regtorch"):
            MLPRegressor(callbacks=bad, max_epochs=1).fit(X, y)


@pytest.fixture(scope="module")
def weighted_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    df["y"] = np.sin(2 * df.a) + df.b + 0.05 * rng.normal(size=n)
    df["w"] = rng.integers(0, 4, size=n).astype(float)
    df.loc[df.w == 0, "y"] = 50.0  # weight 0: must count for nothing
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), d / "w.parquet", row_group_size=500
    )
    return d / "w.parquet", df


def _stream(est, path, weight="w"):
    src = TableSource(path, "y", ["a", "b", "c"], batch_rows=256, weight=weight)
    return stream_fit_mlp(est, src, test_fraction=0.2, val_fraction=0.2, seed=1, shuffle_rows=512)


def test_streamed_weights_and_callbacks(weighted_table):
    path, df = weighted_table
    rec = Recorder()
    est = MLPRegressor((16,), batch_size=64, max_epochs=4, random_state=0, callbacks=[rec])
    _stream(est, path)
    assert [e for e, _ in rec.epochs] == [0, 1, 2, 3] and rec.before[-1] == "Recorder"
    h = hash01(np.arange(len(df)), 1)
    tr, va = h >= 0.4, (h >= 0.2) & (h < 0.4)
    w = df.w.to_numpy()
    # weighted standardisation of the training rows (rows of weight 0 out)
    np.testing.assert_allclose(est.y_mean_[0], np.average(df.y[tr], weights=w[tr]), rtol=1e-9)
    np.testing.assert_allclose(
        est.x_scale_,
        np.sqrt(np.average((df[["a", "b", "c"]][tr] - est.x_mean_) ** 2, axis=0, weights=w[tr])),
        rtol=1e-9,
    )
    # weighted validation loss
    pred = est.predict(df[["a", "b", "c"]][va])
    r2 = ((pred - df.y[va]) / est.y_scale_[0]) ** 2
    np.testing.assert_allclose(est.history_.val_loss[-1], np.average(r2, weights=w[va]), rtol=1e-4)
    assert est.predict(df[["a", "b", "c"]]).max() < 10  # the weight-0 outliers did not count


def test_streamed_weights_change_the_statistics(weighted_table):
    path, df = weighted_table
    a = MLPRegressor((8,), batch_size=64, max_epochs=1, random_state=0)
    _stream(a, path)
    b = MLPRegressor((8,), batch_size=64, max_epochs=1, random_state=0)
    _stream(b, path, weight=None)
    assert not np.allclose(a.y_mean_, b.y_mean_)  # the weights took effect


# --- partial_fit -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 16])
def test_partial_fit_calls_train_like_the_epochs_of_one_fit(batch_size):
    X, y, w = _data(100)
    kw = dict(hidden_layer_sizes=(8,), batch_size=batch_size, random_state=0, early_stopping=False)
    full = MLPRegressor(**kw, max_epochs=5, lr_schedule="constant").fit(X, y, sample_weight=w)
    est = MLPRegressor(**kw)
    for _ in range(5):
        est.partial_fit(X, y, sample_weight=w)
    assert est.n_iter_ == 5 and len(est.history_) == 5
    assert est.history_.train_loss == full.history_.train_loss
    np.testing.assert_array_equal(est.predict(X), full.predict(X))
    steps = 5 * (1 if batch_size is None else -(-int((w > 0).sum()) // batch_size))
    state = est._partial_state["optimizer"]["state"][0]
    assert float(state["step"]) == steps  # Adam's count went on across the calls


def test_partial_fit_round_trips_and_checks_features(tmp_path):
    X, y, _ = _data(80)
    est = MLPRegressor((8,), random_state=0, callbacks=None)
    est.partial_fit(X[:40], y[:40]).partial_fit(X[40:], y[40:])
    assert est.n_iter_ == 2
    path = regtorch.save(est, tmp_path / "m.safetensors")
    back = regtorch.load(path)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    with pytest.raises(ValueError, match="X has 2 features, but MLPRegressor is expecting 3"):
        est.partial_fit(X[:, :2], y)
    with pytest.raises(ValueError, match="targets"):
        est.partial_fit(X, np.c_[y, y])
    back.partial_fit(X, y)  # a loaded model trains on, with a fresh optimizer
    assert back.n_iter_ == 3
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    # fit starts over: the carried optimizer is dropped
    est.fit(X, y)
    assert est._partial_state is None


def test_unweighted_batches_keep_their_pairs_and_checkpoint_keys():
    from regtorch.nn.batches import TensorBatches

    b = TensorBatches(torch.zeros(10, 2), torch.zeros(10, 1), batch_size=4)
    assert {len(t) for t in b.epoch(torch.Generator().manual_seed(0), 0)} == {2}
    assert "weighted" not in b.state_dict()  # checkpoints of unweighted runs are unchanged
    b.set_weights(torch.arange(10.0))
    assert {len(t) for t in b.epoch(torch.Generator().manual_seed(0), 0)} == {3}
    assert b.state_dict()["weighted"] is True
    with pytest.raises(ValueError, match="sample weights"):
        TensorBatches(torch.zeros(10, 2), torch.zeros(10, 1)).load_state_dict(b.state_dict())
    with pytest.raises(ValueError, match="non-zero"):
        b.set_weights(torch.zeros(10))
    with pytest.raises(ValueError, match="3 values for 10 rows"):
        b.set_weights(torch.ones(3))


@pytest.mark.parametrize("stream", [True, False])
def test_cli_fits_a_weighted_mlp(weighted_table, tmp_path, stream):
    import json

    from regtorch.cli import main

    path, _ = weighted_table
    out = tmp_path / "m"
    args = ["fit", str(path), "--target", "y", "--features", "a,b,c", "--model", "mlp"]
    args += ["--weight", "w", "--epochs", "2", "--out", str(out)] + (["--stream"] if stream else [])
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["weight"] == "w"
    assert regtorch.load(out).n_iter_ == 2
