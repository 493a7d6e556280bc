import numpy as np
import pytest
import torch

from regtorch.nn.callbacks import LoggingCallback
from regtorch.nn.loop import Callback, History, init_module, train
from regtorch.nn.modules import MLP, LinearModule

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 3)).astype(np.float32)
Y = (X @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)


def test_same_seed_identical_history_and_weights():
    runs = []
    for _ in range(2):
        m = MLP(3, (16, 16))
        h = train(
            m,
            X,
            Y,
            X_val=X[:50],
            y_val=Y[:50],
            epochs=30,
            batch_size=32,
            seed=7,
            lr=1e-2,
            device="cpu",
        )
        runs.append((h, [p.detach().clone() for p in m.parameters()]))
    (h1, w1), (h2, w2) = runs
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))


def test_different_seeds_differ():
    h1 = train(MLP(3, (8,)), X, Y, epochs=5, batch_size=32, seed=1, device="cpu")
    h2 = train(MLP(3, (8,)), X, Y, epochs=5, batch_size=32, seed=2, device="cpu")
    assert h1.train_loss != h2.train_loss


def test_seed_fixes_initial_weights_like_manual_seed_without_global_side_effect():
    torch.manual_seed(123)
    m = LinearModule(1)
    before = torch.get_rng_state()
    init_module(m, 42)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(42)
    ref = torch.nn.Linear(1, 1)
    assert torch.equal(m.linear.weight, ref.weight) and torch.equal(m.linear.bias, ref.bias)


def test_history_contents():
    h = train(LinearModule(3), X, Y, X_val=X, y_val=Y, epochs=20, lr=0.1, seed=0, device="cpu")
    assert isinstance(h, History) and len(h) == 20
    assert len(h.val_loss) == 20 and len(h.time) == 20 and len(h.lr) == 20
    assert all(b >= a for a, b in zip(h.time, h.time[1:]))
    assert h.train_loss[-1] < h.train_loss[0]
    assert History.from_dict(h.to_dict()) == h


@pytest.mark.parametrize(
    "optimizer, lr, batch",
    [("adam", 0.05, None), ("sgd", 0.05, 16), ("lbfgs", 1.0, None), ("adamw", 0.05, 64)],
)
def test_optimizers_fit_a_linear_target(optimizer, lr, batch):
    m = LinearModule(3)
    train(
        m,
        X,
        Y,
        optimizer=optimizer,
        lr=lr,
        epochs=200 if optimizer != "lbfgs" else 5,
        batch_size=batch,
        seed=0,
        device="cpu",
    )
    w = m.linear.weight.detach().numpy().ravel()
    np.testing.assert_allclose(w, [1.0, -2.0, 0.5], atol=2e-2)


def test_logging_callback_every_n_epochs():
    log = LoggingCallback(every=10)
    train(LinearModule(3), X, Y, X_val=X, y_val=Y, epochs=35, seed=0, callbacks=[log], device="cpu")
    # epochs 10, 20, 30 and the last one
    assert [ln.split()[1] for ln in log.lines] == ["10/35", "20/35", "30/35", "35/35"]
    assert "val_loss" in log.lines[0]


def test_callback_can_stop_training():
    class StopAt(Callback):
        def on_epoch_end(self, state):
            state.stop = state.epoch == 4

    h = train(LinearModule(3), X, Y, epochs=100, seed=0, callbacks=[StopAt()], device="cpu")
    assert len(h) == 5


def test_validation_runs_in_inference_mode():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            seen.append(torch.is_inference_mode_enabled())
            return self.lin(x)

    train(Probe(), X, Y, X_val=X, y_val=Y, epochs=2, seed=0, device="cpu")
    assert seen == [False, True, False, True]


def test_bad_input_raises_value_error_naming_the_problem():
    with pytest.raises(ValueError, match="inconsistent numbers of samples: \\[200, 199\\]"):
        train(LinearModule(3), X, Y[:-1], epochs=1)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        train(LinearModule(3), Xn, Y, epochs=1)
    with pytest.raises(ValueError, match="Expected 2D array for X, got 1D array"):
        train(LinearModule(1), X[:, 0], Y, epochs=1)
    with pytest.raises(ValueError, match="lbfgs"):
        train(LinearModule(3), X, Y, optimizer="lbfgs", batch_size=10, epochs=1)
    with pytest.raises(ValueError, match="'optimizer' parameter"):
        train(LinearModule(3), X, Y, optimizer="rmsprop", epochs=1)
    with pytest.raises(ValueError, match="not numbers"):
        train(LinearModule(1), np.array([["a"], ["b"]]), np.array([1.0, 2.0]), epochs=1)


def test_progress_bar_shows_epoch_loss_and_rate(capsys):
    from regtorch.nn.callbacks import ProgressBar

    train(
        LinearModule(3),
        X,
        Y,
        X_val=X,
        y_val=Y,
        epochs=400,
        seed=0,
        device="cpu",
        callbacks=[ProgressBar(force=True, every=50, desc="fit")],
    )
    err = capsys.readouterr().err
    assert "fit:" in err and "epoch/s" in err and "loss=" in err and "val=" in err
